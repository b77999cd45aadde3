"""Metric edge cases from an audit: samples near μ_G, a classifier row at the mean row, deep-linear products
in float64, features too large or small for float64 squares, K taken from the classifier."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nc_core.metrics as metrics
from nc_core.heads import HEADS
from nc_core.metrics import ClassStats, SampleStats, compute_metrics, evaluate_split, nc_metrics
from nc_core.spec import HeadSpec, RunSpec
from nc_core.train import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
W2 = np.array([[-1.0, 0.0], [1.0, 0.0]])


def _near_global_mean(eps: float, scale: float = 1.0, offset=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of three samples; one sample of each class lies eps from μ_G (on opposite sides)."""
    X = np.array([[-1, 1], [-1, -1], [eps, eps], [1, 1], [1, -1], [-eps, -eps]], float) * scale + np.array(offset)
    return X, np.array([0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("eps", [1e-6, 1e-8, 1e-9, 1e-12])
def test_a_sample_next_to_the_global_mean_keeps_its_exact_cosine_margin(eps):  # noqa: ANN001
    X, y = _near_global_mean(eps)
    # the sample (eps, eps) of class 0: h − μ_G points along (1, 1), so c_0 = −1/√2, c_1 = 1/√2: margin −√2
    resident = nc_metrics(X, y, W2, None, num_classes=2)
    stats = ClassStats(2, 2, per_class=False).update(X, y)
    streaming = compute_metrics(stats, W2, None, per_sample=SampleStats(stats, W2).update(X, y))
    rel = max(1e-12, 1e-14 / eps)  # μ_G itself is rounded: ~1e-16 off zero, so h − μ_G's direction ~1e-16/eps
    for m in (resident, streaming):  # the resident path rebuilt ‖h − μ_G‖ from h − μ_k: −1.414229 at 1e-6, 0 at 1e-12
        assert m["cos_margin_min"] == pytest.approx(-math.sqrt(2), rel=rel)
        assert m["cos_margin_mean"] == pytest.approx(math.sqrt(2) / 3, rel=rel)
        assert m["cos_margin_mean_logit"] == pytest.approx(math.sqrt(2) / 3, rel=rel)


def test_the_training_entry_point_keeps_margins_in_range_near_the_global_mean():
    X, y = _near_global_mean(1e-8, scale=0.37, offset=(0.3, -0.7))
    feats, W = torch.tensor(X), torch.tensor(W2)
    m = evaluate_split(lambda x: (x, x @ W.T), [(feats, torch.tensor(y))], num_classes=2, weight=W)
    assert m["cos_margin_min"] == pytest.approx(-math.sqrt(2), rel=1e-6)  # was −2.81: below any cosine difference


@pytest.mark.parametrize("seed", range(5))
def test_a_classifier_row_at_the_mean_row_has_cosine_zero_in_both_margins(seed):  # noqa: ANN001
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], [30, 20, 25])
    X = rng.normal(size=(75, 4)) + 3 * np.eye(4)[y]
    a, c = rng.normal(size=4), rng.normal(size=4)  # inexact: w̄ comes out ~1e-17 from w_1 in float64
    W = np.stack([a + c, c, -a + c])  # w̄ = c = w_1: w_1 − w̄ = 0, but w_1·h ≠ 0
    m = nc_metrics(X, y, W, None, num_classes=3)
    Wc, Xc = W - W.mean(0), X - X.mean(0)
    norms = np.linalg.norm(Wc, axis=1)
    flat = norms <= 1e-12 * np.linalg.norm(W, axis=1).max()  # the reference's rows at the mean, by its own rounding
    assert flat.tolist() == [False, True, False]
    for numerator, key in ((Wc @ Xc.T, "cos_margin_mean"), (W @ X.T, "cos_margin_mean_logit")):
        cos = np.where(flat[:, None], 0.0, numerator / np.where(flat, 1, norms)[:, None])
        cos = cos / np.linalg.norm(Xc, axis=1)  # (K, N)
        true = cos[y, np.arange(75)]
        cos[y, np.arange(75)] = -np.inf
        assert m[key] == pytest.approx(float(np.mean(true - cos.max(0))), rel=1e-9, abs=1e-12)
    assert abs(m["cos_margin_mean_logit"]) < 2  # was −1.1e299 (exact w̄), −6e15 (w̄ rounded)


