"""Float64 kernels of the metrics: symmetric rank-k Gram updates, thin products, column sums.

torch has no SYRK, and MKL's DGEMM is slow for the metrics' shapes on one CPU thread (a (B, d) × (d, 2K+1)
product runs at half its square-GEMM rate). With one torch thread these go to the OpenBLAS that scipy
and numpy ship, itself held to one thread: DSYRK computes one triangle (half the flops, ~2× ``addmm`` for
a d = 128 Gram) and the thin product runs ~1.5× faster. With more torch threads, and on other devices,
torch's kernels are used. Column sums of CPU float32/float64 rows use numpy's float64 accumulation at
any thread count (no BLAS involved).
"""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

F64 = torch.float64


@functools.cache
def _controller():  # noqa: ANN202 - a threadpoolctl.ThreadpoolController
    from scipy.linalg import blas  # noqa: F401 - load scipy's OpenBLAS before the controller looks

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


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold OpenBLAS to one thread around a loop of the kernels below (when they use it at all)."""
    if torch.get_num_threads() != 1:
        yield
        return
    with _blas_threads():
        yield


def _on_cpu64(*tensors: torch.Tensor) -> bool:
    """OpenBLAS only where torch computes single-threaded: a second BLAS thread pool spinning beside
    torch's OpenMP pool slows both down (measured 5× on 2 cores); with more threads MKL's parallel
    GEMM wins anyway."""
    return (torch.get_num_threads() == 1
            and all(t.device.type == "cpu" and t.dtype == F64 and not t.requires_grad for t in tensors))


def add_gram(C: torch.Tensor, R: torch.Tensor) -> None:
    """C += RᵀR in float64, in place (C (d, d), R (n, d)); only the UPPER triangle of C is guaranteed —
    read it through :func:`symmetric`. CPU, one torch thread: one DSYRK; elsewhere ``addmm``."""
    if R.shape[0] == 0:
        return
    if not (_on_cpu64(C, R) and C.is_contiguous()):
        d = C.shape[-1]
        if C.device.type == "cpu" and d >= 256:  # upper block trapezoid: 62.5 % of the flops, ~20 % faster
            for i in range(0, d, 128):
                C[i:i + 128, i:].addmm_(R[:, i:i + 128].T, R[:, i:])  # (128, d − i) block row
        else:
            C.addmm_(R.T, R)
        return
    from scipy.linalg import blas

    c = C.numpy().T  # (d, d) Fortran-ordered view of Cᵀ: its LOWER triangle is C's upper one
    with _blas_threads():
        out = blas.dsyrk(1.0, R.numpy().T, beta=1.0, c=c, trans=0, lower=1, overwrite_c=1)  # c += (Rᵀ)(Rᵀ)ᵀ
    if not np.shares_memory(out, c):  # f2py had to copy: write the result back
        C.copy_(torch.from_numpy(out.T))


def symmetric(C: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is C's (batched over leading dims)."""
    return C.triu() + C.triu(1).mT


def matmul64(X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """X Vᵀ for float64 X (n, d), V (m, d) → (n, m): each row dotted with m vectors. On the CPU through
    OpenBLAS (with m ≪ n ~1.5× torch's MKL for these shapes)."""
    if not _on_cpu64(X, V):
        return X @ V.T
    with _blas_threads():
        return torch.from_numpy(np.matmul(X.numpy(), V.numpy().T))  # (n, m)


def column_sums(X: torch.Tensor) -> torch.Tensor:
    """(d,) float64 Σ_i X_i of X (n, d), accumulated in float64 whatever X's dtype. On the CPU numpy's
    row-wise accumulation (float32 rows are widened on the fly): ~2× torch's float64 sum and ~6× its
    float32 → float64 one."""
    if X.device.type == "cpu" and X.dtype in (torch.float32, F64) and not X.requires_grad:
        return torch.from_numpy(X.numpy().sum(0, dtype=np.float64))
    return X.sum(0, dtype=F64)
