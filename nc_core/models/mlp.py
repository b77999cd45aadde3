"""MLP backbone: depth × [Linear → BatchNorm1d → ReLU], the last block of width d."""
from __future__ import annotations

import math

from torch import Tensor, nn


class MLP(nn.Module):
    """Flattens the input; ``depth`` blocks of ``width`` units, the last of ``feature_dim`` units."""

    def __init__(self, in_features: int, width: int, depth: int, *, batch_norm: bool = True,
                 feature_dim: int | None = None) -> None:
        super().__init__()
        widths = [width] * (depth - 1) + [feature_dim or width]
        layers: list[nn.Module] = []
        cin = in_features
        for w in widths:
            layers += [nn.Linear(cin, w), nn.BatchNorm1d(w) if batch_norm else nn.Identity(), nn.ReLU(inplace=True)]
            cin = w
        self.net = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))  # (B, d)


def build_mlp(name: str, spec, input_shape: tuple[int, ...], dim: int) -> MLP:
    """MLP for inputs of any shape (flattened) with d = ``dim`` output features."""
    return MLP(math.prod(input_shape), int(spec.width), spec.depth, batch_norm=spec.batch_norm, feature_dim=dim)