def test_a_deep_linear_head_gives_the_metrics_its_product_in_float64(tmp_path, monkeypatch):
    head = HEADS.build("learned", HeadSpec(depth_linear=3, bias=False), 8, 4)
    w1, w2, w3 = (layer.weight.detach().double() for layer in head.layers)
    assert torch.equal(head.effective_weight(torch.float64).detach(), w3 @ (w2 @ w1))
    seen: list[torch.dtype] = []
    real = metrics.evaluate_split

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs["weight"].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "evaluate_split", spy)
    spec = RunSpec.model_validate({"seed": 0, "epochs": 1, "batch_size": 64, "device": "cpu",
                                   "data": {"name": "digits"}, "model": {"name": "mlp", "width": 16, "depth": 2},
                                   "head": {"bias": False, "depth_linear": 3}, "loss": {"name": "mse"}})
    fit(spec, workdir=tmp_path)
    assert seen and set(seen) == {torch.float64}


def test_the_ufm_product_is_formed_in_float64():
    from nc_core.ufm import UFM

    model = UFM([5, 4, 3], 6, 3, False, torch.Generator().manual_seed(0))
    exact = model.Ws[2].detach().double() @ (model.Ws[1].detach().double() @ model.Ws[0].detach().double())
    assert torch.equal(model.weight(torch.float64).detach(), exact)


@pytest.mark.parametrize("scale", [1e77, 1e-77])
def test_scale_free_metrics_do_not_change_with_a_scale_whose_squares_would_overflow(scale):  # noqa: ANN001
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2, 3], [30, 20, 25, 40])
    X = rng.normal(size=(115, 6)) + 2 * np.eye(6)[y]
    plain, scaled = nc_metrics(X, y, num_classes=4), nc_metrics(X * scale, y, num_classes=4)
    for key in ("nc1", "nc2_h", "nc2_h_unweighted", "nc2_h_identity", "equinorm_h", "etf_dist_h"):
        assert scaled[key] == pytest.approx(plain[key], rel=1e-9), key  # nc2_h was 1.0 at 1e77, NaN at 1e-77


@pytest.mark.filterwarnings("error::RuntimeWarning")  # refused with one message, no numpy overflow warning first
@pytest.mark.parametrize("scale", [1e155, 1e-160])
def test_features_beyond_float64_squares_are_refused_naming_the_range(scale):  # noqa: ANN001
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 20)
    X = (rng.normal(size=(60, 5)) + 2 * np.eye(5)[y]) * scale
    with pytest.raises(ValueError, match=r"features: expected magnitudes within \[1e-150, 1e150\]"):
        nc_metrics(X, y, num_classes=3)  # 1e155 was a LinAlgError traceback


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_two_entries_at_the_float64_limit_are_refused_not_scored():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2, 3], [30, 20, 25, 40])
    X = rng.normal(size=(115, 6))
    X[3, 2] = X[4, 2] = 1e308  # finite, but their sum overflows
    with pytest.raises(ValueError, match="sums of squares that overflow float64"):
        nc_metrics(X, y, rng.normal(size=(4, 6)), num_classes=4)  # was ncc_agreement 1.0, margins 0


def test_k_comes_from_the_classifier_when_the_last_class_has_no_sample():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 10)
    m = nc_metrics(rng.normal(size=(20, 4)), y, rng.normal(size=(3, 4)))  # was "weight: expected shape (2, 4)"
    assert math.isnan(m["nc1"]) and "class(es) [2]" in m.reasons["nc1"]
