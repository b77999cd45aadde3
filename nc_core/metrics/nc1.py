"""NC1 metrics (within-class variability): nc1, nc1_svd, nc1_quotient, cdnv, vci, traces, nuclear ratios."""
from __future__ import annotations

import numpy as np
import torch

from ._util import EPS64, MetricUndefined, pinv_keep


def _span_eig(hc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of Σ = hcᵀhc/K (d × d) through the K × K Gram: returns λ (r,) and U (d, r), all pairs
    (ascending), U_j = hcᵀ v_j / √(K λ_j) — the K-dimensional-span shortcut (rank Σ ≤ K)."""
    K = hc.shape[0]
    lam, V = torch.linalg.eigh(hc @ hc.T / K)  # (K,), (K, K)
    return lam, V


def _trace_ratio_in_span(sigma_w: torch.Tensor, hc: torch.Tensor, lam: torch.Tensor, V: torch.Tensor,
                         keep: torch.Tensor) -> float:
    """Σ_{j kept} u_jᵀ Σ_W u_j / λ_j with u_j = hcᵀ v_j/√(K λ_j): Tr(Σ_W Σ⁺) restricted to kept pairs."""
    K = hc.shape[0]
    lam_k = lam[keep]  # (r,)
    U = hc.T @ V[:, keep] / torch.sqrt(K * lam_k)  # (d, r) orthonormal eigenvectors of hcᵀhc/K
    quad = (U * (sigma_w @ U)).sum(0)  # (r,) u_jᵀ Σ_W u_j
    return float((quad / lam_k).sum())


def nc1(sigma_w: torch.Tensor, hc: torch.Tensor) -> float:
    """NC1 = Tr(Σ_W Σ_B⁺)/K, Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ (Papyan et al. 2020).

    Pseudo-inverse as scipy.linalg.pinv on the d × d float64 Σ_B: singular values > d·eps·σ_max are
    inverted. Computed exactly in the ≤ K-dim span of the centred means (``hc`` (K, d) rows μ_k − μ_G)
    through the K × K Gram, keeping at most min(d, K−1) components (rank bound of Σ_B).
    Seeds: all five research repos (`collapse_metric`, `NC1_collapse_metric`).
    """
    K, d = hc.shape
    lam, V = _span_eig(hc)
    if not float(lam.max()) > 0:
        raise MetricUndefined("Σ_B = 0 (all class means coincide), NC1 undefined")
    keep = pinv_keep(lam, d, max_rank=min(d, K - 1))
    return _trace_ratio_in_span(sigma_w, hc, lam, V, keep) / K


def nc1_svd(sigma_w: torch.Tensor, hbar: torch.Tensor) -> float:
    """NC1 (Papyan/Han, rhubarbwu `covariance_ratio(metric='svd')`) = Tr(Σ_W U diag(1/s) Uᵀ)/K over the
    top K−1 eigenpairs (U, s) of Σ̄_B = (1/K) Σ_k (μ_k − μ̄)(μ_k − μ̄)ᵀ (centred at the unweighted μ̄).

    The seed uses `svds(k=K−1)`, which needs K−1 < d: NaN otherwise. NaN as well when Σ̄_B has rank
    < K−1 (the top K−1 components would include a zero one). ``hbar`` (K, d) rows μ_k − μ̄.
    """
    K, d = hbar.shape
    if not K - 1 < d:
        raise MetricUndefined(f"nc1_svd needs K-1 < d (svds with k=K-1), got K={K}, d={d}")
    lam, V = _span_eig(hbar)
    keep = torch.zeros_like(lam, dtype=torch.bool)  # (K,)
    keep[1:] = True  # ascending order: the K−1 largest
    if not float(lam[1]) > d * EPS64 * float(lam[-1]):
        raise MetricUndefined("the unweighted Σ_B has rank < K-1, its top K-1 components include a zero one")
    return _trace_ratio_in_span(sigma_w, hbar, lam, V, keep) / K


def nc1_quotient(sigma_w: torch.Tensor, hbar: torch.Tensor) -> float:
    """NC1 quotient (Tirer et al.; rhubarbwu `covariance_ratio(metric='quotient')`) = Tr(Σ_W)/Tr(Σ̄_B),
    Σ̄_B centred at the unweighted μ̄ (``hbar`` (K, d) rows μ_k − μ̄)."""
    K = hbar.shape[0]
    tb = float((hbar * hbar).sum()) / K
    if not tb > 0:
        raise MetricUndefined("Tr(Σ_B) = 0 (all class means coincide)")
    return float(torch.trace(sigma_w)) / tb


def cdnv(class_var: torch.Tensor, means: torch.Tensor) -> float:
    """Class-distance normalised variance (Galanti et al. 2021; rhubarbwu `variability_cdnv`):
    mean over pairs i < j of (V_i + V_j)/(2‖μ_i − μ_j‖²), V_k = (1/n_k) Σ_{i∈k} ‖h_i − μ_k‖².

    ``class_var`` (K,) V_k, ``means`` (K, d) — any common shift (e.g. μ_k − μ_G) gives the same value.
    Distances from explicit differences (no Gram cancellation).
    """
    K = means.shape[0]
    total = 0.0
    for i in range(K - 1):
        diff = means[i + 1:] - means[i]  # (K-1-i, d)
        dist2 = (diff * diff).sum(1)  # (K-1-i,)
        if not bool((dist2 > 0).all()):
            raise MetricUndefined("two class means coincide, CDNV divides by zero")
        total += float(((class_var[i] + class_var[i + 1:]) / (2.0 * dist2)).sum())
    return total / (K * (K - 1) / 2)


def vci(sigma_w: torch.Tensor, hc: torch.Tensor) -> float:
    """Variability collapse index (Markou et al. 2024, Guiding `compute_Variability_Collapse_index`):
    VCI = 1 − Tr(Σ_T⁺ Σ_B)/min(d, K−1), Σ_T = Σ_B + Σ_W, pinv cutoff d·eps·σ_max (float64).

    Tr(Σ_T⁺ Σ_B) = Σ_j ‖hc q_j‖²/(K λ_j) over the kept eigenpairs (λ_j, q_j) of the d × d Σ_T.
    """
    K, d = hc.shape
    sigma_t = sigma_w + hc.T @ hc / K  # (d, d)
    lam, Q = torch.linalg.eigh(sigma_t)  # (d,), (d, d)
    if not float(lam.abs().max()) > 0:
        raise MetricUndefined("Σ_T = 0 (all features identical), VCI undefined")
    keep = pinv_keep(lam, d)
    proj = hc @ Q[:, keep]  # (K, r)
    tr = float(((proj * proj).sum(0) / (K * lam[keep])).sum())
    return 1.0 - tr / min(d, K - 1)


def trace_sw(sigma_w: torch.Tensor) -> float:
    """Tr(Σ_W), Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ (Zhou et al. 2022, MSE repo `compute_Sigma_W`)."""
    return float(torch.trace(sigma_w))


def trace_sb(hc: torch.Tensor) -> float:
    """Tr(Σ_B) = (1/K) Σ_k ‖μ_k − μ_G‖² (Zhou et al. 2022, MSE repo `compute_Sigma_B`); ``hc`` (K, d) rows
    μ_k − μ_G."""
    return float((hc * hc).sum()) / hc.shape[0]


def centred_factors(scatter: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(F (b, r, d), r): factors FᵀF = C_k of symmetric PSD class scatters C_k (b, d, d) (upper triangles
    read), over the r largest numerical ranks' rows (rows past a class's rank are zero). Directions of C_k
    below d·eps·‖C_k‖ are rounding noise of the Gram and count as 0 — relative to the class's own spread,
    so a nearly collapsed class keeps them. CPU float64: LAPACK's pivoted Cholesky (dpstrf, its default
    cutoff d·u·max C_ii; ~9× faster than eigh); elsewhere √λ-scaled eigenvectors of eigh."""
    b, d, _ = scatter.shape
    if scatter.device.type != "cpu" or scatter.dtype != torch.float64:
        lam, V = torch.linalg.eigh(scatter, UPLO="U")  # (b, d) ascending, (b, d, d)
        keep = lam > d * torch.finfo(lam.dtype).eps * lam[:, -1:].clamp_min(0)  # (b, d)
        return (torch.where(keep, lam, 0.0).sqrt()[:, :, None] * V.mT).flip(1), d  # (b, d, d) kept rows first
    from scipy.linalg import lapack  # noqa: PLC0415 - scipy's LAPACK, loaded on first use

    F = torch.zeros_like(scatter)  # (b, d, d)
    rank = 0
    for C, out in zip(scatter.numpy(), F.numpy()):
        u, piv, r, info = lapack.dpstrf(C, lower=0)  # Pᵀ C P = UᵀU, U (r × d) upper trapezoidal
        if info < 0:
            raise ValueError(f"dpstrf: argument {-info} had an illegal value")
        out[:r, piv - 1] = np.triu(u[:r])  # (r, d) U Pᵀ: C = (U Pᵀ)ᵀ (U Pᵀ)
        rank = max(rank, int(r))
    return F[:, :rank], rank


def class_rank_ratios(scatter: torch.Tensor, n_rows: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(b,) ‖X_k‖_*/‖X_k‖_F of uncentred class matrices X_k (n_k × d) from their scatter about the class
    mean C_k (b, d, d; upper triangles read), float64 sizes n_k (b,) and means μ_k (b, d).

    X_kᵀX_k = C_k + n_k μ_kμ_kᵀ = BᵀB with B = [F; √n_k μ_kᵀ] (FᵀF = C_k, :func:`centred_factors`), so X_k's
    singular values are B's ((r + 1) × d, float64 SVD): accurate to eps·σ_max even for a nearly collapsed
    class, whose small singular values the eigenvalues of X_kᵀX_k itself (√(d·eps)·σ_max of noise) would
    lose. ‖X_k‖_F² = tr C_k + n_k‖μ_k‖²."""
    fro2 = scatter.diagonal(dim1=-2, dim2=-1).sum(-1) + n_rows * (means * means).sum(-1)  # (b,) ‖X_k‖_F²
    if not bool((fro2 > 0).all()):
        raise MetricUndefined("a class feature matrix is zero, ‖X_k‖_*/‖X_k‖_F undefined")
    F, _ = centred_factors(scatter)  # (b, r, d)
    B = torch.cat([F, (n_rows.sqrt()[:, None] * means)[:, None, :]], dim=1)  # (b, r + 1, d)
    return torch.linalg.svdvals(B).sum(-1) / fro2.sqrt()  # (b,)


def class_rank_ratio(scatter: torch.Tensor, n_rows: int, mean: torch.Tensor) -> float:
    """:func:`class_rank_ratios` of one class: scatter C_k (d × d), n_k rows, mean μ_k (d,)."""
    n = torch.tensor([float(n_rows)], dtype=scatter.dtype, device=scatter.device)  # (1,)
    return float(class_rank_ratios(scatter[None], n, mean[None])[0])


def nuclear_frobenius(ratios: torch.Tensor) -> float:
    """mean_k ‖X_k‖_*/‖X_k‖_F, X_k the uncentred class feature matrix (Zhou et al. 2022,
    MSE `compute_nuclear_frobenius`).
    → 1 for a collapsed class (rank-one rows ≈ μ_k). ``ratios`` (K,)."""
    return float(ratios.mean())


def numerical_rank(ratios: torch.Tensor) -> float:
    """mean_k (‖X_k‖_*/‖X_k‖_F)² (Markou et al. 2024, Guiding `compute_numerical_rank`). ``ratios`` (K,)."""
    return float((ratios * ratios).mean())
