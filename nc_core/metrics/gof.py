"""Imbalanced "general orthogonal frame" (GOF) targets and metrics (Dang et al. 2023, Fsoft)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from ._util import MetricUndefined, normalised_gap

GOF_KEYS = ("weight_decay", "feature_decay", "depth_linear", "class_counts")


@dataclass(frozen=True)
class GofParams:
    """λ_W (``weight_decay``), λ_H (``feature_decay``), L (``depth_linear``), class counts n_k."""

    weight_decay: float
    feature_decay: float
    depth_linear: int
    class_counts: np.ndarray  # (K,) float64


def parse_gof(gof: Mapping[str, Any], counts: torch.Tensor) -> GofParams:
    """Validate a ``gof`` mapping. Unknown keys / wrong types → ValueError; missing or non-positive
    λ's → MetricUndefined (NaN + reason). ``class_counts`` defaults to the split's own counts."""
    if not isinstance(gof, Mapping):
        raise ValueError(f"gof: expected a mapping with keys {GOF_KEYS[:3]}, got {type(gof).__name__}")
    unknown = sorted(set(gof) - set(GOF_KEYS))
    if unknown:
        raise ValueError(f"gof: unknown key(s) {unknown}; expected some of {list(GOF_KEYS)}")
    missing = [k for k in GOF_KEYS[:3] if gof.get(k) is None]
    if missing:
        raise MetricUndefined(f"GOF needs weight_decay, feature_decay and depth_linear; missing: {missing}")
    try:
        lw, lh = float(gof["weight_decay"]), float(gof["feature_decay"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gof: weight_decay/feature_decay must be numbers, got "
                         f"{gof['weight_decay']!r}, {gof['feature_decay']!r}") from exc
    L = gof["depth_linear"]
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
        raise ValueError(f"gof: depth_linear must be an integer >= 1, got {L!r}")
    K = counts.shape[0]
    n = np.asarray(gof["class_counts"] if gof.get("class_counts") is not None else counts.cpu().numpy(),
                   dtype=np.float64)
    if n.shape != (K,) or (n < 0).any() or not np.isfinite(n).all():
        raise ValueError(f"gof: class_counts must be {K} non-negative numbers, got shape {n.shape}")
    if not (lw > 0 and lh > 0 and math.isfinite(lw) and math.isfinite(lh)):
        raise MetricUndefined(f"GOF targets need λ_W > 0 and λ_H > 0, got weight_decay={lw}, feature_decay={lh}")
    if not n.sum() > 0:
        raise MetricUndefined("GOF targets need at least one sample")
    return GofParams(lw, lh, int(L), n)


def _g(x: float, L: int) -> float:
    """g(x) = L x^{L−1}/(x^L + 1)², written to avoid overflow for large x."""
    if x <= 1.0:
        return L * x ** (L - 1) / (x**L + 1.0) ** 2
    inv = x ** (-L)
    return L / (x ** (L + 1) * (1.0 + inv) ** 2)


def gof_x(p: GofParams) -> np.ndarray:
    """x_k = largest real root of β/n_k − L x^{L−1}/(x^L + 1)² = 0, clipped at 0 (Fsoft `compute_x`),
    β = L·N·(N λ_W^L λ_H)^{1/L}. L = 1: x_k = √(n_k/β) − 1. L ≥ 2: g(x) = L x^{L−1}/(x^L+1)² rises on
    [0, x*] and falls after x* = ((L−1)/(L+1))^{1/L}; the largest root is found by Brent's method on
    the falling branch; no positive root (β/n_k > g(x*)) or n_k = 0 → 0 (the class collapses).
    Replaces the seed's sympy `solve`; the seed's no-root crash becomes 0. Returns (K,) float64."""
    L, n = p.depth_linear, p.class_counts
    N = float(n.sum())
    beta = L * N * (N * p.weight_decay**L * p.feature_decay) ** (1.0 / L)
    if L == 1:
        return np.clip(np.sqrt(n / beta) - 1.0, 0.0, None)
    x_star = ((L - 1) / (L + 1)) ** (1.0 / L)
    g_max = _g(x_star, L)
    out = np.zeros_like(n)
    from scipy.optimize import brentq  # noqa: PLC0415 - 0.3 s of import, only for GOF targets

    for k, nk in enumerate(n):
        if nk <= 0:
            continue
        c = beta / nk
        if c > g_max:
            continue
        if c == g_max:
            out[k] = x_star
            continue
        hi = 2.0 * max(x_star, 1.0)
        while _g(hi, L) >= c:
            hi *= 2.0
        out[k] = brentq(lambda x: _g(x, L) - c, x_star, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps,
                        maxiter=500)
    return out


def gof_s(p: GofParams) -> np.ndarray:
    """s_k = (N λ_H x_k^L / c)^{1/(2L)}, c = 1 (Fsoft `compute_s`; kept in float64, the seed rounds to
    float32). Returns (K,)."""
    N = float(p.class_counts.sum())
    return (N * p.feature_decay * gof_x(p) ** p.depth_linear) ** (1.0 / (2 * p.depth_linear))


def gof_targets(p: GofParams) -> dict[str, np.ndarray]:
    """Diagonals (K,) of D₁ = s^{2L}, D₂ = s^{2L}/(s^{2L} + Nλ_H)², D₃ = s^{2L}/(s^{2L} + Nλ_H),
    D₄ = s^{2L} + Nλ_H (nc-spec §2.7)."""
    s2l = gof_s(p) ** (2 * p.depth_linear)
    nl = float(p.class_counts.sum()) * p.feature_decay
    return {"d1": s2l, "d2": s2l / (s2l + nl) ** 2, "d3": s2l / (s2l + nl), "d4": s2l + nl}


def _diag(v: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)  # (K,)
    n = float(torch.linalg.norm(t))
    if not n > 0:
        raise MetricUndefined("all GOF targets are zero: every class collapses for these λ_W, λ_H, n_k")
    return torch.diag(t / n)  # (K, K)


def nc2_w_gof(W: torch.Tensor, d1: np.ndarray) -> float:
    """‖WWᵀ/‖WWᵀ‖ − D₁/‖D₁‖‖, D₁ = diag(s_k^{2L}); W = the product W_L⋯W_1, uncentred, no bias
    (Dang et al. 2023, Fsoft `compute_NC2_W_GOF`)."""
    return normalised_gap(W @ W.T, _diag(d1, W), "WWᵀ")


def nc2_h_gof(means: torch.Tensor, d2: np.ndarray) -> float:
    """‖M_uᵀM_u/‖M_uᵀM_u‖ − D₂/‖D₂‖‖, D₂ = diag(s^{2L}/(s^{2L} + Nλ_H)²), uncentred means
    (Dang et al. 2023, Fsoft `compute_NC2_H_GOF`). ``means`` (K, d)."""
    return normalised_gap(means @ means.T, _diag(d2, means), "M_uᵀM_u")


def nc3_wh_gof(W: torch.Tensor, means: torch.Tensor, d3: np.ndarray) -> float:
    """‖WM_u/‖WM_u‖ − D₃/‖D₃‖‖, D₃ = diag(s^{2L}/(s^{2L} + Nλ_H)) (Dang et al. 2023,
    Fsoft `compute_NC3_WH`)."""
    return normalised_gap(W @ means.T, _diag(d3, W), "WM_u")


def nc3_w_sub_h_gof(W: torch.Tensor, means: torch.Tensor, d4: np.ndarray) -> float:
    """‖W/‖W‖ − D₄M_uᵀ/‖D₄M_uᵀ‖‖, D₄ = diag(s^{2L} + Nλ_H) (Dang et al. 2023,
    Fsoft `compute_NC3_W_sub_H`)."""
    target = torch.as_tensor(d4, dtype=W.dtype, device=W.device)[:, None] * means  # (K, d) D₄M_uᵀ
    nt = float(torch.linalg.norm(target))
    if not nt > 0:
        raise MetricUndefined("D₄M_uᵀ is zero (all class means are zero)")
    return normalised_gap(W, target / nt, "W")
