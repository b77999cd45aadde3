"""evaluate_split and the accumulators as a library user drives them: shuffled two-pass loaders, forwards that
reuse their output buffer, empty batches, NaN logits, extreme classifiers, shallow copies (an audit's findings)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from nc_core.metrics import ClassStats, SampleStats, compute_metrics, evaluate_split, nc_metrics, result_reasons

K, D, N = 5, 8, 1000


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    x = torch.randn(K, D, generator=g)[y] + 0.8 * torch.randn(N, D, generator=g)
    return x, y, torch.randn(K, D, generator=g)


def test_a_second_pass_over_other_samples_leaves_the_per_sample_keys_nan_with_the_reason():
    """A shuffled drop_last loader drops other samples on each pass: the counts matched, the values were wrong."""
    x, y, W = _data()
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=300, shuffle=True, drop_last=True)
    m = evaluate_split(lambda b: (b, b @ W.T), loader, num_classes=K, weight=W, max_resident_bytes=1)
    reasons = result_reasons(m)
    for key in ("ncc_mismatch", "ncc_agreement", "cos_margin_mean", "cos_margin_min", "cos_margin_median"):
        assert math.isnan(m[key]) and "the second pass saw other samples than the first" in reasons[key], key
    assert math.isfinite(m["nc1"]) and "nc1" not in reasons  # the class statistics are the first pass's own


def test_a_second_pass_over_the_same_samples_in_another_order_agrees_with_one_pass():
    x, y, W = _data()
    torch.manual_seed(0)
    shuffled = DataLoader(TensorDataset(x, y), batch_size=96, shuffle=True)  # no drop_last: the same samples
    two = evaluate_split(lambda b: (b, b @ W.T), shuffled, num_classes=K, weight=W, max_resident_bytes=1)
    one = evaluate_split(lambda b: (b, b @ W.T), [(x, y)], num_classes=K, weight=W)
    assert result_reasons(two) == {} == result_reasons(one)
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_sample_stats_fed_another_split_of_the_same_size_says_so():
    x, y, W = _data()
    stats = ClassStats(K, D).update(x, y)
    other = SampleStats(stats, W).update(x + 0.1 * torch.randn(N, D), y)
    m = compute_metrics(stats, W, per_sample=other)
    assert math.isnan(m["cos_margin_mean"]) and "class(es) [0, 1, 2, 3, 4]" in m.reasons["cos_margin_mean"]
    same = SampleStats(stats, W).update(x.flip(0), y.flip(0))  # the same rows, reversed
    assert math.isfinite(compute_metrics(stats, W, per_sample=same)["cos_margin_mean"])


def test_a_forward_that_reuses_its_output_buffer_gives_the_same_metrics_on_every_call():
    """The first call in a process kept the forward's own tensors: every kept batch was the last batch."""
    from nc_core.metrics._workspace import release_workspace

    x, y, W = _data()
    buf = torch.empty(100, D)

    def reusing(b):
        torch.mul(b, 1.0, out=buf[:b.shape[0]])
        return buf[:b.shape[0]], b @ W.T

    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, N, 100)]
    truth = nc_metrics(x, y, W)["nc1"]
    release_workspace()  # as in a fresh process: no kept workspace yet
    assert [evaluate_split(reusing, batches, num_classes=K)["nc1"] for _ in range(2)] == pytest.approx([truth] * 2)


def test_an_empty_batch_does_not_make_a_mean_reduced_loss_nan():
    x, y, W = _data()
    fwd = lambda b: (b, b @ W.T)  # noqa: E731
    with_empty = evaluate_split(fwd, [(x[:0], y[:0]), (x, y)], num_classes=K, loss_fn=F.cross_entropy)
    plain = evaluate_split(fwd, [(x, y)], num_classes=K, loss_fn=F.cross_entropy)
    assert with_empty["loss"] == pytest.approx(plain["loss"], rel=1e-12) and math.isfinite(plain["loss"])


def test_nan_logits_make_acc_and_loss_nan_with_the_reason():
    x, y, _ = _data()
    nan = lambda b: (b, torch.full((b.shape[0], K), float("nan")))  # noqa: E731
    m = evaluate_split(nan, [(x, y)], num_classes=K, loss_fn=F.cross_entropy)
    assert math.isnan(m["acc"]) and math.isnan(m["loss"])  # argmax of NaN logits gave 20 % "accuracy"
    assert m.reasons["acc"] == m.reasons["loss"] == ("logits are not finite (a row's maximum is NaN or ±inf): the "
                                                    "model's outputs are not predictions")
    one_inf = lambda b: (b, torch.cat([b[:, :K - 1], torch.where(b[:, :1] > 9, math.inf, 0.0)], 1))  # noqa: E731
    x[7, 0] = 10.0  # one +inf logit in one row
    assert math.isnan(evaluate_split(one_inf, [(x, y)], num_classes=K)["acc"])
    inf_loss = evaluate_split(lambda b: (b, b[:, :K]), [(x, y)], num_classes=K,
                              loss_fn=lambda z, t: torch.full((), float("inf")))
    assert math.isnan(inf_loss["loss"]) and "row maxima are finite" in inf_loss.reasons["loss"]
    assert math.isfinite(inf_loss["acc"])


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_a_classifier_outside_the_float64_range_is_refused_naming_it(scale):
    """1e200 gave NaN W keys with a lost reason and inf wh_b; 1e-200 was called 'zero'."""
    x, y, W = _data()
    with pytest.raises(ValueError, match=r"weight: expected magnitudes within \[1e-150, 1e150\].*max \|w\| = "):
        nc_metrics(x.double(), y, W.double() * scale)
    assert math.isnan(nc_metrics(x, y, torch.zeros(K, D))["nc2_w"])  # an all-zero W still gets its reason


