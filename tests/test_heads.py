"""Heads: fixed simplex ETF stays fixed, implicit ETF = independent polar closed form + gradcheck, deep-linear product."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nc_core.etf import polar
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
    clone = build_head(spec, d, k)
    clone.load_state_dict(head.state_dict())
    head.train(), clone.train()
    hb, yb = torch.randn(9, d), torch.arange(9) % k
    assert torch.allclose(head(hb, yb), clone(hb, yb)) and int(clone.steps) == 4
    with pytest.raises(ValueError, match="needs the labels"):
        head(hb)
    assert head.decayed_parameters() == [] and list(head.parameters()) == []


def test_implicit_etf_eval_bias_is_minus_w_times_the_last_batch_mean():
    # nc-spec §4: b = −W f̄_batch of the training step, stored and reused at evaluation — not a running mean
    # over the run, which lags features that drift (here the batch means move by 3 each step)
    d, k = 5, 3
    torch.manual_seed(0)
    head = build_head(HeadSpec(name="implicit_etf"), d, k)
    for step in range(4):
        hb, yb = torch.randn(9, d) + 3.0 * step, torch.arange(9) % k
        train_logits = head(hb, yb)
    assert torch.allclose(head.bias, -head.weight @ hb.mean(0), atol=1e-5)
    head.eval()
    assert torch.allclose(head(hb), train_logits, atol=1e-4)  # eval = the last step's logits on its own batch


def test_implicit_etf_loads_a_state_dict_with_the_old_running_mean():
    d, k = 5, 3
    torch.manual_seed(0)
    head = build_head(HeadSpec(name="implicit_etf"), d, k)
    head(torch.randn(9, d), torch.arange(9) % k)
    old = {**head.state_dict(), "fbar_run": torch.ones(d)}  # a checkpoint written before the change
    clone = build_head(HeadSpec(name="implicit_etf"), d, k)
    clone.load_state_dict(old)  # strict: fbar_run is dropped, not "unexpected"
    assert "fbar_run" in old and "fbar_run" not in clone.state_dict()
    assert torch.equal(clone.bias, head.bias) and int(clone.steps) == 1
    wrapped = torch.nn.Sequential(build_head(HeadSpec(name="implicit_etf"), d, k))
    wrapped.load_state_dict({f"0.{key}": v for key, v in old.items()})  # under a prefix, as in NCModel.head


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


def _two_steps(h0: torch.Tensor, y0: torch.Tensor, h1: torch.Tensor, y1: torch.Tensor, k: int, delta: float = 1e-3):
    """(X₀ (d, K), W₁ (K, d)): the first solve's X (the next Prox) and W after step 1."""
    _, _, f0, x0 = implicit_etf_solve(h0, y0, torch.zeros(h0.shape[1], k, dtype=h0.dtype), 0, None,
                                      num_classes=k, delta=delta)
    w1, _, _, _ = implicit_etf_solve(h1, y1, f0, 1, x0, num_classes=k, delta=delta)
    return x0, w1


@pytest.mark.parametrize("present", [10, 8], ids=["all_classes", "two_missing"])
def test_implicit_etf_first_solve_is_deterministic_under_rounding_noise(present):
    """Y M has σ_K = 0 (M1 = 0), and more zeros when classes are missing: X₀'s completion on those
    directions must not be LAPACK's noise-chosen null vectors, or W after step 1 moves by O(δ)."""
    k, d, b = 10, 64, 100
    g = torch.Generator().manual_seed(7)
    h0 = torch.randn(b, d, dtype=torch.float64, generator=g) + 3.0  # (B, d) with a common offset
    h1 = torch.randn(b, d, dtype=torch.float64, generator=g)  # (B, d)
    noise = 1e-9 * torch.randn(b, d, dtype=torch.float64, generator=g)  # (B, d)
    y0, y1 = torch.arange(b) % present, torch.arange(b) % k
    x0, w1 = _two_steps(h0, y0, h1, y1, k)
    x0_noisy, w1_noisy = _two_steps(h0 + noise, y0, h1, y1, k)
    assert (x0 - x0_noisy).abs().max() < 1e-6  # O(1e-9)·modest, not O(1)
    assert (w1 - w1_noisy).abs().max() < 1e-6  # not O(δ) = 1e-3


def _first_solve_np(ym: np.ndarray) -> np.ndarray:
    """Independent closed form of the first solve: X = U_r V_rᵀ + polar((I − U_rU_rᵀ) Γ N) on its range,
    Γ = eye(d, K), N the projector onto null(Y M) (within 1⊥ when d = K−1), r = #{σ > √eps·σ_1}."""
    d, k = ym.shape
    u, s, vt = np.linalg.svd(ym, full_matrices=False)
    r = int((s > math.sqrt(np.finfo(float).eps) * s[0]).sum())
    null = np.eye(k) - vt[:r].T @ vt[:r] - (np.ones((k, k)) / k if d < k else 0.0)  # (K, K)
    guided = (np.eye(d) - u[:, :r] @ u[:, :r].T) @ np.eye(d, k) @ null  # (d, K)
    gu, _, gvt = np.linalg.svd(guided, full_matrices=False)
    fill = min(d, k) - r
    return u[:, :r] @ vt[:r] + gu[:, :fill] @ gvt[:fill]  # (d, K)


