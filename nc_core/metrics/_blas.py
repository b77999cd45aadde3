"""Float64 kernels of the metrics: symmetric rank-k Gram updates and column sums.

torch has no SYRK. Where torch's BLAS is MKL on an Intel CPU with AVX-512, its float64 GEMM runs MKL's
AVX-512 kernels and the Gram's upper block trapezoid beats OpenBLAS's DSYRK (4,096 rows of d = 128:
1.16-1.37 ms against 1.47-1.58 ms; 256 rows of d = 2,048: 14 against 29-34 ms). Elsewhere (e.g. AMD
CPUs, where MKL runs AVX2 code) torch's GEMM forms a (d, d) Gram at a third of a DSYRK's rate (one
triangle: half the flops), so with one torch thread (two, for d < 256) the Grams go to the OpenBLAS that
numpy ships, held to one thread: numpy's matmul recognises ``r.T @ r`` and calls DSYRK. With more torch
threads, and on other devices, torch's kernels are used. The choice depends on the machine only (never
on timings), so a run's metrics are the same bits in every process on it. Column sums of CPU
float32/float64 rows use numpy's float64 accumulation at any thread count (no BLAS involved).
"""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

F64 = torch.float64


@functools.cache
def _controller():  # noqa: ANN202 - a threadpoolctl.ThreadpoolController
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


_HELD = threading.local()


@contextmanager
def _blas_threads() -> Iterator[None]:
    """OpenBLAS held to one thread inside the block (re-entrant: an outer block pays for the inner ones;
    each limit costs ~30 µs of threadpoolctl bookkeeping)."""
    if getattr(_HELD, "depth", 0):
        _HELD.depth += 1
        try:
            yield
        finally:
            _HELD.depth -= 1
        return
    with _controller().limit(limits=1, user_api="blas"):
        _HELD.depth = 1
        try:
            yield
        finally:
            _HELD.depth = 0


#: Up to this many torch threads a CPU float64 Gram may go to one OpenBLAS DSYRK thread: half the flops
#: at ~1.4× the per-thread rate of torch's GEMM; with more threads torch's parallel GEMM wins.
SYRK_MAX_TORCH_THREADS = 2
#: From this d on, torch computes the Gram as an upper block trapezoid (62.5 % of the GEMM flops).
TRAPEZOID_MIN_DIM = 256


#: On one torch thread, the trapezoid's row blocks where :func:`mkl_avx512` (from this d on).
SINGLE_THREAD_TRAPEZOID_MIN_DIM = 128


@functools.cache
def mkl_avx512() -> bool:
    """Whether torch's CPU BLAS is MKL running its AVX-512 kernels: MKL in this torch, an Intel CPU
    (``vendor_id`` GenuineIntel in /proc/cpuinfo) and torch dispatching AVX-512 code; read once, on first
    use."""
    if not torch.backends.mkl.is_available() or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    try:
        with Path("/proc/cpuinfo").open(encoding="ascii", errors="replace") as info:
            vendor = next((line for line in info if line.startswith("vendor_id")), "")
    except OSError:
        return False
    return vendor.split(":")[-1].strip() == "GenuineIntel"


def _syrk_wins(d: int | None = None) -> bool:
    """One DSYRK thread vs torch: never where :func:`mkl_avx512`; elsewhere always on one torch thread and
    on two only against the full GEMM (d < 256: a 60,000 × 128 split takes 29 ms vs 42-46 ms), not against
    the trapezoid (d = 512: 135 vs 145-167 ms)."""
    if mkl_avx512():
        return False
    threads = torch.get_num_threads()
    return threads == 1 or (threads <= SYRK_MAX_TORCH_THREADS and (d is None or d < TRAPEZOID_MIN_DIM))


