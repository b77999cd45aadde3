"""VGG-11/13/16/19 backbones with BatchNorm, channel width multiplier and feature dimension d."""
from __future__ import annotations

from torch import Tensor, nn

from nc_core.models.layers import init_conv_weights
from nc_core.spec_rules import scaled_channels

CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """Conv3×3-BN-ReLU stacks with 2×2 max pools (skipped once the map is 1×1), global average pool.

    The last conv outputs ``feature_dim`` channels (natural: 512·width).
    """

    def __init__(self, cfg: list, input_shape: tuple[int, ...], *, width: float = 1.0, batch_norm: bool = True,
                 feature_dim: int | None = None) -> None:
        super().__init__()
        cin, size = input_shape[0], min(input_shape[1:])
        n_conv = sum(1 for v in cfg if v != "M")
        layers: list[nn.Module] = []
        seen = 0
        for v in cfg:
            if v == "M":
                if size >= 2:  # tiny inputs (8×8 digits) keep their last pixels
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            seen += 1
            cout = feature_dim if (seen == n_conv and feature_dim) else scaled_channels(v, width)
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm),
                       nn.BatchNorm2d(cout) if batch_norm else nn.Identity(), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)  # (B, d)


def build_vgg(name: str, spec, input_shape: tuple[int, ...], dim: int) -> VGG:
    """VGG ``name`` for (C, H, W) inputs with d = ``dim`` output features."""
    if len(input_shape) != 3:
        raise ValueError(f"{name}: expected image inputs (C, H, W), got input_shape {tuple(input_shape)}")
    return VGG(CFGS[name], tuple(input_shape), width=spec.width, batch_norm=spec.batch_norm, feature_dim=dim)
