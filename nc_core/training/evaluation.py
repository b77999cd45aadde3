"""Evaluating a training run after an epoch: NC metrics, accuracy and loss per split from one un-augmented pass."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nc_core.spec import RunSpec
from nc_core.training.optim import gof_lambdas
from nc_core.training.report import TrainingDiverged, divergence_remedy
from nc_core.training.runtime import autocast

if TYPE_CHECKING:
    from nc_core.train import _Run

EVAL_BATCH = 1024  # evaluation batch size (no gradients; BN in eval mode, so the value is batch-independent)


def model_forward(r: _Run, xb: torch.Tensor, yb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's model on a batch: (features, logits); ``yb`` goes to a model whose forward takes y."""
    return r.model(xb, yb) if r.takes_y else r.model(xb)  # (B, d), (B, K)


def gof_params(spec: RunSpec, train_y: torch.Tensor, num_classes: int) -> dict | None:
    """GOF hyper-parameters (nc-spec §2.7) for the runs :func:`gof_lambdas` matches to a UFM objective
    (bias-free separate-decay MSE on a learned head; a fixed or implicit ETF head's W is not decayed by
    λ_W), with that objective's λ's, else None. The class counts are the training split's (``train_y``
    (N,)) for every split: the GOF targets are those of the trained model."""
    lambdas = gof_lambdas(spec, train_y.shape[0], num_classes)
    if lambdas is None:
        return None
    return {"weight_decay": lambdas[0], "feature_decay": lambdas[1], "depth_linear": spec.head.depth_linear,
            "class_counts": torch.bincount(train_y, minlength=num_classes).tolist()}


@torch.no_grad()
def evaluate(r: _Run, splits: list[str], epoch: int) -> dict[str, dict[str, float]]:
    """NC metrics + acc/loss per split from one un-augmented pass, with the head's effective W and b, after
    ``epoch``; non-finite features → TrainingDiverged (the loss may stay finite while they blow up)."""
    from nc_core.metrics import NonFiniteValues, evaluate_split

    r.model.eval()
    head = r.model.head
    weight = head.effective_weight(torch.float64).detach()  # (K, d) a deep-linear product unrounded
    bias = head.effective_bias()
    bias = None if bias is None else bias.detach().double()  # (K,)

    def forward(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(r.spec, r.device):
            feats, logits = model_forward(r, xb, None)
        return feats.float(), logits.float()  # (B, d), (B, K)

    out = {}
    for split in splits:
        try:
            batches = SplitBatches(r.x[split], r.y[split], max(EVAL_BATCH, r.spec.batch_size))
            out[split] = evaluate_split(forward, batches,
                                        num_classes=r.data.num_classes, loss_fn=r.loss_fn, weight=weight, bias=bias,
                                        gof=r.gof)
        except NonFiniteValues as exc:
            raise TrainingDiverged(epoch, -1, evaluated=f"the {split} split's features have {exc.count} NaN/inf "
                                                       "entries at evaluation (the training loss was finite)",
                                   remedy=divergence_remedy(r.spec)) from exc
    return out


class SplitBatches:
    """Re-iterable un-augmented batches of one split in a fixed order (evaluate_split may take two passes)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self):
        from nc_core.data import batches

        return batches(self.x, self.y, self.batch_size, shuffle=False, generator=None, augment="none")
