"""Optimizers (sgd, adam, adamw, lbfgs), weight-decay parameter groups and the separate-decay penalty.

Weight decay conventions (nc-spec §1.3):

* joint decay (``optim.sep_decay = False``): ``optim.weight_decay`` is the optimizer's decay on every
  trainable parameter (BN and biases included, as in every seed). For LBFGS, which has no decay
  argument, the same ½·λ·Σ‖p‖² is added inside the closure (tding1/MSE).
* separate decay (``optim.sep_decay = True``, Fsoft's working version, not tding1's no-op):
  λ_W = ``optim.weight_decay`` only on ``head.decayed_parameters()`` (the head's linear weights,
  biases not decayed), no decay on the backbone, and a feature term
  ``λ_H/2 · Σ_{i in batch} ‖h_i‖²`` (λ_H = ``optim.feature_decay``) on the **un-normalised**
  features h (the backbone output before any temperature normalisation), **summed** over the batch
  while the data loss is a batch mean. This is not the UFM objective of nc-spec §5.1 with the same
  λ's: the MSE data term is a mean over B·K, not (1/2N)Σ, and each sample's feature term acts once per
  epoch. :func:`gof_lambdas` gives the λ's of the UFM objective it equals, which the GOF targets take.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from nc_core.registry import OPTIMIZERS
from nc_core.spec import RunSpec


_FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fused_kwargs(params) -> dict:  # noqa: ANN001 - tensors or param-group dicts
    """``{"fused": True}`` when every parameter can take torch's fused (single-kernel) SGD/Adam/AdamW step,
    else ``{}`` (the default implementation). On the CPU the fused step takes ~10 % off an MLP's training
    step (bench/train_bench.py), on CUDA it replaces ~a dozen kernel launches per parameter by one."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    ok = bool(tensors) and all(p.device.type in _FUSED_DEVICES and p.dtype in _FUSED_DTYPES and not p.is_sparse
                               for p in tensors)
    return {"fused": True} if ok else {}


@OPTIMIZERS.register("sgd")
def _sgd(params, o) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, **fused_kwargs(params))


@OPTIMIZERS.register("adam")
def _adam(params, o) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.Adam(params, lr=o.lr, betas=(0.9, 0.999), eps=1e-8, **fused_kwargs(params))


@OPTIMIZERS.register("adamw")
def _adamw(params, o) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.AdamW(params, lr=o.lr, betas=(0.9, 0.999), eps=1e-8, **fused_kwargs(params))


@OPTIMIZERS.register("lbfgs")
def _lbfgs(params, o) -> torch.optim.Optimizer:
    # tding1/MSE: torch defaults max_iter 20, max_eval 25, strong Wolfe line search; decay in the closure
    params = [p for g in params for p in g["params"]]
    return torch.optim.LBFGS(params, lr=o.lr, history_size=o.history_size, line_search_fn="strong_wolfe")


def head_decayed(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters the separate decay λ_W applies to (the head's linear weights)."""
    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "decayed_parameters"):
        return []
    return [p for p in head.decayed_parameters() if p.requires_grad]


def param_groups(spec: RunSpec, model: nn.Module) -> list[dict]:
    """Parameter groups with their optimizer weight decay (zero for LBFGS: decay is in the closure)."""
    o = spec.optim
    trainable = [p for p in model.parameters() if p.requires_grad]
    wd = 0.0 if o.name == "lbfgs" else o.weight_decay
    if not o.sep_decay:
        return [{"params": trainable, "weight_decay": wd}]
    decayed = head_decayed(model)
    ids = {id(p) for p in decayed}
    rest = [p for p in trainable if id(p) not in ids]
    groups = [{"params": rest, "weight_decay": 0.0}]
    if decayed:
        groups.append({"params": decayed, "weight_decay": wd})
    return groups


def build_optimizer(spec: RunSpec, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``spec.optim.name`` with the decay groups above."""
    return OPTIMIZERS.build(spec.optim.name, param_groups(spec, model), spec.optim)


def gof_lambdas(spec: RunSpec, num_train: int, num_classes: int) -> tuple[float, float] | None:
    """(λ_W', λ_H') of the §5.1 UFM objective whose minimisers the run's training objective shares, for
    the GOF targets (nc-spec §2.7), or None where no UFM objective matches (the targets do not apply).

    With S = ⌈N/B⌉ steps an epoch, one epoch's mean per-step objective of a separate-decay MSE run
    (target scale s, L linear head layers, no bias) is
        (1/(NK))‖Z − sY‖² + (λ_W/2)Σ_l‖W_l‖² + (λ_H/(2S))‖H‖²  =  (2/K)·UFM(λ_W K/2, λ_H K/(2S); target s)
    (exact when B divides N), and W_l = t·W_l', H = t·H' with t^{L+1} = s turn the UFM with target s
    into s² times the one with one-hot targets and λ'' = λ'·s^{2/(L+1) − 2}; the normalised GOF metrics
    do not see t. So λ_W' = (K/2)·λ_W·c, λ_H' = (K/(2S))·λ_H·c, c = s^{2/(L+1) − 2}. (Fsoft scores its
    networks, trained on MSE/2 over B·K, against the raw λ's: its targets are off by the factor K.)
    None for other losses, AdamW's decoupled decay (not a penalty) and a temperature head input
    (features on a sphere, not the free H of the UFM)."""
    o, head = spec.optim, spec.head
    if (not o.sep_decay or head.bias or head.name != "learned" or spec.loss.name != "mse" or o.name == "adamw"
            or spec.model.temperature is not None):
        return None
    s, L = spec.loss.target_scale, head.depth_linear
    c = s ** (2.0 / (L + 1) - 2.0)
    steps = math.ceil(num_train / min(spec.batch_size, num_train))
    return num_classes / 2 * o.weight_decay * c, num_classes / (2 * steps) * o.feature_decay * c


def l2(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ‖p‖² over the given tensors (a 0-dim tensor)."""
    total = None
    for p in params:
        s = p.float().pow(2).sum()
        total = s if total is None else total + s
    return total if total is not None else torch.zeros(())  # ()


def feature_penalty(spec: RunSpec, raw_features: torch.Tensor) -> torch.Tensor | float:
    """λ_H/2 · Σ_i ‖h_i‖² over the batch (un-normalised features, (B, d)); 0 without sep_decay."""
    if not spec.optim.sep_decay or spec.optim.feature_decay == 0:
        return 0.0
    return 0.5 * spec.optim.feature_decay * raw_features.float().pow(2).sum()


def closure_weight_decay(spec: RunSpec, model: nn.Module) -> torch.Tensor | float:
    """½·λ·Σ‖p‖² added inside the LBFGS closure (joint: all trainable; separate: head weights)."""
    o = spec.optim
    if o.name != "lbfgs" or o.weight_decay == 0:
        return 0.0
    params = head_decayed(model) if o.sep_decay else [p for p in model.parameters() if p.requires_grad]
    return 0.5 * o.weight_decay * l2(params) if params else 0.0
