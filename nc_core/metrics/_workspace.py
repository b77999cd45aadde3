"""Reused CPU workspaces of the resident metric pass (fresh memory costs a page fault per 4 KiB touched)."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

#: Byte offsets of the kept batches are multiples of this (cache lines; any dtype's alignment).
_ALIGN = 64


class _Workspace:
    """One grow-only uint8 CPU buffer with a lock: a call that finds it busy does without it."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.lock = threading.Lock()

    def bytes(self, nbytes: int) -> torch.Tensor:
        """At least ``nbytes`` bytes (grown when short; the caller holds the lock)."""
        if self.buffer is None or self.buffer.numel() < nbytes:
            self.buffer = None  # free the old one first
            with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
                self.buffer = torch.empty(max(nbytes, _ALIGN), dtype=torch.uint8)  # (≥ nbytes,) raw bytes
        return self.buffer


_SORTED = _Workspace()  # the label-sorted split
_KEPT = _Workspace()  # the split's batches as the forward produced them


def _unlock_after_fork() -> None:
    """In a forked child: fresh locks (the parent may have held one while forking); buffers are kept."""
    for ws in (_SORTED, _KEPT):
        ws.lock = threading.Lock()


os.register_at_fork(after_in_child=_unlock_after_fork)


@contextmanager
def sorted_buffer(n: int, d: int, dtype: torch.dtype, device: torch.device) -> Iterator[torch.Tensor]:
    """An (n, d) buffer of ``dtype`` for the label-sorted features. On the CPU one workspace is kept and
    reused across calls: page-faulting a fresh 30 MB buffer costs about as much as sorting into it. A
    call that finds the workspace in use (another thread) gets a fresh buffer. CUDA's caching allocator
    reuses memory already."""
    if device.type != "cpu" or not _SORTED.lock.acquire(blocking=False):
        yield torch.empty(n, d, dtype=dtype, device=device)  # (n, d)
        return
    try:
        nbytes = n * d * dtype.itemsize
        yield _SORTED.bytes(nbytes)[:nbytes].view(dtype).view(n, d)  # (n, d) over the workspace's bytes
    finally:
        _SORTED.lock.release()


class KeptBatches:
    """Copies of CPU batches packed into the kept workspace while they are still in cache, so that an
    evaluation keeps its features in memory touched before: each batch the forward returns is fresh
    memory, and keeping 60,000 × 128 float32 features cost ~8,000 page faults (10 ms at two threads) a
    pass. Batches of the same dtype and row shape follow each other with no gap (one (N, d) block, which
    the resident pass reads as such); others start at a 64-byte boundary. The workspace grows at the end
    of a call to what the call kept, for the next one; batches that find no room, and batches on other
    devices, are kept as copies of their own."""

    def __init__(self, buffer: torch.Tensor | None):
        self._buffer = buffer
        self._last: tuple | None = None  # (dtype, row shape) of the last packed batch
        self.used = 0  # bytes the batches so far take (or would take) in the workspace

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of ``t`` (same shape, dtype and values): in the workspace, or its own. Never ``t`` itself: a
        forward may return views of a buffer it overwrites for the next batch (a CUDA graph, a preallocated
        output), and every kept batch would then hold the last one's features."""
        if t.device.type != "cpu" or t.requires_grad:
            return t.detach().clone()
        kind = (t.dtype, tuple(t.shape[1:]))
        start = self.used if kind == self._last else -(-self.used // _ALIGN) * _ALIGN
        nbytes = t.numel() * t.element_size()
        self.used = start + nbytes
        if self._buffer is None or self.used > self._buffer.numel():
            self._last = None  # what follows is not contiguous with this batch any more
            return t.clone()
        self._last = kind
        return self._buffer[start:start + nbytes].view(t.dtype).view(t.shape).copy_(t)  # t's shape, in the workspace


@contextmanager
def kept_batches() -> Iterator[KeptBatches]:
    """A :class:`KeptBatches` over the kept workspace for one evaluation (a plain one, copying each batch
    on its own, when another thread holds the workspace). Its views are valid inside the block only."""
    if not _KEPT.lock.acquire(blocking=False):
        yield KeptBatches(None)
        return
    try:
        kept = KeptBatches(_KEPT.buffer)
        yield kept
        if kept.used and (_KEPT.buffer is None or kept.used > _KEPT.buffer.numel()):
            _KEPT.bytes(kept.used)  # sized for the next call of this size
    finally:
        _KEPT.lock.release()


def release_workspace() -> None:
    """Free the CPU workspaces of the resident path (they are kept between evaluations otherwise)."""
    for ws in (_SORTED, _KEPT):
        with ws.lock:
            ws.buffer = None
