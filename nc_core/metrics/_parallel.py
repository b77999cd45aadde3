"""Class-parallel map for the CPU metric pass: T torch threads become T single-threaded workers."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from ._blas import blas_held_by_caller, single_threaded_blas

T = TypeVar("T")
R = TypeVar("R")


class _Pool:
    """The kept worker threads (made on first use) and the lock a :func:`class_workers` block holds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None
        self.size = 0


_STATE = _Pool()


def _forget_after_fork() -> None:
    """In a forked child (a Celery prefork worker): the parent's threads do not exist here, and the
    parent may have held the lock while forking."""
    global _STATE
    _STATE = _Pool()


os.register_at_fork(after_in_child=_forget_after_fork)


@contextmanager
def class_workers(device: torch.device, items: int) -> Iterator[int]:
    """The number of workers :func:`parallel_map` may use inside the block for ``items`` classes: on the
    CPU torch's intra-op thread count T when there are at least T classes to share out, else 1 (class
    after class, each kernel on torch's own threads, as on GPUs, whose kernels are parallel already).

    With T workers the block runs torch (and OpenBLAS) on one thread in the caller as well: its own
    kernels there are small, and a parallel region in it would leave an OpenMP thread spinning beside
    the workers (~3 ms of a 27 ms sweep). torch's thread count is process-wide: it is set back on exit,
    and no other thread should start torch work meanwhile. A block entered while another thread's
    block runs gets 1."""
    threads, state = torch.get_num_threads(), _STATE
    if not (device.type == "cpu" and 2 <= threads <= items) or not state.lock.acquire(blocking=False):
        yield 1
        return
    try:
        torch.set_num_threads(1)
        with single_threaded_blas(force=True):
            yield threads
    finally:
        torch.set_num_threads(threads)
        state.lock.release()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The kept executor of ``workers`` threads (a new one when the size changes). Kept because a fresh
    thread pays its first OpenBLAS and malloc-arena setup: new threads per call cost ~8 ms here."""
    state = _STATE
    if state.executor is None or state.size != workers:
        if state.executor is not None:
            state.executor.shutdown(wait=True)
        state.executor, state.size = ThreadPoolExecutor(workers, "nc-class"), workers
    return state.executor


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(item) for item in items]``, in item order (items: e.g. classes). With
    ``workers`` ≥ 2 (only inside :func:`class_workers`) the items run on that many kept threads, each
    holding torch and OpenBLAS to one thread: a class's kernels (a 128-wide Gram, a (2K + 1)-row
    product, K-row reductions) are too small for T threads to share well (60,000 × 128, K = 10, 2
    threads: 24-27 ms against 36 ms class after class). Each ``fn(item)`` must write only its own
    item's state; it runs in the caller's grad and inference modes (both are thread-local in torch)."""
    if workers < 2 or len(items) < 2:
        with single_threaded_blas():
            return [fn(item) for item in items]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def one(item: T) -> R:
        torch.set_num_threads(1)  # this thread's OpenMP team and the (process-wide) MKL pool
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), blas_held_by_caller():
            return fn(item)

    return list(_pool(workers).map(one, items))
