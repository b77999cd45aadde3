"""Training losses (nc-spec §1.3): ce, mse, rescaled_mse, focal, label_smoothing; mean over the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nc_core.registry import LOSSES
from nc_core.spec import LossSpec


class _Loss(nn.Module):
    """Base: logits (B, K) and integer labels (B,) -> scalar; computed in float32."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def _check(self, logits: Tensor, y: Tensor) -> Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"{type(self).__name__}: expected logits of shape (B, {self.num_classes}), "
                             f"got {tuple(logits.shape)}")
        if y.shape != logits.shape[:1]:
            raise ValueError(f"{type(self).__name__}: expected labels of shape ({logits.shape[0]},), "
                             f"got {tuple(y.shape)}")
        return logits.float()

    def onehot(self, y: Tensor) -> Tensor:
        return F.one_hot(y.long(), self.num_classes).float()  # (B, K); num_classes fixed (no shape bugs)


class CrossEntropy(_Loss):
    """(1/B) Σ_i −log softmax(z_i)_{y_i}."""

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self._check(logits, y), y.long())


class MSE(_Loss):
    """(1/(B·K)) Σ_i Σ_c (z_ic − s·[c = y_i])², s = target_scale (tding1 s = 1, nc_loss s = 15)."""

    def __init__(self, num_classes: int, target_scale: float = 1.0) -> None:
        super().__init__(num_classes)
        self.target_scale = target_scale

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        z = self._check(logits, y)  # (B, K)
        return F.mse_loss(z, self.target_scale * self.onehot(y))


class RescaledMSE(_Loss):
    """(1/B) Σ_i (1/K) Σ_c κ_c (z_ic − M·[c = y_i])², κ_c = k for c = y_i else 1 (MSE repo)."""

    def __init__(self, num_classes: int, M: float = 1.0, k: float = 1.0) -> None:
        super().__init__(num_classes)
        self.M, self.k = M, k

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        z = self._check(logits, y)  # (B, K)
        onehot = self.onehot(y)  # (B, K)
        kappa = 1.0 + (self.k - 1.0) * onehot  # (B, K)
        return (kappa * (z - self.M * onehot).square()).mean()


class Focal(_Loss):
    """(1/B) Σ_i −(1 − p_{i,y_i})^γ log p_{i,y_i}, p = softmax(z) (Lin et al. 2017; nc_loss, γ = 3).

    1 − p is taken as −expm1(log p) (no cancellation) and held at the smallest normal float: where p
    rounds to 1, d(1 − p)^γ/dp is infinite for γ < 1, and times log p = 0 it made a NaN gradient; the
    term's true gradient there is 0."""

    def __init__(self, num_classes: int, gamma: float = 3.0) -> None:
        super().__init__(num_classes)
        self.gamma = gamma

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        logp = F.log_softmax(self._check(logits, y), dim=1)  # (B, K)
        logp_y = logp.gather(1, y.long()[:, None])[:, 0]  # (B,)
        one_minus_p = (-torch.expm1(logp_y)).clamp_min(torch.finfo(logp_y.dtype).tiny)  # (B,) 1 − p_{i,y_i}
        return (-one_minus_p.pow(self.gamma) * logp_y).mean()


class LabelSmoothing(_Loss):
    """(1/B) Σ_i [(1−α)(−log p_{i,y_i}) + α·(1/K) Σ_c (−log p_{i,c})] (uniform mass includes y_i)."""

    def __init__(self, num_classes: int, alpha: float = 0.05) -> None:
        super().__init__(num_classes)
        self.alpha = alpha

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        logp = F.log_softmax(self._check(logits, y), dim=1)  # (B, K)
        nll = -logp.gather(1, y.long()[:, None])[:, 0]  # (B,)
        uniform = -logp.mean(dim=1)  # (B,)
        return ((1.0 - self.alpha) * nll + self.alpha * uniform).mean()


@LOSSES.register("ce")
def _ce(spec: LossSpec, num_classes: int) -> nn.Module:
    return CrossEntropy(num_classes)


@LOSSES.register("mse")
def _mse(spec: LossSpec, num_classes: int) -> nn.Module:
    return MSE(num_classes, spec.target_scale)


@LOSSES.register("rescaled_mse")
def _rescaled_mse(spec: LossSpec, num_classes: int) -> nn.Module:
    return RescaledMSE(num_classes, spec.M, spec.k)


@LOSSES.register("focal")
def _focal(spec: LossSpec, num_classes: int) -> nn.Module:
    return Focal(num_classes, spec.gamma)


@LOSSES.register("label_smoothing")
def _label_smoothing(spec: LossSpec, num_classes: int) -> nn.Module:
    return LabelSmoothing(num_classes, spec.alpha)


def build_loss(loss_spec: LossSpec, num_classes: int) -> nn.Module:
    """The loss module named by ``loss_spec.name``: callable(logits (B, K), y (B,)) -> scalar."""
    if num_classes < 2:
        raise ValueError(f"build_loss: expected num_classes >= 2, got {num_classes}")
    return LOSSES.build(loss_spec.name, loss_spec, num_classes)


__all__ = ["build_loss", "CrossEntropy", "MSE", "RescaledMSE", "Focal", "LabelSmoothing"]
