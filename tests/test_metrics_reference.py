"""Every metric key against the independent float64 numpy/scipy reference (tests/metrics_reference.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from metrics_reference import reference_metrics
from nc_core.etf import simplex_etf
from nc_core.metrics import METRIC_KEYS, nc_metrics, result_reasons

GOF = {"weight_decay": 5e-4, "feature_decay": 5e-4, "depth_linear": 3}


def _blobs(rng, counts, d, scale=3.0, noise=1.0, offset=0.0):
    K = len(counts)
    mus = rng.normal(size=(K, d)) * scale + offset
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    rng.shuffle(y)
    X = mus[y] + noise * rng.normal(size=(len(y), d))
    return X, y


def _case(name):
    rng = np.random.default_rng(CASES.index(name) + 1)
    if name == "balanced":
        K, d = 5, 16
        X, y = _blobs(rng, [40] * K, d)
    elif name == "imbalanced":
        K, d = 4, 12
        X, y = _blobs(rng, [50, 20, 10, 5], d, offset=2.0)
    elif name == "collapsed":
        K, d = 6, 10
        E = simplex_etf(K, d, unit_columns=True).numpy().T * 5.0  # (K, d)
        y = np.repeat(np.arange(K), 30)
        X = E[y] + 1e-4 * rng.normal(size=(len(y), d)) + 0.5
    elif name == "d_lt_k":
        K, d = 8, 4
        X, y = _blobs(rng, [15] * K, d)
    else:  # d = K - 1
        K, d = 6, 5
        X, y = _blobs(rng, [12, 20, 9, 30, 14, 11], d)
    mus = np.stack([X[y == k].mean(0) for k in range(K)])
    W = (mus - mus.mean(0)) + 0.3 * rng.normal(size=(K, d))
    b = rng.normal(size=K)
    return X, y, K, W, b


CASES = ["balanced", "imbalanced", "collapsed", "d_lt_k", "d_eq_k1"]
# Relative 1e-9, or absolute 1e-12 for values that are a difference of O(1) numbers near collapse
# (vci = 1 − Tr(Σ_T⁺Σ_B)/(K−1) ≈ 2e-9 in the nearly collapsed set: cancellation, in any implementation).


@pytest.fixture(scope="module", params=CASES)
def case(request):
    X, y, K, W, b = _case(request.param)
    ours = nc_metrics(X, y, W, b, num_classes=K, gof=GOF)
    ref = reference_metrics(X, y, K, W, b, gof=GOF)
    return request.param, ours, ref


@pytest.mark.parametrize("key", [k for k in METRIC_KEYS if k not in ("acc", "loss")])
def test_key_matches_reference(case, key):
    name, ours, ref = case
    assert key in ours, f"{key} missing for {name}"
    want, got = ref[key], ours[key]
    if math.isnan(want):
        assert math.isnan(got), f"{name} {key}: expected NaN, got {got}"
        assert key in result_reasons(ours)
        return
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12), f"{name} {key}: {got} vs {want}"


def test_reference_covers_every_key():
    X, y, K, W, b = _case("balanced")
    ref = reference_metrics(X, y, K, W, b, gof=GOF)
    assert set(ref) == set(METRIC_KEYS) - {"acc", "loss"}
