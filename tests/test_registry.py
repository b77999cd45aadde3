"""Registry behaviour, names matching the spec's Literals, and every registered entry builds and trains a step."""
from __future__ import annotations

import pytest
import torch

from nc_core import spec as S
from nc_core.registry import DATASETS, HEADS, LOSSES, MODELS, Registry


def test_register_build_names_and_unknown_error():
    reg = Registry("loss")

    @reg.register("b")
    def _b(x):
        return x + 1

    reg.register("a")(lambda: "a")
    assert reg.names() == ["a", "b"]
    assert reg.build("b", 1) == 2 and "a" in reg and "zz" not in reg
    with pytest.raises(ValueError, match=r"^unknown loss 'foo'; valid: a, b$"):
        reg.build("foo")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: "other")


def test_real_registry_error_lists_valid_losses():
    with pytest.raises(ValueError) as err:
        LOSSES.build("foo", None, 10)
    assert str(err.value) == "unknown loss 'foo'; valid: ce, focal, label_smoothing, mse, rescaled_mse"


@pytest.mark.parametrize("reg, names", [(DATASETS, S.DATASETS), (MODELS, S.MODELS), (HEADS, S.HEADS),
                                        (LOSSES, S.LOSSES)])
def test_registry_names_match_spec_literals(reg, names):
    assert reg.names() == sorted(names)


def _tiny(model: str, head: str = "learned", loss: str = "ce") -> S.RunSpec:
    width = {"mlp": 16, "wide_resnet50": 0.0625}.get(model, 0.0625)
    fd = 12 if model in ("resnet50", "wide_resnet50") else None
    return S.RunSpec(data={"name": "digits"}, model={"name": model, "width": width, "depth": 2, "feature_dim": fd},
                     head={"name": head}, loss={"name": loss})


@pytest.mark.parametrize("model", S.MODELS)
@pytest.mark.parametrize("head", S.HEADS)
def test_every_model_and_head_builds_and_steps(model, head):
    from nc_core.models import build_model

    torch.manual_seed(0)
    spec = _tiny(model, head)
    net = build_model(spec, (1, 8, 8), 10)
    x, y = torch.randn(12, 1, 8, 8), torch.arange(12) % 10
    feats, logits = net(x, y)
    assert feats.shape == (12, net.feature_dim) and logits.shape == (12, 10)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in net.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("loss", S.LOSSES)
def test_every_loss_builds_and_backprops(loss):
    from nc_core.losses import build_loss

    fn = build_loss(S.LossSpec(name=loss), 5)
    z = torch.randn(7, 5, requires_grad=True)
    value = fn(z, torch.arange(7) % 5)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", ["digits", "gaussian"])
def test_bundled_datasets_build(name):
    from nc_core.data import load_data

    bundle = load_data(S.RunSpec(data={"name": name}), "cpu")
    assert bundle.train_x.dtype == torch.float32 and bundle.num_classes == 10
