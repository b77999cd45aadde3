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


def _nearly_collapsed(K=4, d=64, n=120, spread=1e-6, offset=0.0, seed=2):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) + offset
    y = np.repeat(np.arange(K), n)
    return means[y] + spread * rng.normal(size=(K * n, d)), y


@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize("spread, offset", [(1e-6, 0.0), (1e-8, 0.0), (1e-4, 50.0)])
def test_nuclear_ratios_keep_their_excess_over_one_near_collapse(spread, offset, per_class):
    # ‖X_k‖_*/‖X_k‖_F − 1 ≈ Σ_{i≥2} σ_i/σ_1 is what a collapsing class shows; the eigenvalues of the
    # uncentred Gram X_kᵀX_k lose every σ_i below √(d·eps)·σ_1, so this used to come out ≤ 0
    from nc_core.metrics import ClassStats, SampleStats

    X, y = _nearly_collapsed(spread=spread, offset=offset)
    ratios = []
    for k in range(4):
        s = np.linalg.svd(X[y == k], compute_uv=False)  # accurate to eps·σ_1 (a direct SVD of X_k)
        ratios.append(s.sum() / np.sqrt((s * s).sum()))
    want = np.mean(ratios) - 1.0
    assert want > 0
    if per_class:
        got = nc_metrics(X, y, num_classes=4)["nuclear_frobenius"] - 1.0  # the resident path
    else:
        stats = ClassStats(4, X.shape[1], per_class=False)
        stats.update(X, y)
        got = float(SampleStats.from_features(stats, X, y).finalize().class_ratios.mean()) - 1.0
    assert got == pytest.approx(want, rel=1e-6)


def test_etf_distances_are_the_closed_form_when_the_frame_is_rank_deficient():
    rng = np.random.default_rng(0)
    K, d = 4, 8
    W = rng.normal(size=(K, d))
    W[1] = W[0]  # two identical classifier rows: W's centred frame has rank K − 2
    X, y = rng.normal(size=(40, d)), np.arange(40) % K
    r = nc_metrics(X, y, W, num_classes=K)
    Mt = (np.eye(K) - 1 / K) / np.sqrt(K - 1)
    Y = W.T / np.linalg.norm(W)
    assert r["etf_dist_w"] == pytest.approx(2 - 2 * np.linalg.svd(Y @ Mt, compute_uv=False).sum(), rel=1e-12)
    M = rng.normal(size=(3, 3))
    M[2] = (M[0] + M[1]) / 2  # collinear class means
    X, y = np.repeat(M, 5, axis=0) + 1e-3 * rng.normal(size=(15, 3)), np.repeat(np.arange(3), 5)
    r = nc_metrics(X, y, num_classes=3)
    hc = np.array([X[y == k].mean(0) for k in range(3)])
    hc = hc - hc.mean(0)
    Y, Mt = hc.T / np.linalg.norm(hc), (np.eye(3) - 1 / 3) / np.sqrt(2)
    assert r["etf_dist_h"] == pytest.approx(2 - 2 * np.linalg.svd(Y @ Mt, compute_uv=False).sum(), rel=1e-12)


def test_a_sample_at_the_global_mean_has_margin_zero_in_both_conventions():
    X = np.array([[7, 5], [5, 5], [3, 5], [5, 6], [5, 4.]])  # sample 1 is μ_G
    y, W = np.array([0, 0, 1, 2, 2]), np.array([[1., .3], [-1, .2], [.1, 1]])
    r = nc_metrics(X, y, W, num_classes=3)
    wc, xc = W - W.mean(0), X - X.mean(0)  # w_k − w̄, h_i − μ_G
    margins = []
    for h, hc_i, k in zip(X, xc, y):
        if not np.linalg.norm(hc_i) > 0:
            margins.append(0.0)  # the zero vector's cosine is 0, as in the centred convention
            continue
        c = (W @ h) / (np.linalg.norm(wc, axis=1) * np.linalg.norm(hc_i))  # (K,) the MSE repo's cosines
        margins.append(c[k] - np.delete(c, k).max())
    assert r["cos_margin_mean_logit"] == pytest.approx(np.mean(margins), rel=1e-12)


def test_both_factorisations_of_the_class_scatter_give_the_same_ratios():
    # CPU float64 takes LAPACK's pivoted Cholesky, other devices and dtypes eigh: one rank-deficient
    # class (3 rows in d = 6), one full-rank class and one nearly collapsed class
    import torch

    from nc_core.metrics.nc1 import class_rank_ratios, centred_factors

    rng = np.random.default_rng(1)
    rows = [rng.normal(size=(3, 6)), rng.normal(size=(40, 6)), 5 + 1e-3 * rng.normal(size=(40, 6))]
    means = torch.tensor(np.array([r.mean(0) for r in rows]))
    scatter = torch.tensor(np.array([(r - r.mean(0)).T @ (r - r.mean(0)) for r in rows]))  # (3, 6, 6)
    n = torch.tensor([3.0, 40.0, 40.0], dtype=torch.float64)
    F, rank = centred_factors(scatter)
    assert rank == 6 and torch.linalg.matrix_rank(F[0]) == 2  # 3 centred rows span 2 directions
    assert torch.allclose(F.mT @ F, scatter, rtol=0, atol=1e-12)
    want = [np.linalg.svd(r, compute_uv=False) for r in rows]
    want = torch.tensor([s.sum() / np.sqrt((s * s).sum()) for s in want])
    assert torch.allclose(class_rank_ratios(scatter, n, means), want, rtol=1e-12, atol=0)
    single = class_rank_ratios(scatter.float(), n.float(), means.float())  # the eigh branch
    assert torch.allclose(single.double(), want, rtol=1e-5, atol=0)
