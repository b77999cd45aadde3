"""Classifier heads: learned deep-linear, fixed simplex ETF, implicit nearest ETF (nc-spec §1.4, §4)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nc_core.etf import helmert_basis, polar, polar_completed
from nc_core.registry import HEADS
from nc_core.spec import HeadSpec


def _simplex_etf(num_classes: int, dim: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Simplex ETF W (K, d) with unit rows and W Wᵀ = K/(K−1)(I − 11ᵀ/K).

    d ≥ K: √(K/(K−1))(I − 11ᵀ/K)·eye(K, d) (tding1's zero padding); d = K−1: √(K/(K−1))·Q with Q the
    Helmert basis of 1^⊥ (K, K−1).
    """
    k = num_classes
    if dim < k - 1:
        raise ValueError(f"a {k}-class simplex ETF needs d >= K-1 = {k - 1}, got d = {dim}")
    scale = math.sqrt(k / (k - 1))
    if dim >= k:
        centred = torch.eye(k, dtype=torch.float64) - 1.0 / k  # (K, K)
        return (scale * centred @ torch.eye(k, dim, dtype=torch.float64)).to(dtype)  # (K, d)
    return (scale * helmert_basis(k, dtype=torch.float64)).to(dtype)  # (K, K-1), columns ⟂ 1


class Head(nn.Module):
    """A classifier head: forward(h (B, d), y (B,) | None) -> logits (B, K)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes

    def effective_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The (K, d) linear map from features to logits (formed in ``dtype`` when given: float64 for the
        metrics, so a product of layers is not rounded to float32)."""
        raise NotImplementedError

    def effective_bias(self) -> Tensor | None:
        """The (K,) logit offset, or None for a bias-free head."""
        raise NotImplementedError

    def decayed_parameters(self) -> list[nn.Parameter]:
        """Parameters that carry λ_W under sep_decay (linear weights; biases are not decayed)."""
        return []