def test_copy_copy_of_class_stats_is_independent_of_the_original():
    x, y, _ = _data()
    stats = ClassStats(K, D).update(x[:100], y[:100])
    before = compute_metrics(stats)["nc1"]
    copied = copy.copy(stats)
    copied.update(x[100:], y[100:])
    assert compute_metrics(stats)["nc1"] == before and stats.num_samples == 100
    assert compute_metrics(copied)["nc1"] == pytest.approx(nc_metrics(x, y)["nc1"], rel=1e-12)


def test_no_wasted_second_pass_without_per_class_scatter_or_weight(monkeypatch):
    """With the per-class scatter over budget and no W, a second pass computed nothing (16 forwards, 8 batches)."""
    import nc_core.metrics.evaluate as ev
    import nc_core.metrics.ncc as ncc
    import nc_core.metrics.stats as st

    for module in (st, ncc, ev):
        monkeypatch.setattr(module, "PER_CLASS_AUTO_BYTES", K * D * D * 8 - 1)  # K·d²·8 over the budget
    x, y, _ = _data()
    calls = []

    def fwd(b):
        calls.append(b.shape[0])
        return b, b[:, :K]

    m = evaluate_split(fwd, [(x[i:i + 125], y[i:i + 125]) for i in range(0, N, 125)], num_classes=K,
                       max_resident_bytes=1)
    assert len(calls) == 8 and math.isnan(m["nuclear_frobenius"])
    assert "per-class scatter not kept" in m.reasons["nuclear_frobenius"] and math.isfinite(m["nc1"])


def test_resident_features_without_weight_keep_their_nuclear_ratios_over_the_per_class_budget(monkeypatch):
    """Review: gating the resident path's class-at-a-time ratios like the second pass lost them (NaN)."""
    import nc_core.metrics.evaluate as ev
    import nc_core.metrics.ncc as ncc
    import nc_core.metrics.resident as res
    import nc_core.metrics.stats as st

    x, y, _ = _data()
    truth = nc_metrics(x, y)["nuclear_frobenius"]
    for module in (st, ncc, ev, res):  # the resident pass proper needs the per-class budget too
        monkeypatch.setattr(module, "PER_CLASS_AUTO_BYTES", K * D * D * 8 - 1)
    m = evaluate_split(lambda b: (b, b[:, :K]), [(x, y)], num_classes=K)
    assert m["nuclear_frobenius"] == pytest.approx(truth, rel=1e-9) and "nuclear_frobenius" not in m.reasons


def test_a_second_pass_differing_by_float32_rounding_keeps_its_per_sample_keys():
    """Review: a GPU forward need not be bitwise repeatable; features off by their own rounding are the same samples."""
    x, y, W = _data()
    calls = []

    def jittery(b):  # every other pass: each feature moved by up to one float32 ulp
        calls.append(1)
        out = b.clone()
        if len(calls) > 2:
            out = torch.nextafter(out, torch.full_like(out, math.inf) * torch.sign(torch.randn_like(out)))
        return out, out @ W.T

    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, N, 100)]
    m = evaluate_split(jittery, batches, num_classes=K, weight=W, max_resident_bytes=1)
    assert result_reasons(m) == {}
    assert m["cos_margin_mean"] == pytest.approx(nc_metrics(x, y, W)["cos_margin_mean"], rel=1e-5)


def test_sample_stats_from_features_and_finalised_ratios_of_other_rows_are_refused():
    """Review: from_features skipped the check, and ratios taken by finalize() were returned before it."""
    x, y, W = _data()
    stats = ClassStats(K, D, per_class=False).update(x, y)
    other = x + 0.1 * torch.randn(N, D)
    m = compute_metrics(stats, W, per_sample=SampleStats.from_features(stats, other, y, W))
    assert math.isnan(m["cos_margin_mean"]) and math.isnan(m["nuclear_frobenius"])
    assert "other samples" in m.reasons["nuclear_frobenius"]
    fed = SampleStats(stats, W).update(other, y).finalize()
    assert "other samples" in compute_metrics(stats, W, per_sample=fed).reasons["nuclear_frobenius"]
    own = compute_metrics(stats, W, per_sample=SampleStats.from_features(stats, x, y, W))
    assert own["nuclear_frobenius"] == pytest.approx(nc_metrics(x, y, W)["nuclear_frobenius"], rel=1e-9)


def test_huge_finite_logits_are_predictions_and_all_minus_inf_rows_are_not():
    x, y, _ = _data()
    onehot = lambda b: (b, F.one_hot(y[:b.shape[0]], K).double() * 1e308)  # noqa: E731 - finite, sums overflow
    assert evaluate_split(onehot, [(x, y)], num_classes=K)["acc"] == 100.0
    dead = lambda b: (b, torch.full((b.shape[0], K), -math.inf))  # noqa: E731
    assert "±inf" in evaluate_split(dead, [(x, y)], num_classes=K).reasons["acc"]
