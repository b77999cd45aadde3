"""Resident split: features label-sorted once, then each class visited in cache-sized float64 chunks."""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from ._blas import add_gram, column_sums, single_threaded_blas
from ._util import F64
from .ncc import SampleStats
from .stats import PER_CLASS_AUTO_BYTES, ClassStats, class_slices

#: The resident path takes splits whose features would fill at most this many float64 bytes (N·d·8).
RESIDENT_F64_BYTES = 2**29
#: Rows of a class are converted to float64 in chunks of about this size (they stay in L3 while
#: they are centred, reduced, added to the Gram and projected). GPUs take a class at once.
_CHUNK_BYTES = 2**22


_WORKSPACE: dict[str, torch.Tensor] = {}
_WORKSPACE_LOCK = threading.Lock()


@contextmanager
def _buffer(n: int, d: int, dtype: torch.dtype, device: torch.device) -> Iterator[torch.Tensor]:
    """An (n, d) buffer of ``dtype`` for the label-sorted features. On the CPU one workspace is kept and
    reused across calls: page-faulting a fresh 30 MB buffer costs about as much as sorting into it. A
    call that finds the workspace in use (another thread) gets a fresh buffer. CUDA's caching allocator
    reuses memory already."""
    if device.type != "cpu" or not _WORKSPACE_LOCK.acquire(blocking=False):
        yield torch.empty(n, d, dtype=dtype, device=device)
        return
    try:
        nbytes = n * d * dtype.itemsize
        ws = _WORKSPACE.get("cpu")
        if ws is None or ws.numel() < nbytes:
            with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
                _WORKSPACE["cpu"] = ws = torch.empty(max(nbytes, 8), dtype=torch.uint8)
        yield ws[:nbytes].view(dtype).view(n, d)
    finally:
        _WORKSPACE_LOCK.release()


def release_workspace() -> None:
    """Free the CPU workspace of the resident path (it is kept between evaluations otherwise)."""
    with _WORKSPACE_LOCK:
        _WORKSPACE.clear()


def fits(n: int, dim: int, num_classes: int) -> bool:
    """Whether N = n features of dimension d take the resident path (per-class scatter on, buffer in budget)."""
    return num_classes * dim * dim * 8 <= PER_CLASS_AUTO_BYTES and n * dim * 8 <= RESIDENT_F64_BYTES


def resident_pass(batches: list, num_classes: int, dim: int, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None) -> tuple[ClassStats, SampleStats | None]:
    """ClassStats and (with ``weight``) SampleStats of validated (features (B, d), labels (B,)) batches on
    one device (the list is consumed).

    The features are copied once, in their own dtype (promoted if batches differ), into label order (a
    counting sort). Sweep 1 takes each class's float64 sum (its mean); sweep 2 visits each class again
    in cache-sized float64 chunks r = h − μ_k and, while the chunk is in cache, takes ‖r‖², adds rᵀr (its
    Gram) and projects r on the classifier and the centred means; the per-sample metrics are then scored
    a class at a time from those (2K + 1, n_k) products. No float64 copy of the split is made.
    The ClassStats equals, to rounding, one fed with the same batches through ``update``.
    """
    K, d = num_classes, dim
    ys = torch.cat([y for _, y in batches])  # (N,)
    N, device = ys.shape[0], ys.device
    counts = torch.bincount(ys, minlength=K).tolist()  # K class sizes
    order = torch.argsort(ys, stable=True)  # (N,) sorted position → input row
    dest = torch.empty_like(order)
    dest[order] = torch.arange(N, device=device)  # (N,) input row → sorted position
    stats = ClassStats(K, d, device, per_class=True)
    stats._shift = _reference_point(batches)  # (d,)
    rows = N if device.type != "cpu" else max(1, _CHUNK_BYTES // (8 * d))
    dtype = functools.reduce(torch.promote_types, (f.dtype for f, _ in batches))  # batches may differ
    with _buffer(N, d, dtype, device) as sorted_:
        start = 0
        while batches:
            f, _ = batches.pop(0)
            _place_rows(sorted_, dest[start:start + f.shape[0]], f.to(dtype))  # (B, d) rows to their sorted places
            start += f.shape[0]
        chunk = torch.empty(min(rows, max(counts)), d, dtype=F64, device=device)  # (rows, d) float64
        mu = _class_means(sorted_, counts)  # (K, d) μ_k
        zeros = torch.zeros(K, dtype=F64, device=device)  # (K,) the sums of squares follow in sweep 2
        stats._combine(torch.tensor(counts, dtype=F64, device=device), mu - stats.shift, zeros)
        samples = SampleStats(stats, weight, bias, class_gram=False) if weight is not None else None
        ss = torch.zeros(K, dtype=F64, device=device)  # (K,) Σ_{i∈k} ‖h_i − μ_k‖²
        with single_threaded_blas():
            for k, xk in class_slices(sorted_, counts):
                n_k = xk.shape[0]
                sq = torch.empty(n_k, dtype=F64, device=device)  # (n_k,) ‖h − μ_k‖²
                P = torch.empty(2 * K + 1, n_k, dtype=F64, device=device) if samples is not None else None
                for lo in range(0, n_k, rows):
                    r = chunk[:min(rows, n_k - lo)].copy_(xk[lo:lo + rows]).sub_(mu[k])  # (n, d) h − μ_k
                    add_gram(stats._scatter[k], r)
                    torch.linalg.vector_norm(r, dim=1, out=sq[lo:lo + rows]).square_()
                    if samples is not None:
                        samples.products(r, out=P[:, lo:lo + rows])
                ss[k] = sq.sum()
                if samples is not None:
                    samples._residual_class(P, sq, k)
    stats._ss += ss
    return stats, samples


def _place_rows(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """dst[index] = src for rows (index (B,), src (B, d)); float32/float64 on the CPU through numpy's
    row assignment (~1.5× ``index_copy_``)."""
    if dst.device.type == "cpu" and dst.dtype in (torch.float32, F64) and not src.requires_grad:
        dst.numpy()[index.numpy()] = src.numpy()
    else:
        dst.index_copy_(0, index, src)


def _reference_point(batches: list) -> torch.Tensor:
    """The mean of the first ≤ 4096 rows (float64), as in ClassStats.update: the frame of its state."""
    head, rows = [], 0
    for f, _ in batches:
        head.append(f[:4096 - rows])
        rows += head[-1].shape[0]
        if rows >= 4096:
            break
    return torch.cat(head).to(F64).mean(0)  # (d,)


def _class_means(sorted_: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(K, d) float64 class means of label-sorted rows, each class summed with float64 accumulation
    (0 for an empty class, which has no rows)."""
    means = torch.zeros(len(counts), sorted_.shape[1], dtype=F64, device=sorted_.device)  # (K, d)
    for k, xk in class_slices(sorted_, counts):
        means[k] = column_sums(xk) / xk.shape[0]  # (d,) (1/n_k) Σ_{i∈k} h_i
    return means
