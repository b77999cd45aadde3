"""Independent float64 numpy/scipy reference of every NC metric, written per definition from nc-spec §2 (tests only)."""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla

EPS = np.finfo(np.float64).eps


def etf_target(K):
    return (np.eye(K) - np.ones((K, K)) / K) / math.sqrt(K - 1)


def _gap(A, T):
    return float(np.linalg.norm(A / np.linalg.norm(A) - T))


def _procrustes_nearest(Y):
    """Nearest normalised ETF U Bᵀ/√(K−1), U ∈ St(d, K−1), B an orthonormal basis of 1⊥, through
    scipy.linalg.orthogonal_procrustes on the d × d padded problem (not the library's code path)."""
    d, K = Y.shape
    B = sla.null_space(np.ones((1, K)))  # (K, K-1)
    target = np.zeros((d, d))
    target[:, : K - 1] = Y @ B  # maximise ⟨R, Y B Eᵀ⟩ over orthogonal R
    R, _ = sla.orthogonal_procrustes(np.eye(d), target)
    U = R[:, : K - 1]
    return U @ B.T / math.sqrt(K - 1)


def _gof_x(n, lw, lh, L):
    N = n.sum()
    beta = L * N * (N * lw**L * lh) ** (1.0 / L)
    xs = []
    for nk in n:
        c = beta / nk if nk > 0 else np.inf
        if not np.isfinite(c):
            xs.append(0.0)
            continue
        # c (x^L + 1)^2 − L x^{L−1} = 0  (polynomial of degree 2L)
        coef = np.zeros(2 * L + 1)
        coef[0] += c  # x^{2L}
        coef[L] += 2 * c  # x^L
        coef[2 * L] += c  # 1
        coef[2 * L - (L - 1)] -= L  # x^{L-1}
        roots = np.roots(coef)
        real = [r.real for r in roots if abs(r.imag) <= 1e-6 * max(1.0, abs(r))]
        if not real:
            xs.append(0.0)
            continue
        x = max(real)
        for _ in range(20):  # Newton polish on f(x) = L x^{L−1}/(x^L+1)² − c
            f = L * x ** (L - 1) / (x**L + 1) ** 2 - c
            h = max(1e-7 * abs(x), 1e-12)
            g = lambda t: L * t ** (L - 1) / (t**L + 1) ** 2  # noqa: E731
            fp = (g(x + h) - g(x - h)) / (2 * h)
            if fp == 0:
                break
            x = x - f / fp
        xs.append(max(x, 0.0))
    return np.array(xs)


