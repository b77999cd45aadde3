"""Public API contract: keys, omission rules, NaN + reason behaviour, MetricDict (imports: test_import_rules)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from nc_core.metrics import (METRIC_KEYS, METRIC_VERSION, ClassStats, MetricDict, SampleStats, compute_metrics,
                             nc_metrics, result_reasons)

ROOT = Path(__file__).resolve().parents[1]
GOF = {"weight_decay": 5e-4, "feature_decay": 5e-4, "depth_linear": 1}
W_KEYS = {"nc2_w", "nc2_w_uncentered", "nc2_w_identity", "equinorm_w", "equinorm_diff", "nc3", "nc3_uncentered",
          "nc3_identity", "nc3_w_sub_h", "nc3_w_sub_h_centered", "nc3_uniform_duality", "wh_b", "ncc_mismatch",
          "ncc_agreement", "cos_margin_mean", "cos_margin_min", "cos_margin_median", "cos_margin_mean_logit",
          "etf_dist_w", "etf_dist_wh", "wh_dist", "nc2_w_gof", "nc3_wh_gof", "nc3_w_sub_h_gof"}
GOF_KEYS = {"nc2_w_gof", "nc2_h_gof", "nc3_wh_gof", "nc3_w_sub_h_gof"}


def _data(K=4, d=8, N=200, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(N) % K
    X = rng.normal(size=(K, d))[y] * 3 + rng.normal(size=(N, d))
    return X, y, rng.normal(size=(K, d)), rng.normal(size=K)


def test_version_and_keys_match_docs():
    assert METRIC_VERSION == 4 and f"`METRIC_VERSION = {METRIC_VERSION}`" in (ROOT / "docs" / "metrics.md").read_text()
    assert len(METRIC_KEYS) == len(set(METRIC_KEYS)) == 43
    design = (ROOT / "docs" / "DESIGN.md").read_text()  # the interface page states both too
    assert f"METRIC_VERSION: int = {METRIC_VERSION} " in design and f"all {len(METRIC_KEYS)} keys" in design
    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)`", doc, flags=re.M))
    assert documented == set(METRIC_KEYS)


def test_full_result_has_every_key_but_acc_loss_and_only_floats():
    X, y, W, b = _data()
    r = nc_metrics(X, y, W, b, gof=GOF)
    assert isinstance(r, MetricDict) and isinstance(r, dict)
    assert list(r) == [k for k in METRIC_KEYS if k not in ("acc", "loss")]
    assert all(type(v) is float and math.isfinite(v) for v in r.values())
    assert result_reasons(r) == {}


def test_omission_rules():
    X, y, W, b = _data()
    no_w = nc_metrics(X, y)
    assert not (set(no_w) & (W_KEYS | GOF_KEYS | {"acc", "loss"}))
    assert set(no_w) == set(METRIC_KEYS) - W_KEYS - GOF_KEYS - {"acc", "loss"}
    h_gof = nc_metrics(X, y, gof=GOF)
    assert "nc2_h_gof" in h_gof and "nc2_w_gof" not in h_gof
    no_gof = nc_metrics(X, y, W)
    assert not set(no_gof) & GOF_KEYS
    assert no_gof["wh_b"] == pytest.approx(np.linalg.norm(W @ X.mean(0)))  # missing bias = bias-free (b = 0)


def test_empty_class_gives_nan_with_reason():
    X, y, W, b = _data(K=4)
    W5, b5 = np.vstack([W, W[:1] * 0.5]), np.append(b, 0.0)
    r = nc_metrics(X, y, W5, b5, num_classes=5, gof=GOF)
    reasons = result_reasons(r)
    for key in ("nc1", "nc2_h", "nc3", "cdnv", "ncc_mismatch", "nuclear_frobenius", "etf_dist_h", "nc2_h_gof"):
        assert math.isnan(r[key]) and "class(es) [4] have no sample" in reasons[key], key
    for key in ("nc2_w", "equinorm_w", "etf_dist_w", "trace_sw", "cos_margin_mean", "nc2_w_gof"):
        assert math.isfinite(r[key]), key


def test_gof_without_lambdas_is_nan_with_reason():
    X, y, W, b = _data()
    r = nc_metrics(X, y, W, gof={"weight_decay": 5e-4})
    assert all(math.isnan(r[k]) for k in GOF_KEYS)
    assert "missing: ['feature_decay', 'depth_linear']" in result_reasons(r)["nc2_w_gof"]
    r0 = nc_metrics(X, y, W, gof={"weight_decay": 0.0, "feature_decay": 5e-4, "depth_linear": 1})
    assert "λ_W > 0" in result_reasons(r0)["nc3_wh_gof"]


def test_gof_class_counts_override():
    X, y, W, b = _data()
    a = nc_metrics(X, y, W, gof=GOF)
    c = nc_metrics(X, y, W, gof={**GOF, "class_counts": [500, 100, 50, 20]})
    assert a["nc2_w_gof"] != c["nc2_w_gof"]
    assert nc_metrics(X, y, W, gof={**GOF, "class_counts": [50] * 4})["nc2_w_gof"] == pytest.approx(a["nc2_w_gof"])


def test_d_below_k_minus_one_reasons():
    rng = np.random.default_rng(0)
    y = np.arange(80) % 8
    X = rng.normal(size=(8, 3))[y] + 0.1 * rng.normal(size=(80, 3))
    r = nc_metrics(X, y, rng.normal(size=(8, 3)))
    reasons = result_reasons(r)
    assert "K-1 < d" in reasons["nc1_svd"]
    assert "needs d >= K-1" in reasons["etf_dist_w"] and "needs d >= K-1" in reasons["etf_dist_wh"]
    assert math.isfinite(r["nc1"]) and math.isfinite(r["wh_dist"])


def test_compute_metrics_without_second_pass():
    X, y, W, b = _data()
    pooled = ClassStats(4, 8, per_class=False).update(X, y)
    r = compute_metrics(pooled, W, b)
    reasons = result_reasons(r)
    assert "per-class scatter" in reasons["nuclear_frobenius"]
    assert "SampleStats" in reasons["ncc_mismatch"] and "SampleStats" in reasons["cos_margin_min"]
    assert math.isfinite(r["nc1"]) and math.isfinite(r["nc3"])
    full = compute_metrics(pooled, W, b, per_sample=SampleStats(pooled, W, b).update(X, y))
    assert result_reasons(full) == {}
    assert full == nc_metrics(X, y, W, b) or all(
        full[k] == pytest.approx(v, rel=1e-12) for k, v in nc_metrics(X, y, W, b).items())


def test_sample_stats_from_another_split_is_flagged():
    X, y, W, b = _data()
    st = ClassStats(4, 8).update(X, y)
    r = compute_metrics(st, W, b, per_sample=SampleStats(st, W, b).update(X[:50], y[:50]))
    assert "not the same split" in result_reasons(r)["cos_margin_mean"]


def test_result_reasons_on_plain_dict():
    assert result_reasons({"nc1": float("nan"), "nc2_w": 0.1}) == {
        "nc1": "NaN (the reason was lost: result copied into a plain dict)"}


def test_zero_between_class_scatter_is_nan_not_error():
    X = np.ones((20, 5))
    y = np.arange(20) % 2
    r = nc_metrics(X, y)
    assert math.isnan(r["nc1"]) and "all class means coincide" in result_reasons(r)["nc1"]