@HEADS.register("learned")
class LearnedHead(Head):
    """Deep-linear head: depth_linear−1 bias-free Linear layers (d→hidden→…→hidden), then Linear(hidden→K)."""

    def __init__(self, spec: HeadSpec, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        hidden = spec.hidden or dim
        widths = [dim] + [hidden] * (spec.depth_linear - 1)
        layers = [nn.Linear(widths[i], widths[i + 1], bias=False) for i in range(spec.depth_linear - 1)]
        layers.append(nn.Linear(widths[-1], num_classes, bias=spec.bias))
        self.layers = nn.ModuleList(layers)

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            h = layer(h)
        return h  # (B, K)

    def effective_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        w = self.layers[0].weight.to(dtype)  # (hidden | K, d)
        for layer in self.layers[1:]:
            w = layer.weight.to(dtype) @ w  # (hidden, d), the last product (K, d)
        return w  # (K, d) = W_L ⋯ W_1

    def effective_bias(self) -> Tensor | None:
        return self.layers[-1].bias

    def decayed_parameters(self) -> list[nn.Parameter]:
        return [layer.weight for layer in self.layers]


@HEADS.register("fixed_etf")
class FixedETFHead(Head):
    """W = simplex ETF (K, d), a frozen buffer (tding1 ``--ETF_fc``); the bias, if any, is trained."""

    def __init__(self, spec: HeadSpec, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        if spec.depth_linear != 1:
            raise ValueError(f"fixed_etf head: expected depth_linear = 1, got {spec.depth_linear}")
        self.register_buffer("weight", _simplex_etf(num_classes, dim))  # (K, d)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if spec.bias else None  # (K,)

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        return F.linear(h, self.weight.to(h.dtype), None if self.bias is None else self.bias.to(h.dtype))

    def effective_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        return self.weight.to(dtype)

    def effective_bias(self) -> Tensor | None:
        return self.bias


def _ema_rate(t: int) -> float:
    """α_t = 2/(t+2), floored at 1e-4 (α_0 = 1 copies the first batch)."""
    return max(2.0 / (t + 2.0), 1e-4)


def _first_solve(y_norm: Tensor) -> Tensor:
    """X (d, K) maximising ⟨X, Y M⟩ over St(d, K) (d = K−1: X Xᵀ = I, X1 = 0), chosen deterministically.

    M = QQᵀ with Q the Helmert basis of 1⊥ (K, K−1), so ⟨X, Y M⟩ = ⟨XQ, YQ⟩ and the maximisers are
    X = O Qᵀ + e 1ᵀ/√K with O ∈ polar(YQ) and e a unit vector ⟂ range(O) (no e when d = K−1). polar(Y M)
    left e — and O's columns on YQ's null space, when a first batch misses classes — to LAPACK's null
    vectors, i.e. to rounding noise, and X becomes the next step's Prox. Here, in the orthonormal
    class basis H = [Q, 1/√K] (K, K), Y M H = [YQ, 0] and X = polar_completed([YQ, 0], Γ H) Hᵀ: the unique
    part U_r V_rᵀ of polar(YQ) (σ_i > √eps·σ_1) is differentiable as before, the null part is completed
    from the guide Γ = the first K standard basis columns of R^d (feature axis k ↔ class k), detached.
    """
    d, k = y_norm.shape
    helmert = helmert_basis(k, dtype=y_norm.dtype, device=y_norm.device)  # (K, K-1)
    coords = y_norm @ helmert  # (d, K-1) = Y Q
    if d >= k:
        ones = torch.full((k, 1), 1.0 / math.sqrt(k), dtype=y_norm.dtype, device=y_norm.device)  # (K, 1)
        basis = torch.cat([helmert, ones], dim=1)  # (K, K) orthogonal
        coords = torch.cat([coords, torch.zeros_like(coords[:, :1])], dim=1)  # (d, K) = Y M H
    else:
        basis = helmert  # (K, K-1): X = O Qᵀ, rows ⟂ 1
    guide = torch.eye(d, k, dtype=y_norm.dtype, device=y_norm.device) @ basis  # (d, K | K-1)
    return polar_completed(coords, guide) @ basis.mT  # (d, K)


def implicit_etf_solve(h: Tensor, y: Tensor, f_prev: Tensor, t: int, prox: Tensor | None, *,
                       num_classes: int, delta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One training step of the nearest-ETF layer (nc-spec §4, closed form), pure and differentiable.

    Returns (W (K, d), f̄ (d,), F (d, K), X (d, K)): F = α·[m_1 … m_K] + (1−α)·F_prev for classes present
    (absent classes keep F_prev), m_k = batch class mean − f̄; Y = F/‖F‖_F, M = I − 11ᵀ/K;
    X = polar((2/√(K−1)) Y M + δ·Prox), first call X = argmax ⟨X, Y M⟩ over St(d, K) (see
    :func:`_first_solve`); W = √(K/(K−1)) M Xᵀ. Gradients reach h through the current-batch term of F
    and through f̄.
    """
    k = num_classes
    fbar = h.mean(dim=0)  # (d,)
    onehot = F.one_hot(y.long(), k).to(h.dtype)  # (B, K)
    counts = onehot.sum(dim=0)  # (K,)
    means = (h.mT @ onehot) / counts.clamp_min(1.0) - fbar[:, None]  # (d, K)
    alpha = _ema_rate(t)
    f_new = torch.where(counts[None, :] > 0, alpha * means + (1.0 - alpha) * f_prev.detach(), f_prev.detach())  # (d, K)
    y_norm = f_new / f_new.norm().clamp_min(torch.finfo(h.dtype).tiny)  # (d, K)
    m = torch.eye(k, dtype=h.dtype, device=h.device) - 1.0 / k  # (K, K)
    if prox is None:  # first call: the feasibility solve, no proximal term
        x = _first_solve(y_norm)  # (d, K)
    else:
        x = polar((2.0 / math.sqrt(k - 1)) * (y_norm @ m) + delta * prox.detach())  # (d, K)
    w = math.sqrt(k / (k - 1)) * m @ x.mT  # (K, d)
    return w, fbar, f_new, x


@HEADS.register("implicit_etf")
class ImplicitETFHead(Head):
    """Implicit nearest-ETF classifier (Guiding ``--declarative_ETF``), not an optimizer parameter.

    Training (needs y): W from :func:`implicit_etf_solve`, b = −W f̄_batch (if head.bias), logits = W f + b.
    Eval: the stored W and b = −W f̄_batch of the last training step (nc-spec §4: saved and reused at
    evaluation; not the eval batch's mean, so eval logits do not depend on batching). State (F, t, Prox,
    W, b) lives in buffers, so it checkpoints and resumes with the model; a state dict of the older
    running-mean bias (b = −W f̄_run, with an ``fbar_run`` buffer) still loads, its b kept until the next step.
    """

    def __init__(self, spec: HeadSpec, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        if spec.depth_linear != 1:
            raise ValueError(f"implicit_etf head: expected depth_linear = 1, got {spec.depth_linear}")
        # d = K−1 works too: Y M, the first solve's X and hence every X have rows ⟂ 1 (exact ETF W).
        self.delta, self.use_bias = spec.delta, spec.bias
        self.register_buffer("ema", torch.zeros(dim, num_classes))  # (d, K) F
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # t
        self.register_buffer("prox", torch.zeros(dim, num_classes))  # (d, K) previous X
        self.register_buffer("weight", _simplex_etf(num_classes, dim))  # (K, d)
        self.register_buffer("bias", torch.zeros(num_classes))  # (K,)
        self._t: int | None = 0  # steps on the host (None: read the buffer once, after a state dict was loaded)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        state_dict.pop(prefix + "fbar_run", None)  # older checkpoints: the running mean their stored b came from
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._t = None  # the loaded steps buffer holds t now

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        if not self.training:
            out = F.linear(h, self.weight.to(h.dtype))  # (B, K)
            return out + self.bias.to(h.dtype) if self.use_bias else out
        if y is None:
            raise ValueError("implicit_etf head: training forward needs the labels y (B,), got None")
        t = self._t if self._t is not None else int(self.steps)  # no device sync a step, only after a load
        with torch.autocast(device_type=h.device.type, enabled=False):
            hf = h.float()  # (B, d)
            w, fbar, f_new, x = implicit_etf_solve(hf, y, self.ema, t, self.prox if t > 0 else None,
                                                   num_classes=self.num_classes, delta=self.delta)
            logits = hf @ w.mT  # (B, K)
            bias = -(w @ fbar) if self.use_bias else None  # (K,) b = −W f̄_batch
            if bias is not None:
                logits = logits + bias[None, :]
        with torch.no_grad():
            self.ema.copy_(f_new)
            self.prox.copy_(x)
            self.weight.copy_(w)
            self.bias.copy_(bias if bias is not None else torch.zeros_like(self.bias))
            self.steps.add_(1)
        self._t = t + 1
        return logits

    def effective_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        return self.weight.to(dtype)

    def effective_bias(self) -> Tensor | None:
        return self.bias if self.use_bias else None


def build_head(spec: HeadSpec, dim: int, num_classes: int) -> Head:
    """The head named by ``spec.name`` for features of dimension ``dim`` and ``num_classes`` classes."""
    return HEADS.build(spec.name, spec, dim, num_classes)


__all__ = ["Head", "LearnedHead", "FixedETFHead", "ImplicitETFHead", "build_head", "implicit_etf_solve"]
