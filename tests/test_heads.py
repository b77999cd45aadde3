"""Heads: fixed simplex ETF stays fixed, implicit ETF = independent polar closed form + gradcheck, deep-linear product."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nc_core.heads import FixedETFHead, ImplicitETFHead, LearnedHead, build_head, implicit_etf_solve
from nc_core.spec import HeadSpec


def _etf_gram(k: int) -> torch.Tensor:
    return k / (k - 1) * (torch.eye(k) - 1.0 / k)  # (K, K)


@pytest.mark.parametrize("d", [3, 4, 9])
def test_fixed_etf_is_simplex_and_never_changes(d):
    k = 4
    torch.manual_seed(0)
    head = build_head(HeadSpec(name="fixed_etf"), d, k)
    assert isinstance(head, FixedETFHead)
    w0 = head.effective_weight().clone()
    assert torch.allclose(w0 @ w0.T, _etf_gram(k), atol=1e-6)
    assert "weight" in dict(head.named_buffers()) and not head.weight.requires_grad
    backbone = torch.nn.Linear(5, d)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        x, y = torch.randn(8, 5), torch.randint(0, k, (8,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(backbone(x)), y).backward()
        opt.step()
    assert torch.equal(head.effective_weight(), w0)
    assert head.bias is not None and head.bias.abs().sum() > 0  # the bias does train
    assert build_head(HeadSpec(name="fixed_etf", bias=False), d, k).effective_bias() is None


def test_deep_linear_effective_weight_is_product():
    torch.manual_seed(0)
    head = build_head(HeadSpec(name="learned", depth_linear=3, hidden=7), 5, 4)
    assert isinstance(head, LearnedHead)
    w1, w2, w3 = (layer.weight for layer in head.layers)  # (7, 5), (7, 7), (4, 7)
    assert w1.shape == (7, 5) and w3.shape == (4, 7)
    assert head.layers[0].bias is None and head.layers[1].bias is None
    assert torch.allclose(head.effective_weight(), w3 @ w2 @ w1)
    h = torch.randn(6, 5)
    assert torch.allclose(head(h), h @ head.effective_weight().T + head.effective_bias(), atol=1e-6)
    assert [p.shape for p in head.decayed_parameters()] == [(7, 5), (7, 7), (4, 7)]


def _polar_np(a: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(a, full_matrices=False)
    return u @ vt


def test_implicit_etf_forward_matches_independent_closed_form():
    d, k, delta = 6, 4, 1e-3
    torch.manual_seed(1)
    head = build_head(HeadSpec(name="implicit_etf", delta=delta), d, k)
    assert isinstance(head, ImplicitETFHead)
    m = np.eye(k) - 1.0 / k
    ema = np.zeros((d, k))
    prox = None
    for t in range(4):
        h = torch.randn(12, d, dtype=torch.float64)
        y = torch.tensor([0, 1, 2, 3] * 3) if t != 2 else torch.tensor([0, 1, 2] * 4)  # class 3 absent at t=2
        logits = head(h.float(), y)
        hn, yn = h.numpy(), y.numpy()
        fbar = hn.mean(0)
        alpha = max(2.0 / (t + 2), 1e-4)
        for c in range(k):
            if (yn == c).any():
                ema[:, c] = alpha * (hn[yn == c].mean(0) - fbar) + (1 - alpha) * ema[:, c]
        y_norm = ema / np.linalg.norm(ema)
        a = y_norm @ m if prox is None else 2 / math.sqrt(k - 1) * y_norm @ m + delta * prox
        x = _polar_np(a)
        np.testing.assert_allclose(head.prox.numpy() @ m, x @ m, atol=1e-5)
        # polar(Y M) is unique only up to X·1 (M1 = 0; W ignores it): carry the head's choice on
        prox = head.prox.double().numpy() if t == 0 else x
        w = math.sqrt(k / (k - 1)) * m @ x.T  # (K, d)
        want = hn @ w.T - w @ fbar
        np.testing.assert_allclose(logits.detach().numpy(), want, atol=2e-5)
        np.testing.assert_allclose(head.ema.numpy(), ema, atol=1e-5)
        assert torch.allclose(head.effective_weight() @ head.effective_weight().T, _etf_gram(k), atol=1e-5)
    assert int(head.steps) == 4


def test_implicit_etf_gradcheck_float64():
    d, k = 6, 4
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, d, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    f_prev = torch.randn(d, k, dtype=torch.float64, generator=g)
    prox = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64, generator=g))[0]

    def logits(h, t, p):
        w, fbar, _, _ = implicit_etf_solve(h, y, f_prev, t, p, num_classes=k, delta=1e-3)
        return h @ w.T - w @ fbar  # (B, K)

    assert torch.autograd.gradcheck(lambda h: logits(h, 5, prox), (h,))
    assert torch.autograd.gradcheck(lambda h: logits(h, 0, None), (h,))  # first call: polar(Y M), σ_K = 0


def test_implicit_etf_gradient_finite_at_exact_etf():
    """Collapsed features make Y M an exact scaled ETF (all σ equal): the SVD backward would blow up."""
    d, k = 6, 4
    centres = torch.eye(d, k, dtype=torch.float64) - 1.0 / k  # (d, K), columns sum to ~0 in the first K rows
    y = torch.arange(8) % k
    h = centres.T[y].clone().requires_grad_(True)  # (B, d) = class centres exactly
    w, fbar, _, _ = implicit_etf_solve(h, y, torch.zeros(d, k, dtype=torch.float64), 0, None, num_classes=k, delta=1e-3)
    (h @ w.T).square().sum().backward()
    assert torch.isfinite(h.grad).all()


def test_implicit_etf_eval_uses_stored_state_and_resumes():
    d, k = 5, 3
    torch.manual_seed(0)
    spec = HeadSpec(name="implicit_etf")
    head = build_head(spec, d, k)
    for _ in range(3):
        head(torch.randn(9, d), torch.arange(9) % k)
    head.eval()
    h = torch.randn(4, d)
    want = h @ head.weight.T + head.bias
    assert torch.allclose(head(h), want) and torch.allclose(head(h[:1]), want[:1])  # batch-independent
    assert torch.allclose(head.bias, -head.weight @ head.fbar_run)
    clone = build_head(spec, d, k)
    clone.load_state_dict(head.state_dict())
    head.train(), clone.train()
    hb, yb = torch.randn(9, d), torch.arange(9) % k
    assert torch.allclose(head(hb, yb), clone(hb, yb)) and int(clone.steps) == 4
    with pytest.raises(ValueError, match="needs the labels"):
        head(hb)
    assert head.decayed_parameters() == [] and list(head.parameters()) == []


def test_implicit_etf_without_bias_has_no_offset():
    head = build_head(HeadSpec(name="implicit_etf", bias=False), 5, 3)
    h, y = torch.randn(6, 5), torch.arange(6) % 3
    logits = head(h, y)
    assert torch.allclose(logits, h @ head.weight.T, atol=1e-6) and head.effective_bias() is None


def test_implicit_etf_first_batch_missing_classes_has_bounded_gradient():
    """Unseen classes leave zero columns in F, so Y M loses rank: the gradient must stay bounded."""
    torch.manual_seed(0)
    head = build_head(HeadSpec(name="implicit_etf"), 16, 6)
    h = torch.randn(12, 16, requires_grad=True)
    logits = head(h, torch.arange(12) % 4)  # classes 4 and 5 absent
    (logits * torch.randn_like(logits)).sum().backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().max() < 1e3
    assert torch.equal(head.ema[:, 4:], torch.zeros(16, 2))  # never-seen classes keep their (zero) column
