"""Learning-rate schedules stepped once per epoch: constant, step, multistep (epochs or fractions), cosine."""
from __future__ import annotations

import math

import torch

from nc_core.spec import RunSpec
from nc_core.spec_rules import milestone_epoch


def milestone_epochs(spec: RunSpec) -> list[int]:
    """Multistep milestones as epochs: values < 1 are fractions of training (⌊f·E⌋, nc_loss style); each on an
    epoch of its own (two on one epoch, which MultiStepLR would decay twice, are refused by the spec)."""
    return sorted({m for m in (milestone_epoch(f, spec.epochs) for f in spec.schedule.milestones) if m >= 1})


def lr_factor(spec: RunSpec, epoch: int) -> float:
    """LR multiplier for training epoch ``epoch + 1`` after ``epoch`` completed epochs (0-based count)."""
    s = spec.schedule
    if s.name == "constant":
        return 1.0
    if s.name == "step":
        return s.gamma ** (epoch // s.step_size)
    if s.name == "multistep":
        return s.gamma ** sum(1 for m in milestone_epochs(spec) if epoch >= m)
    if s.name == "cosine":  # CosineAnnealingLR(T_max=E, eta_min=0) in closed form
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, spec.epochs) / spec.epochs))
    raise ValueError(f"schedule.name: expected constant, step, multistep or cosine, got {s.name!r}")


def build_scheduler(spec: RunSpec, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over ``lr_factor``; call ``.step()`` once at the end of every epoch.

    The multiplier is a plain function, so ``state_dict()`` holds only counters (last_epoch, base_lrs).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e, _spec=spec: lr_factor(_spec, e))
