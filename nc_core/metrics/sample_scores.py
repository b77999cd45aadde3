"""Per-sample scores of a block of samples: nearest-class-centre predictions and cosine margins."""
from __future__ import annotations

from typing import NamedTuple

import torch


def first_index(A: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """(B,) the first row k of A (K, B) with A[k, i] = best[i] in each column — ``A.max(0).indices`` when
    ``best = A.amax(0)``, ``A.min(0).indices`` when ``best = A.amin(0)`` (first index on ties, as torch),
    at about half the cost for small K: a hit mask weighted K − 1 − k and one more column max."""
    return first_true(A == best)


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """(B,) the first row k of the boolean mask (K, B) that is True in each column (K − 1 for none): the hit
    mask weighted K − 1 − k, one column max."""
    K = mask.shape[0]
    rev = torch.arange(K - 1, -1, -1, dtype=torch.uint8 if K <= 256 else torch.int32, device=mask.device)  # (K,)
    return (K - 1) - (mask * rev[:, None]).amax(0).long()  # (B,)


def ncc_predict(dots: torch.Tensor, mc_sq: torch.Tensor) -> torch.Tensor:
    """Nearest class centre argmin_k ‖h − μ_k‖² (Papyan et al. 2020 NC4; Guiding `compute_NCC_match`,
    rhubarbwu `clf_ncc_agreement`), with h and μ_k both shifted by μ_G (distances unchanged, no
    large-offset cancellation): argmin_k ‖μ_k − μ_G‖² − 2 (h − μ_G)·(μ_k − μ_G).
    ``dots`` (K, B) = (μ_k − μ_G)·(h − μ_G), ``mc_sq`` (K,) = ‖μ_k − μ_G‖² → (B,) (first index on ties)."""
    dist = torch.add(mc_sq[:, None], dots, alpha=-2.0)  # (K, B) (−2·dots is exact: one rounding)
    return first_index(dist, dist.amin(0))


def _margin(C: torch.Tensor, y: torch.Tensor | int) -> torch.Tensor:
    """c_{y_i,i} − max_{k≠y_i} c_ki for a (K, B) score matrix (one column per sample), which is
    OVERWRITTEN (pass a temporary); ``y`` (B,) labels, or one int when every sample has that label."""
    if isinstance(y, int):
        true = C[y].clone()  # (B,)
        C[y] = float("-inf")
    else:
        true = C.gather(0, y[None, :]).squeeze(0)  # (B,)
        C.scatter_(0, y[None, :], float("-inf"))
    return true - C.amax(0)


def cosine_margins(num: torch.Tensor, wc_norm: torch.Tensor, xc_norm: torch.Tensor, y: torch.Tensor | int,
                   flat_tol: float = 0.0) -> torch.Tensor:
    """Cosine margins (Markou et al. 2024, Guiding `compute_margin`): c_ki = cos(w_k − w̄, h_i − μ_G) and margin_i =
    c_{y_i,i} − max_{k≠y_i} c_ki, from ``num`` (K, B) = (w_k − w̄)·(h_i − μ_G), ``wc_norm`` (K,) =
    ‖w_k − w̄‖ and ``xc_norm`` (B,) = ‖h_i − μ_G‖. The factor 1/‖h_i − μ_G‖ > 0 is the same for a whole
    column, so it commutes with the max and scales the margin instead of K cosines. With the
    uncentred numerator w_kᵀh_i (the logit minus its bias) this is the MSE repo's variant (Zhou et al. 2022; may leave
    [−1, 1]). A zero vector has cosine 0: a class with w_k = w̄ and, in both variants, a sample at μ_G
    (margin 0, where the uncentred numerator would otherwise be divided by 0). ``flat_tol``: the ‖w_k − w̄‖ that
    is rounding of w̄ itself (w̄ is inexact in float64: a row equal to the mean comes out ~1e-17 from it)."""
    cos = num / wc_norm.clamp_min(1e-300)[:, None]  # (K, B) c_ki times ‖h_i − μ_G‖
    flat = wc_norm <= flat_tol  # (K,) rows w_k = w̄ (to w̄'s rounding): cosine 0 (the uncentred numerator is not 0)
    if bool(flat.any()):
        cos[flat] = 0.0
    margin = _margin(cos, y)  # (B,) times ‖h_i − μ_G‖
    return torch.where(xc_norm > 0, margin / xc_norm.clamp_min(1e-300), 0.0)  # (B,)


class Scores(NamedTuple):
    """Per-sample results of one block of samples: NCC matches with argmax(Wh + b) and with argmax(Wh)
    (() int64 counts; None when a class is empty) and both cosine margins (B,)."""

    match: torch.Tensor | None
    agree: torch.Tensor | None
    margins: torch.Tensor
    margins_logit: torch.Tensor
