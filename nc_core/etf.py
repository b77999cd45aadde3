"""Simplex equiangular tight frames: construction, closed-form nearest ETF, distances, differentiable polar factor."""
from __future__ import annotations

import math

import torch

__all__ = [
    "etf_gram",
    "helmert_basis",
    "simplex_etf",
    "polar",
    "polar_completed",
    "nearest_etf",
    "etf_distance",
    "etf_pair_distance",
]

_F64 = torch.float64


def _check_k(K: int) -> int:
    if int(K) != K or K < 2:
        raise ValueError(f"number of classes: expected an integer K >= 2, got {K!r}")
    return int(K)


def etf_gram(K: int, *, dtype: torch.dtype = _F64, device=None) -> torch.Tensor:
    """M̃ = (I_K − 11ᵀ/K)/√(K−1): the normalised simplex-ETF Gram matrix, ‖M̃‖_F = 1 (nc-spec notation)."""
    K = _check_k(K)
    eye = torch.eye(K, dtype=dtype, device=device)  # (K, K)
    return (eye - 1.0 / K) / math.sqrt(K - 1)  # (K, K)


def helmert_basis(K: int, *, dtype: torch.dtype = _F64, device=None) -> torch.Tensor:
    """Orthonormal basis Q (K × (K−1)) of the complement of 1 (Helmert columns): QᵀQ = I, QQᵀ = I − 11ᵀ/K."""
    K = _check_k(K)
    Q = torch.zeros(K, K - 1, dtype=dtype, device=device)  # (K, K-1)
    for j in range(K - 1):
        norm = math.sqrt((j + 1) * (j + 2))
        Q[: j + 1, j] = 1.0 / norm
        Q[j + 1, j] = -(j + 1) / norm
    return Q


def simplex_etf(K: int, d: int, *, unit_columns: bool = False, dtype: torch.dtype = _F64,
                device=None) -> torch.Tensor:
    """A simplex ETF E ∈ R^{d×K} for any d ≥ K−1, built from the Helmert basis Q of 1⊥.

    E = [Qᵀ; 0]/√(K−1): columns sum to zero (E1 = 0), EᵀE = (I − 11ᵀ/K)/(K−1) = M̃/√(K−1) and
    ‖E‖_F = 1, so E is a point P M̃ of the normalised-ETF set used by the ETF distances (Guiding,
    Markou et al. 2024). ``unit_columns=True`` returns √K·E: unit columns with pairwise cosine
    −1/(K−1) (the classical simplex ETF of Papyan et al. 2020). Only the first K−1 rows are non-zero.
    """
    K = _check_k(K)
    if int(d) != d or d < K - 1:
        raise ValueError(f"simplex_etf: a K-simplex ETF needs d >= K-1 = {K - 1}, got d={d!r}")
    E = torch.zeros(int(d), K, dtype=dtype, device=device)  # (d, K)
    E[: K - 1] = helmert_basis(K, dtype=dtype, device=device).T / math.sqrt(K - 1)
    return E * math.sqrt(K) if unit_columns else E


class _Polar(torch.autograd.Function):
    """Polar factor Q = UVᵀ of a tall A (m ≥ n) with a backward that is stable at repeated singular
    values (the generic SVD backward divides by σ_i² − σ_j² and is not) and at rank deficiency: Σ⁺
    drops σ ≈ 0 (the implicit-ETF head's later solves polar((2/√(K−1)) Y M + δ·Prox) are full rank in
    practice; its first solve, where Y M has σ_K = 0 because M1 = 0, uses :func:`polar_completed`)."""

    @staticmethod
    def forward(ctx, A):
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)  # (.., m, n), (.., n), (.., n, n)
        ctx.save_for_backward(U, S, Vh)
        return U @ Vh  # (.., m, n)

    @staticmethod
    def backward(ctx, G):
        U, S, Vh = ctx.saved_tensors
        V = Vh.mT  # (.., n, n)
        Z = U.mT @ G @ V  # (.., n, n)
        fin = torch.finfo(S.dtype)
        tiny = fin.eps * S.amax(-1, keepdim=True).clamp_min(fin.tiny)  # (.., 1) relative zero
        denom = S[..., :, None] + S[..., None, :]  # (.., n, n) σ_i + σ_j
        inner = torch.where(denom > tiny[..., None], (Z - Z.mT) / denom.clamp_min(fin.tiny), torch.zeros_like(Z))
        grad = U @ inner @ Vh  # (.., m, n) tangent part: U Ω Vᵀ
        GV = G @ V  # (.., m, n)
        resid = GV - U @ (U.mT @ GV)  # (.., m, n) (I − UUᵀ) G V
        s_pinv = torch.where(S > tiny * S.shape[-1], 1.0 / S.clamp_min(fin.tiny), torch.zeros_like(S))  # (.., n)
        return grad + (resid * s_pinv[..., None, :]) @ Vh  # + (I − UUᵀ) G V Σ⁺ Vᵀ


