"""Losses against hand-written per-sample formulas (nc-spec §1.3)."""
from __future__ import annotations

import math

import pytest
import torch

from nc_core.losses import build_loss
from nc_core.spec import LossSpec

K = 4


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, K, generator=g, dtype=torch.float64)  # (B, K)
    y = torch.tensor([0, 1, 2, 0, 1, 2])  # class 3 absent: one_hot must still give K columns
    return z, y


def _logp(z):
    return [[zc - math.log(sum(math.exp(v) for v in row)) for zc in row] for row in z.tolist()]


def test_ce(batch):
    z, y = batch
    lp = _logp(z)
    want = sum(-lp[i][int(y[i])] for i in range(len(y))) / len(y)
    assert build_loss(LossSpec(name="ce"), K)(z, y).item() == pytest.approx(want, rel=1e-6)


def test_mse_target_scale_mean_over_b_times_k(batch):
    z, y = batch
    s = 15.0
    want = sum((z[i, c].item() - s * (c == int(y[i]))) ** 2 for i in range(6) for c in range(K)) / (6 * K)
    assert build_loss(LossSpec(name="mse", target_scale=s), K)(z, y).item() == pytest.approx(want, rel=1e-6)


def test_rescaled_mse(batch):
    z, y = batch
    M, k = 3.0, 5.0
    want = sum(sum((k if c == int(y[i]) else 1.0) * (z[i, c].item() - M * (c == int(y[i]))) ** 2 for c in range(K)) / K
               for i in range(6)) / 6
    got = build_loss(LossSpec(name="rescaled_mse", M=M, k=k), K)(z, y).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_rescaled_mse_with_unit_parameters_is_mse(batch):
    z, y = batch
    a = build_loss(LossSpec(name="rescaled_mse", M=1.0, k=1.0), K)(z, y)
    b = build_loss(LossSpec(name="mse", target_scale=1.0), K)(z, y)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_focal(batch):
    z, y = batch
    gamma = 3.0
    lp = _logp(z)
    want = sum(-(1 - math.exp(lp[i][int(y[i])])) ** gamma * lp[i][int(y[i])] for i in range(6)) / 6
    assert build_loss(LossSpec(name="focal", gamma=gamma), K)(z, y).item() == pytest.approx(want, rel=1e-6)
    ce = build_loss(LossSpec(name="ce"), K)(z, y).item()
    assert build_loss(LossSpec(name="focal", gamma=0.0), K)(z, y).item() == pytest.approx(ce, rel=1e-6)


def test_label_smoothing_uniform_mass_includes_true_class(batch):
    z, y = batch
    a = 0.1
    lp = _logp(z)
    want = sum((1 - a) * -lp[i][int(y[i])] + a * sum(-v for v in lp[i]) / K for i in range(6)) / 6
    got = build_loss(LossSpec(name="label_smoothing", alpha=a), K)(z, y).item()
    assert got == pytest.approx(want, rel=1e-6)
    ref = torch.nn.functional.cross_entropy(z, y, label_smoothing=a).item()  # same convention as torch
    assert got == pytest.approx(ref, rel=1e-6)


def test_shape_errors_name_expected_and_got(batch):
    z, y = batch
    with pytest.raises(ValueError, match=r"expected logits of shape \(B, 5\), got \(6, 4\)"):
        build_loss(LossSpec(name="mse"), 5)(z, y)
    with pytest.raises(ValueError, match=r"expected labels of shape \(6,\)"):
        build_loss(LossSpec(name="ce"), K)(z, y[:3])


@pytest.mark.parametrize("gamma", [0.0, 1e-6, 0.5, 1.0, 3.0])
def test_focal_gradient_is_finite_where_the_true_class_saturates(gamma):
    # p_y rounds to 1: d(1 − p)^γ/dp is infinite for γ < 1, and times log p = 0 it used to make NaN
    z = torch.tensor([[30.0, 0.0, 0.0], [200.0, 0.0, 0.0], [0.5, 0.2, 0.0]], requires_grad=True)
    y = torch.zeros(3, dtype=torch.long)
    loss = build_loss(LossSpec(name="focal", gamma=gamma), 3)(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all(), z.grad
    zz = z[2:].detach().double().requires_grad_()  # the unsaturated row keeps the formula's gradient
    lpz = torch.log_softmax(zz, 1)[0, 0]
    (-(1 - lpz.exp()) ** gamma * lpz / 3).backward()
    assert torch.allclose(z.grad[2].double(), zz.grad[0], rtol=1e-5, atol=1e-7)
