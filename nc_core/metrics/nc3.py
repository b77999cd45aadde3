"""NC3 metrics (self-duality of classifier and class means) and the bias relation wh_b ("NC4" in tding1 plots)."""
from __future__ import annotations

import math

import torch

from ..etf import etf_gram
from ._util import MetricUndefined, fro, normalised_gap


def nc3(W: torch.Tensor, hc: torch.Tensor) -> float:
    """NC3 = ‖W̄H̃/‖W̄H̃‖ − M̃‖_F with the row-centred W̄ = W − 1w̄ᵀ and H̃ = [μ_k − μ_G]
    (Zhou et al. 2022, MSE repo / nc_loss `compute_W_H_relation`). ``W`` (K, d), ``hc`` (K, d) = H̃ᵀ."""
    Wc = W - W.mean(0)  # (K, d)
    return normalised_gap(Wc @ hc.T, etf_gram(W.shape[0], device=W.device), "W̄H̃")


def nc3_uncentered(W: torch.Tensor, hc: torch.Tensor) -> float:
    """NC3 with uncentred W: ‖WH̃/‖WH̃‖ − M̃‖ (Zhu et al. 2021 tding1, Fsoft `compute_NC3_ETF_WH`,
    Guiding `compute_W_H_relation`)."""
    return normalised_gap(W @ hc.T, etf_gram(W.shape[0], device=W.device), "WH̃")


def nc3_identity(W: torch.Tensor, means: torch.Tensor) -> float:
    """‖WM_u/‖WM_u‖ − I/√K‖ with uncentred means M_u (Dang et al. 2023, Fsoft `compute_NC3_Identity_WH`)."""
    K = W.shape[0]
    eye = torch.eye(K, dtype=W.dtype, device=W.device) / math.sqrt(K)  # (K, K)
    return normalised_gap(W @ means.T, eye, "WM_u")


def _sub(A: torch.Tensor, B: torch.Tensor, what_a: str, what_b: str) -> float:
    na, nb = fro(A), fro(B)
    if not na > 0:
        raise MetricUndefined(f"{what_a} is zero, cannot be normalised")
    if not nb > 0:
        raise MetricUndefined(f"{what_b} is zero, cannot be normalised")
    return fro(A / na - B / nb)


def nc3_w_sub_h(W: torch.Tensor, means: torch.Tensor) -> float:
    """‖W/‖W‖ − M_uᵀ/‖M_u‖‖_F with uncentred means (Dang et al. 2023, Fsoft
    `compute_NC3_W_sub_H`). ``means`` (K, d) = M_uᵀ."""
    return _sub(W, means, "W", "M_u")


def nc3_w_sub_h_centered(W: torch.Tensor, hc: torch.Tensor) -> float:
    """‖W/‖W‖ − H̃ᵀ/‖H̃‖‖_F with means centred at μ_G (Dang et al. 2023, Fsoft
    `compute_NC3_W_sub_H_centered`). ``hc`` (K, d) = H̃ᵀ."""
    return _sub(W, hc, "W", "H̃")


def nc3_uniform_duality(W: torch.Tensor, hbar: torch.Tensor) -> float:
    """Uniform duality UNC3 (Wu & Papyan 2024, rhubarbwu `similarities(...).var()`): unbiased variance over
    classes of w_k·(μ_k − μ̄). ``hbar`` (K, d)."""
    dots = (W * hbar).sum(1)  # (K,)
    return float(dots.var(unbiased=True))


def wh_b(W: torch.Tensor, b: torch.Tensor | None, mu_g: torch.Tensor) -> float:
    """Bias relation ‖Wμ_G + b‖₂ (Zhu et al. 2021; tding1/MSE/nc_loss/Guiding `compute_Wh_b_relation`, plotted as
    "NC4").
    ``b`` None means a bias-free model (b = 0, as the seeds do for `--no-bias`)."""
    v = W @ mu_g  # (K,)
    if b is not None:
        v = v + b
    return float(torch.linalg.norm(v))
