"""Streaming: batch size, order and merging do not change results; large offsets keep float64 accuracy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nc_core.metrics import ClassStats, SampleStats, compute_metrics, nc_metrics


def _data(seed=0, K=5, d=12, N=400, offset=0.0, spread=1.0):
    rng = np.random.default_rng(seed)
    mus = rng.normal(size=(K, d)) * 3 + offset
    y = rng.integers(0, K, N)
    X = mus[y] + spread * rng.normal(size=(N, d))
    W = rng.normal(size=(K, d))
    b = rng.normal(size=K)
    return X, y, W, b


def _feed(stats, X, y, sizes):
    i = 0
    for s in sizes:
        stats.update(X[i:i + s], y[i:i + s])
        i += s
    assert i == len(y)
    return stats


def _close(a, b, rel=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(), 1e-300)
    assert np.abs(a - b).max() <= rel * scale, np.abs(a - b).max() / scale


@pytest.mark.parametrize("per_class", [True, False])
def test_batch_sizes_order_and_merge_equal_one_shot(per_class):
    X, y, _, _ = _data()
    K, d = 5, 12
    one = ClassStats(K, d, per_class=per_class).update(X, y)
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(y))
    Xp, yp = X[perm], y[perm]
    sizes = [1, 7, 64, 3, 128, 197]
    streamed = _feed(ClassStats(K, d, per_class=per_class), Xp, yp, sizes)
    a = _feed(ClassStats(K, d, per_class=per_class), Xp[:150], yp[:150], [50, 100])
    b = _feed(ClassStats(K, d, per_class=per_class), Xp[150:], yp[150:], [250])
    for other in (streamed, a.merge(b), b.merge(a), a + b):
        assert torch.equal(other.counts, one.counts)
        _close(other.means, one.means)
        _close(other.scatter, one.scatter)
        _close(other.class_ss, one.class_ss)
        if per_class:
            _close(other.class_scatter, one.class_scatter)


def test_merge_is_pure_and_handles_empty_and_mixed_modes():
    X, y, _, _ = _data()
    a = ClassStats(5, 12, per_class=True).update(X[:200], y[:200])
    b = ClassStats(5, 12, per_class=False).update(X[200:], y[200:])
    before = a.scatter.clone()
    m = a.merge(b)
    assert torch.equal(a.scatter, before)
    assert not m.per_class and m.class_scatter is None
    _close(m.scatter, ClassStats(5, 12).update(X, y).scatter)
    e = ClassStats(5, 12)
    _close(e.merge(a).scatter, a.scatter)
    _close(a.merge(e).means, a.means)


def test_metrics_independent_of_batching():
    X, y, W, b = _data()
    one = ClassStats(5, 12).update(X, y)
    perm = np.random.default_rng(3).permutation(len(y))
    st = _feed(ClassStats(5, 12), X[perm], y[perm], [33] * 12 + [4])
    r1 = compute_metrics(one, W, b, per_sample=SampleStats(one, W, b).update(X, y))
    ss = SampleStats(st, W, b)
    for i in range(0, 400, 61):
        ss.update(X[perm][i:i + 61], y[perm][i:i + 61])
    r2 = compute_metrics(st, W, b, per_sample=ss)
    assert set(r1) == set(r2)
    for k in r1:
        assert r2[k] == pytest.approx(r1[k], rel=1e-10, abs=1e-13), k


def test_sample_stats_streaming_equals_resident():
    X, y, W, b = _data(K=4, d=6)
    st = ClassStats(4, 6, per_class=False).update(X, y)
    streamed = SampleStats(st, W, b, class_gram=True)
    for i in range(0, 400, 50):
        streamed.update(X[i:i + 50], y[i:i + 50])
    resident = SampleStats.from_features(st, X, y, W, b)
    streamed.finalize()
    assert streamed.ncc_match == resident.ncc_match and streamed.ncc_agree == resident.ncc_agree
    _close(torch.sort(streamed.margins).values, torch.sort(resident.margins).values)
    _close(streamed.class_ratios, resident.class_ratios, rel=1e-10)
    per_class = ClassStats(4, 6, per_class=True).update(X, y)
    r_pc = compute_metrics(per_class)
    r_ss = compute_metrics(st, per_sample=streamed)
    assert r_pc["nuclear_frobenius"] == pytest.approx(r_ss["nuclear_frobenius"], rel=1e-10)
    assert r_pc["numerical_rank"] == pytest.approx(r_ss["numerical_rank"], rel=1e-10)


def test_large_mean_keeps_float64_accuracy():
    """‖μ‖ ≈ 1e4, spread 1e-2: the scatter matches a two-pass reference to ~1e-15, the naive
    one-pass Σxxᵀ − nμμᵀ is off by ~1e-3."""
    rng = np.random.default_rng(0)
    K, d, N = 4, 8, 5000
    mus = 1e4 + rng.normal(size=(K, d)) * 1e-1
    y = rng.integers(0, K, N)
    X = mus[y] + 1e-2 * rng.normal(size=(N, d))
    X0 = X - X[0]  # exact (Sterbenz): a reference frame without the offset
    m0 = np.stack([X0[y == k].mean(0) for k in range(K)])
    R = X0 - m0[y]
    S_ref = R.T @ R
    hc_ref = m0 - X0.mean(0)
    for per_class in (True, False):
        st = _feed(ClassStats(K, d, per_class=per_class), X, y, [37] * 135 + [5])
        _close(st.scatter, S_ref, rel=1e-13)
        _close(st.centred_means("global"), hc_ref, rel=1e-12)
        _close(st.class_ss, [(R[y == k] ** 2).sum() for k in range(K)], rel=1e-13)
    naive = X.T @ X - sum(np.outer(X[y == k].sum(0), X[y == k].sum(0)) / (y == k).sum() for k in range(K))
    assert np.abs(naive - S_ref).max() / np.abs(S_ref).max() > 1e-6  # the test is sensitive


def test_large_offset_metrics_equal_unshifted_metrics():
    X, y, W, b = _data(K=4, d=8, spread=1e-2)
    base = nc_metrics(X, y, num_classes=4)
    shifted = nc_metrics(X + 1e4, y, num_classes=4)
    for key in ("nc1", "nc1_svd", "nc1_quotient", "cdnv", "vci", "trace_sw", "trace_sb", "nc2_h",
                "nc2_h_unweighted", "equinorm_h", "gnc2_dist", "etf_dist_h"):
        assert shifted[key] == pytest.approx(base[key], rel=1e-8), key


def test_numpy_torch_and_float32_inputs_agree():
    X, y, W, b = _data()
    r_np = nc_metrics(X, y, W, b)
    r_t = nc_metrics(torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(W), torch.from_numpy(b))
    assert r_np == r_t
    X32 = X.astype(np.float32)
    r32 = nc_metrics(X32, y, W, b)
    r64 = nc_metrics(X32.astype(np.float64), y, W, b)
    for k in r32:
        assert r32[k] == pytest.approx(r64[k], rel=1e-12, abs=1e-14) or math.isnan(r64[k]), k