def trapezoid_block(d: int) -> int | None:
    """Rows per block of the upper block trapezoid torch computes a CPU Gram as (None: the full GEMM).
    Several threads share 128-row blocks from d = 256 on (62.5 % of the GEMM flops at d = 512); one thread
    (reached where :func:`mkl_avx512`) takes 64-row blocks from d = 128 on (75 % at d = 128), and d/8 from
    d = 2,048, where GEMMs of 64 rows are too thin (256 rows: 16-18 ms against 14)."""
    if torch.get_num_threads() == 1 and d >= SINGLE_THREAD_TRAPEZOID_MIN_DIM:
        return 64 if d < 2048 else d // 8
    return 128 if d >= TRAPEZOID_MIN_DIM else None


@contextmanager
def single_threaded_blas(force: bool = False) -> Iterator[None]:
    """Hold OpenBLAS to one thread around a loop of the kernels below (when they use it at all, or
    always with ``force``)."""
    if not (force or _syrk_wins()):
        yield
        return
    with _blas_threads():
        yield


@contextmanager
def blas_held_by_caller() -> Iterator[None]:
    """In a worker thread whose caller holds :func:`single_threaded_blas` for it: the kernels skip
    their own (thread-local) hold, whose save-and-restore would race with other workers'."""
    depth = getattr(_HELD, "depth", 0)
    _HELD.depth = depth + 1
    try:
        yield
    finally:
        _HELD.depth = depth


def _use_syrk(C: torch.Tensor, R: torch.Tensor) -> bool:
    """OpenBLAS (held to ONE thread: a second pool of spinning BLAS threads beside torch's OpenMP pool
    slows both down, measured 5× on 2 cores) where it beats torch's GEMM for the Gram C += RᵀR."""
    return _syrk_wins(C.shape[-1]) and all(
        t.device.type == "cpu" and t.dtype == F64 and not t.requires_grad for t in (C, R))


def add_gram(C: torch.Tensor, R: torch.Tensor) -> None:
    """C += RᵀR in float64, in place (C (d, d), R (n, d)); only the UPPER triangle of C is guaranteed —
    read it through :func:`symmetric`. CPU: one single-threaded DSYRK (through numpy) where
    :func:`_syrk_wins`; elsewhere ``addmm`` (the upper block trapezoid of :func:`trapezoid_block` on the CPU)."""
    if R.shape[0] == 0:
        return
    if not _use_syrk(C, R):
        block = trapezoid_block(C.shape[-1]) if C.device.type == "cpu" else None
        if block is not None:
            for i in range(0, C.shape[-1], block):
                C[i:i + block, i:].addmm_(R[:, i:i + block].T, R[:, i:])  # (block, d − i) block row
        else:
            C.addmm_(R.T, R)
        return
    r = R.numpy()
    with _blas_threads(), np.errstate(over="ignore", invalid="ignore"):  # inf/NaN: the callers' checks name them
        gram = r.T @ r  # (d, d) numpy calls DSYRK for a matrix times its own transpose, then mirrors it
        C.numpy()[...] += gram


def symmetric(C: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is C's (batched over leading dims); one select pass
    (~10× ``C.triu() + C.triu(1).mT`` on the CPU)."""
    d = C.shape[-1]
    upper = torch.ones(d, d, dtype=torch.bool, device=C.device).triu_()  # (d, d) j ≥ i
    return torch.where(upper, C, C.mT)


def column_sums(X: torch.Tensor) -> torch.Tensor:
    """(d,) float64 Σ_i X_i of X (n, d), accumulated in float64 whatever X's dtype. On the CPU numpy's
    row-wise accumulation (float32 rows are widened on the fly): ~2× torch's float64 sum and ~6× its
    float32 → float64 one."""
    if X.device.type == "cpu" and X.dtype in (torch.float32, F64) and not X.requires_grad:
        with np.errstate(over="ignore", invalid="ignore"):  # as torch's sum: inf/NaN, which the callers check
            return torch.from_numpy(X.numpy().sum(0, dtype=np.float64))  # (d,)
    return X.sum(0, dtype=F64)
