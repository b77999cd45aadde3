"""NC2 metrics (simplex-ETF / orthogonal-frame structure, equinorm, hyperspherical uniformity)."""
from __future__ import annotations

import math

import torch

from ..etf import etf_gram
from ._util import EPS64, MetricUndefined, normalised_gap


def _ident(K: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(K, dtype=like.dtype, device=like.device) / math.sqrt(K)  # (K, K) I/√K


def nc2_w(W: torch.Tensor) -> float:
    """NC2_W = ‖W̄W̄ᵀ/‖W̄W̄ᵀ‖ − M̃‖_F with the row-centred W̄ = W − 1w̄ᵀ
    (Zhou et al. 2022 MSE repo / nc_loss `compute_ETF`). ``W`` (K, d)."""
    Wc = W - W.mean(0)  # (K, d)
    return normalised_gap(Wc @ Wc.T, etf_gram(W.shape[0], device=W.device), "W̄W̄ᵀ")


def nc2_w_uncentered(W: torch.Tensor) -> float:
    """NC2_W with uncentred W: ‖WWᵀ/‖WWᵀ‖ − M̃‖ (Zhu et al. 2021 tding1, Fsoft `compute_NC2_ETF_W`,
    Guiding `compute_ETF`)."""
    return normalised_gap(W @ W.T, etf_gram(W.shape[0], device=W.device), "WWᵀ")


def nc2_h(hc: torch.Tensor) -> float:
    """NC2_H = ‖H̃ᵀH̃/‖H̃ᵀH̃‖ − M̃‖, H̃ = [μ_k − μ_G] (Dang et al. 2023, Fsoft
    `compute_NC2_ETF_H`). ``hc`` (K, d) = H̃ᵀ."""
    return normalised_gap(hc @ hc.T, etf_gram(hc.shape[0], device=hc.device), "H̃ᵀH̃")


def nc2_h_unweighted(hbar: torch.Tensor) -> float:
    """NC2_H = ‖H̄ᵀH̄/‖H̄ᵀH̄‖ − M̃‖, H̄ = [μ_k − μ̄] centred at the unweighted μ̄ (Wu & Papyan 2024, rhubarbwu
    `simplex_etf_error`). ``hbar`` (K, d) = H̄ᵀ."""
    return normalised_gap(hbar @ hbar.T, etf_gram(hbar.shape[0], device=hbar.device), "centred means Gram")


def nc2_w_identity(W: torch.Tensor) -> float:
    """‖WWᵀ/‖WWᵀ‖ − I/√K‖ (orthogonal frame of bias-free runs; Dang et al. 2023, Fsoft
    `compute_NC2_Identity_W`)."""
    return normalised_gap(W @ W.T, _ident(W.shape[0], W), "WWᵀ")


def nc2_h_identity(means: torch.Tensor) -> float:
    """‖M_uᵀM_u/‖M_uᵀM_u‖ − I/√K‖ with uncentred means M_u = [μ_k] (Dang et al. 2023, Fsoft
    `compute_NC2_Identity_H`).
    ``means`` (K, d)."""
    return normalised_gap(means @ means.T, _ident(means.shape[0], means), "M_uᵀM_u")


def _cov(norms: torch.Tensor, what: str) -> float:
    mean = float(norms.mean())
    if not mean > 0:
        raise MetricUndefined(f"all {what} norms are zero, coefficient of variation undefined")
    return float(norms.std(unbiased=True)) / mean


def equinorm_w(W: torch.Tensor) -> float:
    """Coefficient of variation std(‖w_k‖)/mean(‖w_k‖), unbiased std, W uncentred
    (Markou et al. 2024, Guiding `compute_W_H_equinorm`; Papyan et al. 2020 equinorm)."""
    return _cov(torch.linalg.norm(W, dim=1), "classifier row")


def equinorm_h(hc: torch.Tensor) -> float:
    """Coefficient of variation std(‖μ_k − μ_G‖)/mean(‖μ_k − μ_G‖), unbiased std (Markou et al.
    2024, Guiding `compute_W_H_equinorm`). ``hc`` (K, d)."""
    return _cov(torch.linalg.norm(hc, dim=1), "centred class-mean")


def equinorm_diff(W: torch.Tensor, hc: torch.Tensor) -> float:
    """|CoV_H − CoV_W| of :func:`equinorm_h` and :func:`equinorm_w` (Markou et al. 2024, Guiding
    `WH_equinorm_diff_metric`)."""
    return abs(equinorm_h(hc) - equinorm_w(W))


def _pair_distances(X: torch.Tensor) -> torch.Tensor:
    """‖x_i − x_j‖ for i < j (row-major pair order), from explicit differences. ``X`` (K, d)."""
    K = X.shape[0]
    out = [torch.linalg.norm(X[i + 1:] - X[i], dim=1) for i in range(K - 1)]  # (K-1-i,) each
    return torch.cat(out)  # (K(K-1)/2,)


def _unit_pair_distances(hbar: torch.Tensor) -> torch.Tensor:
    mh = hbar / (torch.linalg.norm(hbar, dim=1, keepdim=True) + EPS64)  # (K, d) m̂_k
    return _pair_distances(mh)  # (K(K-1)/2,)


def gnc2_dist(hbar: torch.Tensor) -> float:
    """Hyperspherical uniformity GNC2 (Liu et al. 2023; Wu & Papyan 2024, rhubarbwu
    `kernel_stats` with `dist_kernel`):
    population variance over pairs i < j of ‖m̂_i − m̂_j‖, m̂_k = (μ_k − μ̄)/(‖μ_k − μ̄‖ + eps).
    eps = float64 machine epsilon (the seed uses its tensor dtype's eps). ``hbar`` (K, d)."""
    return float(_unit_pair_distances(hbar).var(unbiased=False))


def gnc2_log(hbar: torch.Tensor) -> float:
    """GNC2 with the logarithmic kernel (Wu & Papyan 2024, rhubarbwu `kernel_stats` with `log_kernel`):
    population variance over pairs i < j of −log‖m̂_i − m̂_j‖ (m̂_k as in :func:`gnc2_dist`). ``hbar`` (K, d)."""
    dist = _unit_pair_distances(hbar)  # (P,)
    if not bool((dist > 0).all()):
        raise MetricUndefined("two normalised centred class means coincide, −log distance is infinite")
    return float((-dist.log()).var(unbiased=False))