def polar(A: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor polar(A) = U Vᵀ of the thin SVD A = UΣVᵀ (batched over leading dims).

    It solves max_{XᵀX = I} ⟨X, A⟩ (orthogonal Procrustes); differentiable through a custom autograd
    rule dQ = U Ω Vᵀ + (I − UUᵀ) dA V Σ⁻¹ Vᵀ with Ω_ij = (X_ij − X_ji)/(σ_i + σ_j), X = Uᵀ dA V, which
    stays finite when singular values coincide (e.g. at an exact ETF) and drops σ ≈ 0 (Σ⁺) when A is
    rank deficient, where the factor is unique only on A's range. Used by the implicit-ETF head: polar((2/√(K−1)) Y M + δ·Prox)
    (nc-spec §4 closed form). Wide inputs (m < n) are handled through the transpose.
    """
    if A.ndim < 2:
        raise ValueError(f"polar: expected a matrix (..., m, n), got shape {tuple(A.shape)}")
    if A.shape[-2] >= A.shape[-1]:
        return _Polar.apply(A)
    return _Polar.apply(A.mT).mT


class _PolarCompleted(torch.autograd.Function):
    """Polar factor of a tall A (m ≥ n) whose non-unique part is taken from a guide (see
    :func:`polar_completed`); the backward differentiates the unique part U_r V_rᵀ only."""

    @staticmethod
    def forward(ctx, A, guide, rtol):
        U, S, Vh = torch.linalg.svd(A, full_matrices=True)  # (m, m), (n,), (n, n)
        rank = int((S > rtol * S[0]).sum()) if float(S[0]) > 0.0 else 0
        u_range, v_range = U[:, :rank], Vh[:rank].mT  # (m, r), (n, r)
        u_comp, v_null = U[:, rank:], Vh[rank:].mT  # (m, m-r), (n, n-r): bases of range(A)⊥ and null(A)
        guide_coords = u_comp.mT @ guide @ v_null  # (m-r, n-r) projected guide, in those bases
        Pg, _, Qgh = torch.linalg.svd(guide_coords, full_matrices=False)  # (m-r, n-r), (n-r,), (n-r, n-r)
        completion = u_comp @ (Pg @ Qgh) @ v_null.mT  # (m, n) = U_⊥ polar(U_⊥ᵀ Γ V_⊥) V_⊥ᵀ, basis-free
        ctx.save_for_backward(u_range, S[:rank], v_range)
        return u_range @ v_range.mT + completion  # (m, n)

    @staticmethod
    def backward(ctx, G):
        U, S, V = ctx.saved_tensors  # (m, r), (r,), (n, r)
        Z = U.mT @ G @ V  # (r, r)
        inner = (Z - Z.mT) / (S[:, None] + S[None, :])  # (r, r) Ω, σ_i + σ_j ≥ 2·rtol·σ_1 > 0
        GV = G @ V  # (m, r)
        grad = U @ inner @ V.mT + ((GV - U @ (U.mT @ GV)) / S[None, :]) @ V.mT  # U Ω Vᵀ + (I − UUᵀ) G V Σ⁻¹ Vᵀ
        if V.shape[0] > V.shape[1]:  # rank deficient: row-space rotation U Σ⁻¹ Uᵀ G (I − VVᵀ)
            UG = U.mT @ G  # (r, n)
            grad = grad + (U / S[None, :]) @ (UG - (UG @ V) @ V.mT)
        return grad, None, None


def polar_completed(A: torch.Tensor, guide: torch.Tensor, *, rtol: float | None = None) -> torch.Tensor:
    """A maximiser X of ⟨X, A⟩ over XᵀX = I that does not depend on LAPACK's choice of null vectors.

    A (m × n, m ≥ n) = U_r Σ_r V_rᵀ with r = #{σ_i > rtol·σ_1} (default rtol = √eps of A's dtype: a
    singular direction with σ ≤ √eps·σ_1 is fixed by the data only to ~eps·σ_1/σ ≥ √eps, and dropping
    it costs ⟨X, A⟩ at most σ). polar(A) = U_r V_rᵀ is unique only on that range; the rest is
    completed from the fixed guide Γ (m × n):

        X = U_r V_rᵀ + U_⊥ polar(U_⊥ᵀ Γ V_⊥) V_⊥ᵀ,

    U_⊥ (m × (m−r)) and V_⊥ (n × (n−r)) orthonormal bases of range(A)⊥ and null(A). The completion
    does not depend on those bases (it is the polar factor of (I − U_rU_rᵀ) Γ (I − V_rV_rᵀ) on its
    range) when U_⊥ᵀ Γ V_⊥ has full column rank n − r, which holds unless a null direction's guide
    image lies in range(A); XᵀX = I and ⟨X, A⟩ = Σ_{i≤r} σ_i hold regardless. 2-D inputs only.

    Differentiable in A through the unique part only (the completion is a choice, detached): dX =
    U_r Ω V_rᵀ + (I − U_rU_rᵀ) dA V_r Σ_r⁻¹ V_rᵀ + U_r Σ_r⁻¹ U_rᵀ dA (I − V_rV_rᵀ), Ω_ij =
    (Z_ij − Z_ji)/(σ_i + σ_j), Z = U_rᵀ dA V_r. At full rank this is :func:`polar`'s rule and X = polar(A).
    """
    if A.ndim != 2 or A.shape[0] < A.shape[1]:
        raise ValueError(f"polar_completed: expected a tall matrix (m, n), m >= n, got shape {tuple(A.shape)}")
    if guide.shape != A.shape:
        raise ValueError(f"polar_completed: guide shape {tuple(guide.shape)} != A shape {tuple(A.shape)}")
    if rtol is None:
        rtol = math.sqrt(torch.finfo(A.dtype).eps)
    return _PolarCompleted.apply(A, guide.detach().to(A.dtype), float(rtol))


def _check_frame(Y: torch.Tensor, name: str = "Y") -> tuple[int, int]:
    if Y.ndim < 2:
        raise ValueError(f"{name}: expected a d × K matrix, got shape {tuple(Y.shape)}")
    d, K = int(Y.shape[-2]), int(Y.shape[-1])
    _check_k(K)
    if d < K - 1:
        raise ValueError(f"{name}: a simplex ETF with K={K} needs d >= K-1 = {K - 1}, got d={d}")
    return d, K


def nearest_etf(Y: torch.Tensor) -> torch.Tensor:
    """Nearest normalised simplex ETF P* M̃ to Y ∈ R^{d×K} over P ∈ St(d, K) (Guiding `ETF_distance.py`).

    Closed form (nc-spec §2.6): M̃ = QQᵀ/√(K−1) with Q the Helmert basis of 1⊥ (K × (K−1)), so the set
    {P M̃} is {O Qᵀ/√(K−1) : O ∈ St(d, K−1)} and the nearest point is polar(Y Q) Qᵀ/√(K−1), polar(YQ) = UVᵀ
    of the thin SVD YQ = UΣVᵀ (orthogonal Procrustes; ‖Y − P*M̃‖² = ‖Y‖² + 1 − 2‖Y M̃‖_*). No iterative
    solver. The answer is unique when σ_{K−1}(Y M̃) > 0; when YQ is rank deficient any polar factor is
    a nearest point (the SVD's completion of U stays orthonormal, so the result is always an ETF).
    Valid for any d ≥ K−1 (the K−1-dimensional ETF needs no more).
    """
    d, K = _check_frame(Y)
    Q = helmert_basis(K, dtype=Y.dtype, device=Y.device)  # (K, K-1)
    U, _, Vh = torch.linalg.svd(Y @ Q, full_matrices=False)  # (.., d, K-1), (.., K-1), (.., K-1, K-1)
    return U @ Vh @ Q.T / math.sqrt(K - 1)  # (.., d, K)


def etf_distance(Y: torch.Tensor) -> torch.Tensor:
    """min_{P ∈ St(d,K)} ‖Y − P M̃‖_F² = ‖Y‖² + 1 − 2‖Y M̃‖_* (closed form, nc-spec §2.6).

    For a Frobenius-normalised Y (Y = Wᵀ/‖W‖ or H̃/‖H̃‖) this is 2 − 2‖Y M̃‖_* (Guiding
    `seed_statistics.py` W_ETF_dist / H_ETF_dist). Evaluated as ‖Y − nearest_etf(Y)‖² (same value, but
    relative accuracy is kept near collapse, where 2 − 2‖Y M̃‖_* cancels to an absolute 1e-16).
    """
    D = Y - nearest_etf(Y)  # (.., d, K)
    return (D * D).sum(dim=(-2, -1))


def etf_pair_distance(Y1: torch.Tensor, Y2: torch.Tensor) -> torch.Tensor:
    """‖P₁M̃ − P₂M̃‖_F² between the nearest ETFs of two frames (Guiding ETF_WH_dist)."""
    if Y1.shape != Y2.shape:
        raise ValueError(f"etf_pair_distance: shapes differ: {tuple(Y1.shape)} vs {tuple(Y2.shape)}")
    D = nearest_etf(Y1) - nearest_etf(Y2)  # (.., d, K)
    return (D * D).sum(dim=(-2, -1))
