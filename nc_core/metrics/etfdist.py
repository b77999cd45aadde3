"""Distances to the nearest simplex ETF (closed-form Procrustes) for W and the centred class means."""
from __future__ import annotations

import torch

from ..etf import etf_distance, etf_gram, etf_pair_distance
from ._util import EPS64, MetricUndefined, fro


def _frame(A: torch.Tensor, what: str, need_etf: bool = True) -> torch.Tensor:
    """Y = Aᵀ/‖A‖_F (d × K) from a (K, d) matrix; checks A ≠ 0 (and d ≥ K−1 when ``need_etf``)."""
    K, d = A.shape
    if need_etf and d < K - 1:
        raise MetricUndefined(f"a K-simplex ETF needs d >= K-1, got K={K}, d={d}")
    n = fro(A)
    if not n > 0:
        raise MetricUndefined(f"{what} is zero, cannot be normalised")
    return A.T / n  # (d, K)


def etf_dist_w(W: torch.Tensor) -> float:
    """min_{P∈St(d,K)} ‖Y_W − P M̃‖² = 2 − 2‖Y_W M̃‖_*, Y_W = Wᵀ/‖W‖ (Markou et al. 2024, Guiding
    `ETF_distance.py` W_ETF_dist; closed form of the seed's Riemannian solve, nc-spec §2.6)."""
    return float(etf_distance(_frame(W, "W")))


def etf_dist_h(hc: torch.Tensor) -> float:
    """min_{P∈St(d,K)} ‖Y_H − P M̃‖² = 2 − 2‖Y_H M̃‖_*, Y_H = H̃/‖H̃‖, H̃ = [μ_k − μ_G] (Markou et al. 2024,
    Guiding H_ETF_dist). ``hc`` (K, d) = H̃ᵀ."""
    return float(etf_distance(_frame(hc, "H̃")))


def _check_unique(Y: torch.Tensor, what: str) -> None:
    K = Y.shape[1]
    sv = torch.linalg.svdvals(Y @ etf_gram(K, device=Y.device))  # (min(d, K),)
    if not float(sv[K - 2]) > Y.shape[0] * EPS64 * float(sv[0]):
        raise MetricUndefined(f"the nearest ETF to {what} is not unique (Y M̃ has rank < K-1)")


def etf_dist_wh(W: torch.Tensor, hc: torch.Tensor) -> float:
    """‖P_W M̃ − P_H M̃‖² between the nearest ETFs P_W M̃, P_H M̃ of Y_W and Y_H (Markou et al. 2024, Guiding
    ETF_WH_dist)."""
    yw, yh = _frame(W, "W"), _frame(hc, "H̃")
    _check_unique(yw, "W")
    _check_unique(yh, "H̃")
    return float(etf_pair_distance(yw, yh))


def wh_dist(W: torch.Tensor, hc: torch.Tensor) -> float:
    """‖Wᵀ/‖W‖ − H̃/‖H̃‖‖_F² (Markou et al. 2024, Guiding WH_dist; squared, unlike nc3_w_sub_h_centered)."""
    D = _frame(W, "W", False) - _frame(hc, "H̃", False)  # (d, K)
    return float((D * D).sum())
