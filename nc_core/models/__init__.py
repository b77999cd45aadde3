"""build_model(spec, input_shape, num_classes) -> NCModel: backbone + optional τ-normalisation + head."""
from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from nc_core.heads import Head, build_head
from nc_core.models.mlp import build_mlp
from nc_core.models.resnet import build_resnet
from nc_core.models.vgg import CFGS, build_vgg
from nc_core.registry import MODELS
from nc_core.spec import RunSpec
from nc_core.spec_rules import feature_dim

MODELS.register("mlp")(partial(build_mlp, "mlp"))
for _name in ("resnet18", "resnet34", "resnet50", "wide_resnet50"):
    MODELS.register(_name)(partial(build_resnet, _name))
for _name in CFGS:
    MODELS.register(_name)(partial(build_vgg, _name))


class NCModel(nn.Module):
    """forward(x, y=None) -> (features (B, d), logits (B, K)); features are what NC metrics see.

    features = backbone output h, or τ·h/‖h‖ when model.temperature τ is set. ``y`` is passed to the
    head (the implicit-ETF head needs it in training mode; the others ignore it).
    """

    def __init__(self, backbone: nn.Module, head: Head, temperature: float | None = None) -> None:
        super().__init__()
        self.backbone, self.head, self.temperature = backbone, head, temperature
        self.feature_dim, self.num_classes = head.dim, head.num_classes

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.backbone(x)  # (B, d)
        if self.temperature is not None:
            h = self.temperature * F.normalize(h, dim=1)  # (B, d)
        return h, self.head(h, y)  # (B, d), (B, K)


def build_model(spec: RunSpec, input_shape: tuple[int, ...], num_classes: int) -> NCModel:
    """Backbone ``spec.model.name`` with d = feature_dim(spec) and head ``spec.head.name``."""
    d = feature_dim(spec)
    backbone = MODELS.build(spec.model.name, spec.model, tuple(input_shape), d)
    if backbone.out_dim != d:
        raise RuntimeError(f"{spec.model.name}: expected a backbone with {d} output features, built {backbone.out_dim}")
    return NCModel(backbone, build_head(spec.head, d, num_classes), spec.model.temperature)


__all__ = ["NCModel", "build_model"]
