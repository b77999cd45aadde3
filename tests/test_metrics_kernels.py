"""Metric kernels (DSYRK Grams, column sums, products, first-hit argmax, batched class ratios) and the resident path."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nc_core.metrics import _blas, _workspace as workspace, evaluate_split, nc_metrics, resident, suite
from nc_core.metrics._util import label_order
from nc_core.metrics.ncc import SampleStats, first_index
from nc_core.metrics.stats import ClassStats
from test_metrics_evaluate import _same, _setup
from test_metrics_reference import CASES, GOF, _case
from metrics_reference import reference_metrics

F64 = torch.float64


def _exact_gram(R: torch.Tensor) -> np.ndarray:
    r = R.numpy().astype(np.longdouble)
    return (r.T @ r).astype(np.float64)


@pytest.mark.parametrize("mkl", [False, True], ids=["openblas-syrk", "mkl-avx512"])
@pytest.mark.parametrize("threads, d", [(1, 40), (2, 40), (3, 40), (1, 130), (1, 300), (2, 300), (1, 2048)])
def test_add_gram_accumulates_the_upper_triangle(threads: int, d: int, mkl: bool, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(_blas, "mkl_avx512", lambda: mkl)  # both kernel choices, whatever this CPU is
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        rows = 500 if d < 2048 else 40
        R1 = torch.randn(rows, d, generator=g, dtype=F64) + 3.0
        R2 = torch.randn(rows // 2, d + 20, generator=g, dtype=F64)[:, 10:d + 10]  # a non-contiguous column slice
        C = torch.zeros(d, d, dtype=F64)
        # one OpenBLAS DSYRK thread on 1 torch thread, and on 2 below the block trapezoid; torch where MKL
        # runs AVX-512 code, and otherwise
        syrk = not mkl and (threads == 1 or (threads == 2 and d < _blas.TRAPEZOID_MIN_DIM))
        assert _blas._use_syrk(C, R1) == syrk
        if threads == 1:  # the block rows of torch's trapezoid: 64 (d/8 from 2,048) on one thread from d = 128
            want_block = None if d < 128 else 64 if d < 2048 else d // 8
        else:  # 128 on more threads from d = 256
            want_block = 128 if d >= 256 else None
        assert _blas.trapezoid_block(d) == want_block
        _blas.add_gram(C, R1)
        _blas.add_gram(C, R2)
        _blas.add_gram(C, R1[:0])  # no rows: no change
        want = _exact_gram(R1) + _exact_gram(R2)
        got = _blas.symmetric(C).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-12)
    finally:
        torch.set_num_threads(before)


def test_mkl_avx512_needs_mkl_an_intel_cpu_and_avx512() -> None:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
        vendor = next(line for line in info if line.startswith("vendor_id")).split(":")[1].strip()
    want = (torch.backends.mkl.is_available() and vendor == "GenuineIntel"
            and torch.backends.cpu.get_cpu_capability() == "AVX512")
    assert _blas.mkl_avx512() == want


@pytest.mark.parametrize("K", [2, 10, 256, 257, 2**15, 2**15 + 1])
def test_label_order_is_the_stable_argsort(K: int) -> None:
    y = torch.randint(0, K, (5000,), generator=torch.Generator().manual_seed(K))
    y[:3] = K - 1  # the largest label is present (uint8 holds 255, int16 32,767)
    assert torch.equal(label_order(y, K), torch.argsort(y, stable=True))
    assert label_order(y[:0], K).shape == (0,)


def test_column_sums_match_torch(one_torch_thread) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(1)
    X = torch.randn(1000, 33, generator=g, dtype=F64)
    np.testing.assert_allclose(_blas.column_sums(X).numpy(), X.sum(0).numpy(), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(_blas.column_sums(X.float()).numpy(), X.float().double().sum(0).numpy(),
                               rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_single_thread_kernels_match_the_reference(name: str, one_torch_thread) -> None:  # noqa: ANN001
    X, y, K, W, b = _case(name)
    ours, ref = nc_metrics(X, y, W, b, num_classes=K, gof=GOF), reference_metrics(X, y, K, W, b, gof=GOF)
    for key, want in ref.items():
        if math.isnan(want):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key


def test_resident_and_chunked_paths_agree(monkeypatch) -> None:  # noqa: ANN001
    forward, batches, x, y, head = _setup(N=700)
    kw = dict(num_classes=4, weight=head.weight, bias=head.bias)
    assert resident.fits(700, 8, 4)
    one_buffer = evaluate_split(forward, batches, **kw)
    monkeypatch.setattr(resident, "RESIDENT_F64_BYTES", 0)  # too big for the resident buffer: chunked passes
    assert not resident.fits(700, 8, 4)
    chunked = evaluate_split(forward, batches, **kw)
    _same(one_buffer, chunked)
    assert one_buffer.distributions["cos_margin"] == pytest.approx(chunked.distributions["cos_margin"], rel=1e-12)


def test_workspace_is_reused_and_never_shared(one_torch_thread) -> None:  # noqa: ANN001
    X, y, K, W, b = _case("imbalanced")
    resident.release_workspace()
    first = nc_metrics(X, y, W, b, num_classes=K)  # creates the CPU workspace (outside inference mode)
    ws = workspace._SORTED.buffer
    with torch.inference_mode():
        again = nc_metrics(X, y, W, b, num_classes=K)  # reuses it inside inference mode
    assert workspace._SORTED.buffer is ws
    with workspace._SORTED.lock:  # held by "another thread": this call must use a buffer of its own
        busy = nc_metrics(X, y, W, b, num_classes=K)
    assert again == first and busy == first and again.distributions == first.distributions
    resident.release_workspace()
    assert workspace._SORTED.buffer is None and workspace._KEPT.buffer is None


def test_class_ratios_in_blocks_equal_one_batch(monkeypatch) -> None:  # noqa: ANN001
    X, y, K, W, b = _case("imbalanced")
    whole = nc_metrics(X, y, W, b, num_classes=K)
    monkeypatch.setattr(suite, "RATIO_BLOCK_BYTES", 1)  # one class per batched eigvalsh
    blocked = nc_metrics(X, y, W, b, num_classes=K)
    for key in ("nuclear_frobenius", "numerical_rank"):
        assert blocked[key] == pytest.approx(whole[key], rel=1e-13), key


def test_resident_pass_promotes_batches_of_mixed_dtypes() -> None:
    X, y, K, W, b = _case("imbalanced")
    X64, y = torch.as_tensor(X, dtype=F64), torch.as_tensor(y)
    W, b = torch.as_tensor(W, dtype=F64), torch.as_tensor(b, dtype=F64)
    head = X64[:40].float()  # float32 rows first: the buffer must still be float64
    mixed = resident.resident_pass([(head, y[:40]), (X64[40:], y[40:])], K, X64.shape[1], W, b)
    same = resident.resident_pass([(head.double(), y[:40]), (X64[40:], y[40:])], K, X64.shape[1], W, b)
    assert torch.equal(mixed[0].means, same[0].means)
    assert torch.equal(mixed[0].sigma_w, same[0].sigma_w)
    assert torch.equal(mixed[1].margins, same[1].margins)


def test_first_index_takes_the_first_row_on_ties() -> None:
    A = torch.tensor([[1.0, 3.0, 2.0, 5.0], [3.0, 3.0, 2.0, 1.0], [3.0, 0.0, 2.0, 5.0]], dtype=F64)  # (K, B)
    assert first_index(A, A.amax(0)).tolist() == [1, 0, 0, 0]
    assert first_index(A, A.amin(0)).tolist() == [0, 2, 0, 1]
    g = torch.Generator().manual_seed(2)
    B = torch.randint(0, 5, (300, 2000), generator=g).to(F64)  # K > 256 (int32 weights), ties everywhere
    want = [int(torch.nonzero(col == col.max())[0]) for col in B.T]
    assert first_index(B, B.amax(0)).tolist() == want


def test_products_match_an_extended_precision_reference() -> None:
    X, y, K, W, b = _case("imbalanced")
    d = X.shape[1]
    samples = SampleStats(ClassStats(K, d, per_class=True).update(X, y), W, b)
    R = torch.randn(1000, d, generator=torch.Generator().manual_seed(3), dtype=F64)
    P = samples.products(R)  # (2K + 1, 1000)
    want = samples._proj_t.numpy().astype(np.longdouble) @ R.numpy().T.astype(np.longdouble)
    np.testing.assert_allclose(P.numpy(), want.astype(np.float64), rtol=1e-12, atol=1e-12)
    out = torch.zeros(2 * K + 1, 1200, dtype=F64)
    samples.products(R, out=out[:, 100:1100])  # into a column block of a wider buffer
    assert torch.equal(out[:, 100:1100], P) and not out[:, :100].any() and not out[:, 1100:].any()