@pytest.mark.parametrize("d,k,present", [(64, 10, 10), (64, 10, 8), (10, 10, 7), (9, 10, 10), (9, 10, 8)])
def test_implicit_etf_first_solve_is_an_exact_guided_maximiser(d, k, present):
    """X₀ ∈ St(d, K) (d = K−1: X Xᵀ = I, X1 = 0) attains ⟨X₀, Y M⟩ = ‖Y M‖_* and its non-unique part
    is the guided completion, not the SVD's."""
    g = torch.Generator().manual_seed(d + present)
    h = torch.randn(5 * k, d, dtype=torch.float64, generator=g)  # (B, d)
    y = torch.arange(5 * k) % present
    w, _, f, x = implicit_etf_solve(h, y, torch.zeros(d, k, dtype=torch.float64), 0, None, num_classes=k, delta=1e-3)
    ym = f / f.norm() @ (torch.eye(k, dtype=torch.float64) - 1.0 / k)  # (d, K)
    gram = x.T @ x if d >= k else x @ x.T  # (min(d, K), min(d, K))
    assert torch.allclose(gram, torch.eye(min(d, k), dtype=torch.float64), atol=1e-12, rtol=0)
    assert abs(float((x * ym).sum() - torch.linalg.matrix_norm(ym, ord="nuc"))) < 1e-12
    if d < k:
        assert x.sum(dim=1).abs().max() < 1e-12
    np.testing.assert_allclose(x.numpy(), _first_solve_np(ym.numpy()), atol=1e-10)
    assert torch.allclose(w @ w.T, k / (k - 1) * (torch.eye(k, dtype=torch.float64) - 1.0 / k), atol=1e-12)


@pytest.mark.parametrize("d,k", [(64, 10), (6, 4), (4, 4), (3, 4)])
def test_implicit_etf_first_solve_gradient_equals_polar_of_ym(d, k):
    """With all classes present the completion is invisible to W: the first step's gradient w.r.t. h
    is that of W = √(K/(K−1)) M polar(Y M)ᵀ."""
    g = torch.Generator().manual_seed(d)
    h = torch.randn(5 * k, d, dtype=torch.float64, generator=g, requires_grad=True)  # (B, d)
    y = torch.arange(5 * k) % k
    probe = torch.randn(5 * k, k, dtype=torch.float64, generator=g)  # (B, K)
    m = torch.eye(k, dtype=torch.float64) - 1.0 / k  # (K, K)
    w, fbar, f, _ = implicit_etf_solve(h, y, torch.zeros(d, k, dtype=torch.float64), 0, None, num_classes=k, delta=1e-3)
    w_ref = math.sqrt(k / (k - 1)) * m @ polar(f / f.norm() @ m).T  # (K, d)
    grads = [torch.autograd.grad(((h @ v.T - v @ fbar) * probe).sum(), h, retain_graph=True)[0] for v in (w, w_ref)]
    assert torch.allclose(w, w_ref, atol=1e-12)
    assert torch.allclose(grads[0], grads[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("present", [4, 3])
def test_implicit_etf_resume_after_first_step_matches_uninterrupted(present):
    d, k = 8, 4
    torch.manual_seed(3)
    spec = HeadSpec(name="implicit_etf")
    head = build_head(spec, d, k)
    batches = [(torch.randn(12, d), torch.arange(12) % (present if i == 0 else k)) for i in range(4)]
    head(*batches[0])
    clone = build_head(spec, d, k)
    clone.load_state_dict(head.state_dict())
    for hb, yb in batches[1:]:
        assert torch.equal(head(hb, yb), clone(hb, yb))
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), clone.state_dict().values()))


class _NoHostRead(torch.Tensor):
    """A buffer whose value may not be read on the host (int() would synchronise a CUDA device every step)."""

    def __int__(self) -> int:
        raise AssertionError("the step counter was read on the host")


def test_implicit_etf_steps_do_not_read_the_step_counter_from_the_device():
    d, k = 6, 3
    head = build_head(HeadSpec(name="implicit_etf"), d, k)
    head.steps = head.steps.as_subclass(_NoHostRead)
    for _ in range(3):
        head(torch.randn(9, d), torch.arange(9) % k)
    assert torch.equal(head.steps.as_subclass(torch.Tensor), torch.tensor(3))


def test_heads_refused_a_separate_head_decay_are_those_without_decayed_weights():
    # spec_rules refuses optim.weight_decay > 0 with sep_decay exactly where λ_W would act on nothing
    from nc_core.registry import HEADS
    from nc_core.spec_rules import UNDECAYED_HEADS

    for name in HEADS.names():
        head = build_head(HeadSpec(name=name, bias=True), 6, 4)
        assert (head.decayed_parameters() == []) == (name in UNDECAYED_HEADS), name
