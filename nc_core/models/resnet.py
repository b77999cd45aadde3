"""ResNet-18/34/50 and WideResNet-50 backbones (CIFAR or ImageNet stem, width, feature dimension d)."""
from __future__ import annotations

from torch import Tensor, nn

from nc_core.models.layers import init_conv_weights
from nc_core.spec_rules import scaled_channels


def _norm2d(batch_norm: bool):
    return nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())


def _shortcut(cin: int, cout: int, stride: int, norm) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout))  # 1×1 conv + BN


class BasicBlock(nn.Module):
    """3×3 → 3×3 residual block; ``out`` ≠ planes gives the tding1 ``fixdim`` last block (d channels)."""

    def __init__(self, cin: int, planes: int, stride: int, norm, out: int | None = None, inner: int | None = None) -> None:
        super().__init__()
        out = out or planes
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, out, 3, padding=1, bias=False)
        self.bn2 = norm(out)
        self.shortcut = _shortcut(cin, out, stride, norm)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = out

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 (inner) → 3×3 (inner, stride) → 1×1 (out = 4·planes, or d) residual block (torchvision v1.5)."""

    def __init__(self, cin: int, planes: int, stride: int, norm, out: int | None = None, inner: int | None = None) -> None:
        super().__init__()
        out = out or 4 * planes
        inner = inner or planes
        self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
        self.bn1 = norm(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(inner)
        self.conv3 = nn.Conv2d(inner, out, 1, bias=False)
        self.bn3 = norm(out)
        self.shortcut = _shortcut(cin, out, stride, norm)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = out

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, four stages, global average pool -> features (B, d).

    ``width`` multiplies the stage widths 64·w … 512·w; ``inner_factor`` (WRN) sets the bottleneck
    inner planes to int(planes·factor) with the stage outputs unchanged; ``feature_dim`` ≠ the
    natural width makes the last block output d channels (1×1-conv + BN shortcut, as tding1).
    """

    def __init__(self, block, layers: list[int], in_channels: int, *, width: float = 1.0,
                 inner_factor: float | None = None, stem: str = "cifar", batch_norm: bool = True,
                 feature_dim: int | None = None) -> None:
        super().__init__()
        norm = _norm2d(batch_norm)
        planes = [scaled_channels(base, width) for base in (64, 128, 256, 512)]  # as spec_rules.feature_dim
        c0 = planes[0]
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1, bias=False), norm(c0), nn.ReLU(inplace=True))
        elif stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 7, stride=2, padding=3, bias=False), norm(c0),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        else:
            raise ValueError(f"resnet: unknown stem {stem!r}; valid: cifar, imagenet")
        cin, stages = c0, []
        for s, (p, n) in enumerate(zip(planes, layers)):
            blocks = []
            for i in range(n):
                last = s == 3 and i == n - 1
                inner = max(1, int(p * inner_factor)) if inner_factor is not None else None
                blk = block(cin, p, 2 if (i == 0 and s > 0) else 1, norm,
                            out=feature_dim if last else None, inner=inner)
                blocks.append(blk)
                cin = blk.out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))  # (B, C, H', W')
        return self.pool(x).flatten(1)  # (B, d)


_ARCH = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3]), "wide_resnet50": (Bottleneck, [3, 4, 6, 3])}


def build_resnet(name: str, spec, input_shape: tuple[int, ...], dim: int) -> ResNet:
    """ResNet ``name`` for (C, H, W) inputs with d = ``dim`` output features."""
    if len(input_shape) != 3:
        raise ValueError(f"{name}: expected image inputs (C, H, W), got input_shape {tuple(input_shape)}")
    block, layers = _ARCH[name]
    wide = name == "wide_resnet50"
    return ResNet(block, layers, input_shape[0], width=1.0 if wide else spec.width,
                  inner_factor=spec.width if wide else None, stem=spec.stem,
                  batch_norm=spec.batch_norm, feature_dim=dim)
