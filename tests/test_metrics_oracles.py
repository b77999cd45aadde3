"""Geometric oracles: exact simplex ETF → 0, Gaussian blob → large, theoretical GOF configuration → 0."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nc_core.etf import simplex_etf
from nc_core.metrics import nc_metrics
from nc_core.metrics.gof import GofParams, _g, gof_s, gof_x

ZERO_AT_ETF = ("nc1", "nc1_svd", "cdnv", "vci", "nc2_w", "nc2_w_uncentered", "nc2_h", "nc2_h_unweighted",
               "equinorm_w", "equinorm_h", "equinorm_diff", "gnc2_dist", "gnc2_log", "nc3", "nc3_uncentered",
               "nc3_w_sub_h_centered", "nc3_uniform_duality", "wh_b", "ncc_mismatch", "etf_dist_w",
               "etf_dist_h", "etf_dist_wh", "wh_dist", "trace_sw")


def _etf_set(K=5, d=9, n=20, scale=3.0, seed=0):
    E = simplex_etf(K, d, unit_columns=True).numpy()  # (d, K)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))  # random rotation
    M = (Q @ E).T * scale  # (K, d) class means, centred
    y = np.repeat(np.arange(K), n)
    return M[y], y, (Q @ E).T * 0.7  # features, labels, W (rows ∥ means)


@pytest.mark.parametrize("d", [4, 9])  # d = K−1 and d > K
def test_exact_simplex_etf_is_collapsed(d):
    X, y, W = _etf_set(d=d)
    r = nc_metrics(X, y, W, np.zeros(5))
    for key in ZERO_AT_ETF:
        if key == "nc1_svd" and d == 4:
            assert math.isnan(r[key])  # needs K−1 < d
            continue
        assert abs(r[key]) < 1e-12, (key, r[key])
    assert r["ncc_agreement"] == 1.0
    K = 5
    for key in ("cos_margin_mean", "cos_margin_min", "cos_margin_median"):
        assert r[key] == pytest.approx(1 + 1 / (K - 1), abs=1e-12)
    assert r["nuclear_frobenius"] == pytest.approx(1.0, abs=1e-12)  # rank-one class matrices
    assert r["numerical_rank"] == pytest.approx(1.0, abs=1e-12)


def test_gaussian_blob_is_far_from_collapse():
    rng = np.random.default_rng(0)
    K, d, N = 5, 16, 2000
    X = rng.normal(size=(N, d))  # every class the same distribution
    y = rng.integers(0, K, N)
    W = rng.normal(size=(K, d))
    r = nc_metrics(X, y, W, num_classes=K)
    assert r["nc1"] > 10 and r["cdnv"] > 10 and r["nc1_quotient"] > 10
    assert r["vci"] > 0.5
    assert r["nuclear_frobenius"] > 3.0 and r["numerical_rank"] > 9.0
    assert r["nc2_w"] > 0.2 and r["etf_dist_w"] > 0.05 and r["nc3"] > 0.3
    assert r["ncc_mismatch"] > 50


def _gof_config(counts, lam, L, d=8, seed=0):
    """Features/classifier of the theoretical GOF solution: W = diag(s^L) Qᵀ, μ_k = Q_k s_k^L/(s_k^{2L} + Nλ_H)."""
    n = np.asarray(counts, dtype=float)
    p = GofParams(lam, lam, L, n)
    s = gof_s(p)
    N = n.sum()
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, len(n))))  # (d, K) orthonormal
    W = (s**L)[:, None] * Q.T  # (K, d)
    M = (s**L / (s ** (2 * L) + N * lam))[:, None] * Q.T  # (K, d)
    y = np.concatenate([np.full(int(c), k) for k, c in enumerate(counts)])
    return M[y], y, W, s


@pytest.mark.parametrize("L,lam", [(1, 5e-4), (3, 5e-4), (1, 0.02), (6, 1e-3)])
def test_theoretical_gof_configuration_has_zero_gof_metrics(L, lam):
    counts = [200, 100, 50, 50]
    X, y, W, s = _gof_config(counts, lam, L)
    r = nc_metrics(X, y, W, gof={"weight_decay": lam, "feature_decay": lam, "depth_linear": L})
    for key in ("nc2_w_gof", "nc2_h_gof", "nc3_wh_gof", "nc3_w_sub_h_gof"):
        assert abs(r[key]) < 1e-12, (key, r[key])
    if lam == 0.02:  # β = N²λ² = 64 > 50: the two small classes collapse (x_k = 0)
        assert s[2] == 0 and s[3] == 0 and s[1] > 0
    else:
        assert r["nc2_w_identity"] > 1e-3  # imbalanced: not an orthogonal frame of equal norms


def test_gof_x_closed_form_and_largest_root():
    n = np.array([200.0, 100.0, 50.0, 50.0])
    N = n.sum()
    p1 = GofParams(5e-4, 5e-4, 1, n)
    beta = N * N * 5e-4 * 5e-4
    np.testing.assert_allclose(gof_x(p1), np.sqrt(n / beta) - 1, rtol=1e-15)
    for L in (2, 3, 6, 9):
        p = GofParams(5e-4, 5e-4, L, n)
        beta = L * N * (N * 5e-4**L * 5e-4) ** (1 / L)
        x = gof_x(p)
        x_star = ((L - 1) / (L + 1)) ** (1 / L)
        for xk, nk in zip(x, n):
            assert xk > x_star  # the largest root is on the falling branch
            assert _g(xk, L) == pytest.approx(beta / nk, rel=1e-12)
    assert gof_x(GofParams(10.0, 10.0, 3, n)).tolist() == [0.0] * 4  # no positive root → collapse
