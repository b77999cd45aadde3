"""Pieces shared by the convolutional backbones."""
from __future__ import annotations

from torch import nn


def init_conv_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) initialisation of every Conv2d in ``module`` (torchvision's choice)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
