"""Resident split: every feature in one label-sorted float64 buffer, centred in place, read by both sweeps."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from ._util import F64
from .ncc import SampleStats
from .stats import PER_CLASS_AUTO_BYTES, ClassStats, class_slices

#: The resident path holds its float64 buffer (N·d·8 bytes) up to this size; beyond, chunked passes.
RESIDENT_F64_BYTES = 2**29
#: Features are converted to float64 in pieces of this size (cache-resident temporaries).
_PIECE_BYTES = 2**20


_WORKSPACE: dict[str, torch.Tensor] = {}
_WORKSPACE_LOCK = threading.Lock()


@contextmanager
def _buffer(n: int, d: int, device: torch.device) -> Iterator[torch.Tensor]:
    """An (n, d) float64 buffer. On the CPU one workspace is kept and reused across calls: page-faulting
    a fresh 60 MB buffer costs as much as the Gram itself (~25 ms for N = 60,000, d = 128). A call that
    finds the workspace in use (another thread) gets a fresh buffer. CUDA's caching allocator reuses
    memory already."""
    if device.type != "cpu" or not _WORKSPACE_LOCK.acquire(blocking=False):
        yield torch.empty(n, d, dtype=F64, device=device)
        return
    try:
        ws = _WORKSPACE.get("cpu")
        if ws is None or ws.numel() < n * d:
            with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
                _WORKSPACE["cpu"] = ws = torch.empty(n * d, dtype=F64)
        yield ws[:n * d].view(n, d)
    finally:
        _WORKSPACE_LOCK.release()


def release_workspace() -> None:
    """Free the CPU workspace of the resident path (it is kept between evaluations otherwise)."""
    with _WORKSPACE_LOCK:
        _WORKSPACE.clear()


def fits(n: int, dim: int, num_classes: int) -> bool:
    """Whether N = n features of dimension d take the resident path (per-class scatter on, buffer in budget)."""
    return num_classes * dim * dim * 8 <= PER_CLASS_AUTO_BYTES and n * dim * 8 <= RESIDENT_F64_BYTES


class Sorted:
    """The label-sorted float64 features of a split: ``buf`` (N, d) rows of class 0, then 1, …, ``counts``
    per class; after the stats sweep the rows hold h − μ_k and ``means`` the class means − shift (K, d)."""

    def __init__(self, buf: torch.Tensor, counts: list[int], means: torch.Tensor):
        self.buf, self.counts, self.means = buf, counts, means


def resident_pass(batches: list, num_classes: int, dim: int, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None) -> tuple[ClassStats, SampleStats | None]:
    """ClassStats and (with ``weight``) SampleStats of validated (features (B, d), labels (B,)) batches on
    one device (the list is consumed), in two sweeps over one label-sorted float64 buffer."""
    ys = torch.cat([y for _, y in batches])  # (N,)
    with _buffer(ys.shape[0], dim, ys.device) as buf:
        stats, sorted_ = _stats_sweep(batches, ys, num_classes, buf)
        samples = _samples_sweep(stats, sorted_, weight, bias) if weight is not None else None
    return stats, samples


def _stats_sweep(batches: list, ys: torch.Tensor, num_classes: int, buf: torch.Tensor) -> tuple[ClassStats, Sorted]:
    """Each batch is converted and shifted while in cache and scattered to its label-sorted row of ``buf``
    (a counting sort); then each class slice is centred in place, reduced and added to its Gram. The
    ClassStats equals, to rounding, one fed with the same batches through ``update``."""
    K, (N, d), device = num_classes, buf.shape, buf.device
    order = torch.argsort(ys, stable=True)  # (N,) sorted position → input row
    dest = torch.empty_like(order)
    dest[order] = torch.arange(N, device=device)  # (N,) input row → sorted position
    counts = torch.bincount(ys, minlength=K).tolist()  # K class sizes
    stats = ClassStats(K, d, device, per_class=True)
    head, rows = [], 0
    for f, _ in batches:  # the reference point: the mean of the first ≤ 4096 rows, as in ClassStats.update
        head.append(f[:4096 - rows])
        rows += head[-1].shape[0]
        if rows >= 4096:
            break
    shift = torch.cat(head).to(F64).mean(0)  # (d,)
    stats._shift = shift
    start, rows = 0, max(1, _PIECE_BYTES // (8 * d))
    while batches:
        f, _ = batches.pop(0)
        for i in range(0, f.shape[0], rows):  # pieces that stay in cache between conversion and scatter
            piece = torch.sub(f[i:i + rows], shift)  # (≤ rows, d) float64, h − shift
            buf.index_copy_(0, dest[start:start + piece.shape[0]], piece)
            start += piece.shape[0]
    return stats, Sorted(buf, counts, stats._add_sorted(buf, counts))


def _samples_sweep(stats: ClassStats, sorted_: Sorted, weight=None, bias=None) -> SampleStats:  # noqa: ANN001
    """The second sweep: each class slice becomes h − μ_G in place (r + (μ_k − μ_G)) and gives its NCC
    counts and cosine margins; no feature is converted twice. The buffer is consumed."""
    samples = SampleStats(stats, weight, bias, class_gram=False)
    offset = sorted_.means - samples._rel_g  # (K, d) μ_k − μ_G, both in the shift frame
    for k, xk in class_slices(sorted_.buf, sorted_.counts):
        xk.add_(offset[k])  # (n_k, d) h − μ_G
        samples._per_sample(xk, torch.full((xk.shape[0],), k, dtype=torch.int64, device=xk.device))
        samples.num_samples += int(xk.shape[0])
    sorted_.buf = None
    return samples
