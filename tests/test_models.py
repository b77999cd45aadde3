"""Backbones on tiny inputs: shapes, feature dimension d, temperature, stems, channels_last, parameter savings."""
from __future__ import annotations

import pytest
import torch

from nc_core.models import NCModel, build_model
from nc_core.spec import MODELS, RunSpec


def _spec(model: str, **kw) -> RunSpec:
    data = kw.pop("data", "cifar10")
    head = kw.pop("head", {})
    m = {"name": model, "width": 16 if model == "mlp" else 0.0625, "depth": 2}
    m.update(kw)
    return RunSpec(data={"name": data}, model=m, head=head)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 8, 8)])
def test_every_backbone_tiny_forward_backward(name, shape):
    torch.manual_seed(0)
    big = name in ("resnet50", "wide_resnet50")  # natural d = 2048 for WRN: keep the test fast
    spec = _spec(name, data="cifar10" if shape[0] == 3 else "digits", feature_dim=16 if big else None)
    net = build_model(spec, shape, 10)
    assert isinstance(net, NCModel) and isinstance(net.backbone, torch.nn.Module)
    feats, logits = net(torch.randn(4, *shape))
    assert feats.shape == (4, net.feature_dim) and logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["mlp", "resnet18", "resnet50", "wide_resnet50", "vgg11"])
def test_feature_dim_sets_backbone_output(name):
    net = build_model(_spec(name, feature_dim=10), (3, 16, 16), 10)
    feats, _ = net(torch.randn(2, 3, 16, 16))
    assert feats.shape == (2, 10) and net.backbone.out_dim == 10


def test_natural_dims_follow_spec_rules():
    assert build_model(_spec("resnet18", width=0.125), (3, 8, 8), 10).feature_dim == 64
    assert build_model(_spec("resnet50", width=0.125), (3, 8, 8), 10).feature_dim == 256
    assert build_model(_spec("wide_resnet50", width=0.0625), (3, 8, 8), 10).feature_dim == 2048
    assert build_model(_spec("vgg13", width=0.125), (3, 8, 8), 10).feature_dim == 64
    assert build_model(_spec("mlp", width=24), (3, 8, 8), 10).feature_dim == 24


def test_resnet18_feature_dim_k_saves_over_20_percent():
    """CIFAR ResNet18 (width 1), K = 10: d = 512 -> 11,173,962 parameters, d = 10 -> 8,859,862 (−20.7%).

    tding1/MSE claim: a fixed ETF head with d = K "reduces memory cost by over 20% on ResNet18".
    """
    full = _params(build_model(_spec("resnet18", width=1), (3, 32, 32), 10))
    small = _params(build_model(_spec("resnet18", width=1, feature_dim=10), (3, 32, 32), 10))
    assert (full, small) == (11_173_962, 8_859_862), f"d=512: {full}, d=10: {small}"
    assert small <= 0.8 * full, f"d=10 should save >= 20%: d=512 {full}, d=10 {small} ({1 - small / full:.1%})"


def test_temperature_normalises_features():
    net = build_model(_spec("mlp", temperature=5.0), (1, 8, 8), 10)
    feats, _ = net(torch.randn(6, 1, 8, 8))
    assert torch.allclose(feats.norm(dim=1), torch.full((6,), 5.0), atol=1e-5)


def test_imagenet_stem_downsamples_and_works():
    cifar = build_model(_spec("resnet18", stem="cifar"), (3, 32, 32), 10).backbone
    imnet = build_model(_spec("resnet18", stem="imagenet"), (3, 32, 32), 10).backbone
    x = torch.randn(2, 3, 32, 32)
    assert cifar.stem(x).shape[-1] == 32 and imnet.stem(x).shape[-1] == 8  # 7×7 s2 + max pool s2
    assert imnet(x).shape == cifar(x).shape == (2, 32)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11", "mlp"])
def test_channels_last_input_matches_contiguous(name):
    torch.manual_seed(0)
    net = build_model(_spec(name), (3, 16, 16), 10).eval()
    x = torch.randn(3, 3, 16, 16)
    a = net(x)[0]
    b = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))[0]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "mlp"])
def test_only_conv_nets_go_channels_last_and_only_on_cuda(name):
    # fit() stores a CUDA run's images NHWC for cuDNN; an MLP would only pay a copy per batch for it
    from nc_core.training.runtime import wants_channels_last

    net, images = build_model(_spec(name), (3, 16, 16), 10), torch.zeros(2, 3, 16, 16)
    assert wants_channels_last(torch.device("cuda"), net, images) is (name != "mlp")
    assert not wants_channels_last(torch.device("cpu"), net, images)
    assert not wants_channels_last(torch.device("cuda"), net, images.flatten(1))  # (N, D) features


def test_batch_norm_off_has_no_batchnorm():
    for name in ("mlp", "resnet18", "vgg11"):
        net = build_model(_spec(name, batch_norm=False), (3, 8, 8), 10)
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_implicit_head_gets_labels_through_model():
    net = build_model(_spec("mlp", data="digits", head={"name": "implicit_etf"}), (1, 8, 8), 10)
    x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    feats, logits = net(x, y)
    logits.sum().backward()
    assert net.backbone.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "wide_resnet50", "vgg11", "vgg19", "mlp"])
@pytest.mark.parametrize("width", [0.1, 0.3])
def test_default_feature_dim_is_what_the_network_produces(name, width):
    # the default d must be the backbone's own output: ResNet-50 at width 0.3 makes 4·round(512·0.3) = 616
    # channels, and a d of round(2048·0.3) = 614 would add an unrequested 1×1-conv projection to the last block
    from nc_core.models.resnet import _ARCH, ResNet
    from nc_core.models.vgg import CFGS, VGG

    spec = _spec(name, width=64 if name == "mlp" else width)
    net = build_model(spec, (3, 8, 8), 10)
    if name in _ARCH:
        block, layers = _ARCH[name]
        wide = name == "wide_resnet50"
        natural = ResNet(block, layers, 3, width=1.0 if wide else width, inner_factor=width if wide else None)
        assert isinstance(net.backbone.stages[-1][-1].shortcut, torch.nn.Identity)  # no projection block
    elif name in CFGS:
        natural = VGG(CFGS[name], (3, 8, 8), width=width)
    else:
        natural = net.backbone
    assert net.feature_dim == net.backbone.out_dim == natural.out_dim
    if name == "resnet50" and width == 0.3:
        assert net.feature_dim == 616