def reference_metrics(X, y, K, W=None, b=None, gof=None):
    """All metric keys by definition. X (N, d), y (N,), W (K, d), b (K,)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    N, d = X.shape
    out = {}
    mus = np.stack([X[y == k].mean(0) for k in range(K)])  # (K, d)
    ns = np.array([(y == k).sum() for k in range(K)], dtype=np.float64)
    muG = X.mean(0)
    mubar = mus.mean(0)
    SW = np.zeros((d, d))
    for k in range(K):
        R = X[y == k] - mus[k]
        SW += R.T @ R
    SW /= N
    SB = sum(np.outer(mus[k] - muG, mus[k] - muG) for k in range(K)) / K
    VB = sum(np.outer(mus[k] - mubar, mus[k] - mubar) for k in range(K)) / K
    out["nc1"] = float(np.trace(SW @ sla.pinv(SB))) / K
    if K - 1 < d:
        s, U = sla.eigh(VB)
        s, U = s[::-1][: K - 1], U[:, ::-1][:, : K - 1]
        out["nc1_svd"] = float(np.trace(SW @ U @ np.diag(1 / s) @ U.T)) / K
    else:
        out["nc1_svd"] = float("nan")
    out["nc1_quotient"] = float(np.trace(SW) / np.trace(VB))
    V = np.array([np.mean(np.sum((X[y == k] - mus[k]) ** 2, axis=1)) for k in range(K)])
    vals = [(V[i] + V[j]) / (2 * np.sum((mus[i] - mus[j]) ** 2)) for i in range(K) for j in range(i + 1, K)]
    out["cdnv"] = float(np.mean(vals))
    out["vci"] = 1 - float(np.trace(sla.pinv(SB + SW) @ SB)) / min(d, K - 1)
    out["trace_sw"] = float(np.trace(SW))
    out["trace_sb"] = float(np.trace(SB))
    Ht = (mus - muG).T  # (d, K)
    Hb = (mus - mubar).T
    Mu = mus.T
    Mt = etf_target(K)
    I = np.eye(K) / math.sqrt(K)
    out["nc2_h"] = _gap(Ht.T @ Ht, Mt)
    out["nc2_h_unweighted"] = _gap(Hb.T @ Hb, Mt)
    out["nc2_h_identity"] = _gap(Mu.T @ Mu, I)
    hn = np.linalg.norm(Ht, axis=0)
    out["equinorm_h"] = float(np.std(hn, ddof=1) / np.mean(hn))
    mh = Hb.T / (np.linalg.norm(Hb.T, axis=1, keepdims=True) + EPS)
    dists = np.array([np.linalg.norm(mh[i] - mh[j]) for i in range(K) for j in range(i + 1, K)])
    out["gnc2_dist"] = float(np.var(dists))
    out["gnc2_log"] = float(np.var(-np.log(dists)))
    ratios = []
    for k in range(K):
        sv = sla.svd(X[y == k], compute_uv=False)
        ratios.append(sv.sum() / np.sqrt((sv**2).sum()))
    ratios = np.array(ratios)
    out["nuclear_frobenius"] = float(ratios.mean())
    out["numerical_rank"] = float((ratios**2).mean())
    if d >= K - 1:
        Yh = Ht / np.linalg.norm(Ht)
        Eh = _procrustes_nearest(Yh)
        out["etf_dist_h"] = float(np.sum((Yh - Eh) ** 2))
    else:
        out["etf_dist_h"] = float("nan")
    if gof is not None:
        n = np.asarray(gof.get("class_counts", ns), dtype=np.float64)
        lw, lh, L = gof["weight_decay"], gof["feature_decay"], gof["depth_linear"]
        x = _gof_x(n, lw, lh, L)
        s = (n.sum() * lh * x**L) ** (1 / (2 * L))
        s2 = s ** (2 * L)
        nl = n.sum() * lh
        D1, D2, D3, D4 = np.diag(s2), np.diag(s2 / (s2 + nl) ** 2), np.diag(s2 / (s2 + nl)), np.diag(s2 + nl)
        out["nc2_h_gof"] = _gap(Mu.T @ Mu, D2 / np.linalg.norm(D2))
    if W is None:
        return out
    W = np.asarray(W, dtype=np.float64)
    bb = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    Wc = W - W.mean(0)
    out["nc2_w"] = _gap(Wc @ Wc.T, Mt)
    out["nc2_w_uncentered"] = _gap(W @ W.T, Mt)
    out["nc2_w_identity"] = _gap(W @ W.T, I)
    wn = np.linalg.norm(W, axis=1)
    out["equinorm_w"] = float(np.std(wn, ddof=1) / np.mean(wn))
    out["equinorm_diff"] = abs(out["equinorm_h"] - out["equinorm_w"])
    out["nc3"] = _gap(Wc @ Ht, Mt)
    out["nc3_uncentered"] = _gap(W @ Ht, Mt)
    out["nc3_identity"] = _gap(W @ Mu, I)
    out["nc3_w_sub_h"] = float(np.linalg.norm(W / np.linalg.norm(W) - Mu.T / np.linalg.norm(Mu)))
    out["nc3_w_sub_h_centered"] = float(np.linalg.norm(W / np.linalg.norm(W) - Ht.T / np.linalg.norm(Ht)))
    out["nc3_uniform_duality"] = float(np.var([W[k] @ (mus[k] - mubar) for k in range(K)], ddof=1))
    out["wh_b"] = float(np.linalg.norm(W @ muG + bb))
    dist2 = ((X[:, None, :] - mus[None, :, :]) ** 2).sum(-1)  # (N, K) explicit differences
    ncc = dist2.argmin(1)
    out["ncc_mismatch"] = 100 - 100 * float(np.mean(ncc == (X @ W.T + bb).argmax(1)))
    out["ncc_agreement"] = float(np.mean(ncc == (X @ W.T).argmax(1)))
    margins, margins_logit = [], []
    for i in range(N):
        h = X[i] - muG
        c = np.array([h @ Wc[k] / (np.linalg.norm(h) * np.linalg.norm(Wc[k])) for k in range(K)])
        cl = np.array([X[i] @ W[k] / (np.linalg.norm(h) * np.linalg.norm(Wc[k])) for k in range(K)])
        others = [k for k in range(K) if k != y[i]]
        margins.append(c[y[i]] - c[others].max())
        margins_logit.append(cl[y[i]] - cl[others].max())
    out["cos_margin_mean"] = float(np.mean(margins))
    out["cos_margin_min"] = float(np.min(margins))
    out["cos_margin_median"] = float(np.median(margins))
    out["cos_margin_mean_logit"] = float(np.mean(margins_logit))
    Yw = W.T / np.linalg.norm(W)
    out["wh_dist"] = float(np.sum((Yw - Ht / np.linalg.norm(Ht)) ** 2))
    if d >= K - 1:
        Ew = _procrustes_nearest(Yw)
        out["etf_dist_w"] = float(np.sum((Yw - Ew) ** 2))
        out["etf_dist_wh"] = float(np.sum((Ew - Eh) ** 2))
    else:
        out["etf_dist_w"] = out["etf_dist_wh"] = float("nan")
    if gof is not None:
        out["nc2_w_gof"] = _gap(W @ W.T, D1 / np.linalg.norm(D1))
        out["nc3_wh_gof"] = _gap(W @ Mu, D3 / np.linalg.norm(D3))
        T = D4 @ Mu.T
        out["nc3_w_sub_h_gof"] = float(np.linalg.norm(W / np.linalg.norm(W) - T / np.linalg.norm(T)))
    return out
