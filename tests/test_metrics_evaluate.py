"""evaluate_split with a tiny linear model: resident and two-pass paths agree; acc and loss are right."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nc_core.metrics import evaluate_split, nc_metrics, result_reasons

K, D_IN, D = 4, 6, 8


def _setup(seed=0, N=300, bs=32):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    centers = torch.randn(K, D_IN, generator=g, dtype=torch.float64) * 2
    x = centers[y] + torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    body = torch.nn.Linear(D_IN, D).double()
    head = torch.nn.Linear(D, K).double()
    torch.nn.init.normal_(body.weight, generator=g)
    torch.nn.init.normal_(head.weight, generator=g)

    def forward(inp):
        assert torch.is_inference_mode_enabled()
        h = torch.tanh(body(inp))
        return h, head(h)

    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, N, bs)]
    return forward, batches, x, y, head


def _same(a, b, rel=1e-12):
    assert set(a) == set(b)
    for k in a:
        if math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:  # nuclear ratios: √eig of a Gram accumulated in other batch sizes (rounding ~eps·λ_max/σ)
            tol = 1e-9 if k in ("nuclear_frobenius", "numerical_rank") else rel
            assert b[k] == pytest.approx(a[k], rel=tol, abs=1e-14), k


def test_resident_and_two_pass_agree_and_match_nc_metrics():
    forward, batches, x, y, head = _setup()
    kw = dict(num_classes=K, weight=head.weight, bias=head.bias, loss_fn=F.cross_entropy,
              gof={"weight_decay": 1e-3, "feature_decay": 1e-3, "depth_linear": 1})
    resident = evaluate_split(forward, batches, **kw)
    two_pass = evaluate_split(forward, batches, max_resident_bytes=0, **kw)
    spill = evaluate_split(forward, batches, max_resident_bytes=3 * 32 * D * 8, **kw)  # spills mid-way
    _same(resident, two_pass)
    _same(resident, spill)
    with torch.inference_mode():
        h, logits = forward(x)
    assert resident["acc"] == pytest.approx(100.0 * float((logits.argmax(1) == y).double().mean()), rel=1e-12)
    assert resident["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-12)
    ref = nc_metrics(h, y, head.weight.detach(), head.bias.detach(), num_classes=K,
                     gof={"weight_decay": 1e-3, "feature_decay": 1e-3, "depth_linear": 1})
    _same({k: resident[k] for k in ref}, ref)
    assert result_reasons(resident) == {}


def test_per_sample_loss_and_no_loss():
    forward, batches, x, y, head = _setup()
    mean_loss = evaluate_split(forward, batches, num_classes=K, loss_fn=F.cross_entropy)
    per_sample = evaluate_split(forward, batches, num_classes=K,
                                loss_fn=lambda z, t: F.cross_entropy(z, t, reduction="none"))
    assert per_sample["loss"] == pytest.approx(mean_loss["loss"], rel=1e-12)
    assert "loss" not in evaluate_split(forward, batches, num_classes=K)


def test_one_shot_iterator_over_budget_reports_reason():
    forward, batches, x, y, head = _setup()
    r = evaluate_split(forward, iter(batches), num_classes=K, weight=head.weight, max_resident_bytes=0)
    assert math.isnan(r["cos_margin_mean"])
    assert "one-shot iterator" in result_reasons(r)["cos_margin_mean"]
    assert math.isfinite(r["nc1"]) and math.isfinite(r["acc"])
    ok = evaluate_split(forward, iter(batches), num_classes=K, weight=head.weight)  # fits: resident
    assert math.isfinite(ok["cos_margin_mean"])


def test_without_weight_no_second_pass_needed():
    forward, batches, x, y, head = _setup()
    calls = []

    def counting(inp):
        calls.append(1)
        return forward(inp)

    r = evaluate_split(counting, batches, num_classes=K, max_resident_bytes=0)
    assert len(calls) == len(batches)  # per-class scatter makes the nuclear ratios one-pass
    assert "nc2_w" not in r and math.isfinite(r["nuclear_frobenius"])


@pytest.mark.parametrize("N", [300, 2500])
def test_cos_margin_distribution_is_the_quantiles_of_the_reference_margins(N):
    import numpy as np

    from tests.metrics_reference import reference_metrics

    forward, batches, x, y, head = _setup(N=N)
    r = evaluate_split(forward, batches, num_classes=K, weight=head.weight, bias=head.bias)
    with torch.inference_mode():
        h, _ = forward(x)
    X, Y, W = h.numpy(), y.numpy(), head.weight.detach().numpy()
    muG, Wc = X.mean(0), W - W.mean(0)
    Hc = X - muG  # (N, d)
    C = (Hc @ Wc.T) / (np.linalg.norm(Hc, axis=1)[:, None] * np.linalg.norm(Wc, axis=1)[None, :])  # (N, K)
    true = C[np.arange(N), Y]
    C[np.arange(N), Y] = -np.inf
    margins = true - C.max(1)  # (N,) independent of nc_core
    ref = reference_metrics(X, Y, K, W, head.bias.detach().numpy())
    assert float(np.mean(margins)) == pytest.approx(ref["cos_margin_mean"], rel=1e-12)
    dist = r.distributions["cos_margin"]
    assert len(dist) == min(N, 1001) and dist == sorted(dist)
    want = np.quantile(margins, np.linspace(0.0, 1.0, min(N, 1001)))
    np.testing.assert_allclose(dist, want, rtol=1e-12, atol=1e-14)
    if N <= 1001:
        np.testing.assert_allclose(dist, np.sort(margins), rtol=1e-12, atol=1e-14)
    assert dist[0] == pytest.approx(r["cos_margin_min"], rel=1e-12)
    assert dist[-1] == pytest.approx(float(margins.max()), rel=1e-12)
    assert float(np.quantile(dist, 0.5)) == pytest.approx(r["cos_margin_median"], rel=1e-12, abs=1e-14)
    assert dist == nc_metrics(h, y, head.weight.detach(), num_classes=K).distributions["cos_margin"]
    assert evaluate_split(forward, batches, num_classes=K).distributions == {}  # no W: no margins
    spilled = evaluate_split(forward, iter(batches), num_classes=K, weight=head.weight, max_resident_bytes=0)
    assert spilled.distributions == {}  # per-sample pass impossible: cos_margin_* are NaN with a reason


@pytest.mark.parametrize("path", ["resident", "two_pass", "nc_metrics"])
def test_exactly_tied_logits_go_to_the_first_class_as_argmax(path):
    # w_0·h = w_1·h exactly for half the samples (h_0 = h_1): rebuilt from centred products, the two logits
    # would differ by rounding and the NCC agreement would count a random winner
    g = torch.Generator().manual_seed(0)
    K, n = 3, 600
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64) * 0.37  # (K, 2)
    b = torch.tensor([0.25, 0.25, -0.1], dtype=torch.float64)  # equal on the tied classes: ties with the bias too
    y = torch.randint(0, K, (n,), generator=g)
    h = torch.randn(n, 2, generator=g) + torch.tensor([3.1, -1.7])  # (n, 2) float32
    tied = torch.rand(n, generator=g) < 0.5
    h[tied, 1] = h[tied, 0]
    logits = h.double() @ W.T  # (n, K): ties exact, argmax takes the first
    means = torch.stack([h[y == k].double().mean(0) for k in range(K)])  # (K, 2)
    ncc = torch.cdist(h.double(), means).argmin(1)  # (n,)
    agree = (ncc == logits.argmax(1)).double().mean().item()
    mismatch = 100.0 * (ncc != (logits + b).argmax(1)).double().mean().item()
    if path == "nc_metrics":
        out = nc_metrics(h, y, W, b)
    else:
        batches = [(h[i:i + 100], y[i:i + 100]) for i in range(0, n, 100)]
        out = evaluate_split(lambda x: (x, x.double() @ W.T), batches, num_classes=K, weight=W, bias=b,
                             max_resident_bytes=2**30 if path == "resident" else 1)
    assert out["ncc_agreement"] == pytest.approx(agree, abs=0) and out["ncc_mismatch"] == pytest.approx(mismatch)
