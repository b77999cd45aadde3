"""Bad input → a ValueError that names the problem (expected vs got)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nc_core.metrics import ClassStats, SampleStats, compute_metrics, evaluate_split, nc_metrics

rng = np.random.default_rng(0)
X = rng.normal(size=(30, 6))
Y = np.arange(30) % 3
W = rng.normal(size=(3, 6))


def test_features_not_2d():
    with pytest.raises(ValueError, match=r"features: expected a 2-D array \(N, d\), got shape \(30, 6, 1\)"):
        nc_metrics(X[..., None], Y)


def test_labels_length_mismatch():
    with pytest.raises(ValueError, match=r"labels: expected shape \(30,\) to match the features, got \(29,\)"):
        nc_metrics(X, Y[:-1])


def test_labels_not_integer():
    with pytest.raises(ValueError, match=r"labels: expected integer class indices, got dtype float64$"):
        nc_metrics(X, Y.astype(float))


def test_labels_strings():
    with pytest.raises(ValueError, match=r"labels: expected integer class indices, got dtype <U3$"):
        nc_metrics(X, Y.astype("U3"))
    with pytest.raises(ValueError, match=r"labels: expected integer class indices, got dtype <U1 \(list\)$"):
        nc_metrics(X, [str(v) for v in Y], num_classes=3)


def test_dtype_named_as_passed():
    with pytest.raises(ValueError, match=r"labels: expected integer class indices, got dtype float16$"):
        nc_metrics(X, Y.astype(np.float16))
    with pytest.raises(ValueError, match=r"features: expected real numbers, got dtype complex128$"):
        nc_metrics(X.astype(complex), Y)
    with pytest.raises(ValueError, match=r"labels: expected integer class indices, got dtype torch.float16$"):
        nc_metrics(torch.from_numpy(X), torch.from_numpy(Y).half())


def test_label_beyond_weight_rows():
    Y4 = Y.copy()
    Y4[7] = 4
    with pytest.raises(ValueError, match=r"labels: expected class indices in 0..K-1 = 0..2 \(K = 3 rows of weight\), "
                                         r"got max 4"):
        nc_metrics(X, Y4, W)


def test_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels: expected values in 0..K-1 = 0..1, got min 0, max 2"):
        nc_metrics(X, Y, num_classes=2)


def test_negative_labels():
    with pytest.raises(ValueError, match=r"labels: expected values >= 0, got min -1"):
        nc_metrics(X, Y - 1)


def test_nan_features():
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"features: expected finite values, got 1 NaN/inf entries"):
        nc_metrics(Xn, Y)


def test_inf_features_in_stream():
    st = ClassStats(3, 6)
    with pytest.raises(ValueError, match=r"finite values, got 2 NaN/inf"):
        st.update(torch.full((2, 6), float("inf")).index_fill(1, torch.arange(1, 6), 0.0), torch.tensor([0, 1]))


def test_num_classes_below_two():
    with pytest.raises(ValueError, match=r"num_classes: expected an integer K >= 2, got 1"):
        nc_metrics(X, np.zeros(30, dtype=int), num_classes=1)


def test_inferred_single_class():
    with pytest.raises(ValueError, match=r"inferred K = max\(label\) \+ 1 = 1; NC metrics need K >= 2"):
        nc_metrics(X, np.zeros(30, dtype=int))


def test_features_zero_dim():
    with pytest.raises(ValueError, match=r"features: expected feature dimension d >= 1, got shape \(30, 0\)"):
        nc_metrics(np.zeros((30, 0)), Y)


def test_empty_features():
    with pytest.raises(ValueError, match=r"expected at least one sample, got 0 rows"):
        nc_metrics(np.zeros((0, 6)), np.zeros(0, dtype=int), num_classes=3)


def test_weight_shape():
    with pytest.raises(ValueError, match=r"weight: expected shape \(K, d\) = \(3, 6\), got \(6, 3\)"):
        nc_metrics(X, Y, W.T)


def test_bias_shape():
    with pytest.raises(ValueError, match=r"bias: expected shape \(K,\) = \(3,\), got \(4,\)"):
        nc_metrics(X, Y, W, np.zeros(4))


def test_weight_not_finite():
    Wn = W.copy()
    Wn[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"weight: expected finite values"):
        nc_metrics(X, Y, Wn)


def test_stream_dimension_mismatch():
    with pytest.raises(ValueError, match=r"features: expected feature dimension d = 5, got shape \(30, 6\)"):
        ClassStats(3, 5).update(X, Y)


def test_class_stats_bad_construction():
    with pytest.raises(ValueError, match=r"num_classes: expected an integer K >= 2, got 1"):
        ClassStats(1, 4)
    with pytest.raises(ValueError, match=r"dim: expected an integer d >= 1, got 0"):
        ClassStats(3, 0)


def test_merge_mismatch():
    with pytest.raises(ValueError, match=r"merge: expected \(num_classes, dim\) = \(3, 6\), got \(3, 5\)"):
        ClassStats(3, 6).merge(ClassStats(3, 5))


def test_gof_unknown_key():
    with pytest.raises(ValueError, match=r"gof: unknown key\(s\) \['lambda_w'\]"):
        nc_metrics(X, Y, W, gof={"lambda_w": 1e-4})


def test_gof_bad_depth():
    with pytest.raises(ValueError, match=r"gof: depth_linear must be an integer >= 1, got 0"):
        nc_metrics(X, Y, W, gof={"weight_decay": 1e-4, "feature_decay": 1e-4, "depth_linear": 0})


def test_compute_metrics_wants_class_stats():
    with pytest.raises(ValueError, match=r"stats: expected a ClassStats, got ndarray"):
        compute_metrics(X)
    with pytest.raises(ValueError, match=r"stats: expected a ClassStats, got dict"):
        SampleStats({})


def test_evaluate_split_bad_forward():
    batches = [(torch.from_numpy(X), torch.from_numpy(Y))]
    with pytest.raises(ValueError, match=r"forward: expected \(features \(B, d\), logits \(B, K\)\), got Tensor"):
        evaluate_split(lambda x: x, batches, num_classes=3)
    with pytest.raises(ValueError, match=r"forward: expected logits of shape \(B, K\) = \(30, 3\), got \(30, 4\)"):
        evaluate_split(lambda x: (x, torch.zeros(30, 4)), batches, num_classes=3)


def test_evaluate_split_no_batches():
    with pytest.raises(ValueError, match=r"batches: expected at least one non-empty batch, got none"):
        evaluate_split(lambda x: (x, x), [], num_classes=3)


def _split(x: np.ndarray, y: np.ndarray, rows: int = 10) -> list:
    """(features, labels) batches of ``rows`` rows; the forward below passes features through."""
    return [(torch.from_numpy(x[i:i + rows]), torch.from_numpy(y[i:i + rows])) for i in range(0, len(y), rows)]


def _identity_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, x[:, :3]


@pytest.mark.parametrize(("path", "bad"), [("resident", 3), ("regrouped", 3), ("streamed", 2)])
def test_evaluate_split_counts_nonfinite_features_over_the_split(path, bad, monkeypatch):
    # the finiteness test of a resident split waits for the whole split: the count covers every batch;
    # a split that stops being resident at its second batch is tested there, on the batches so far
    import nc_core.metrics.evaluate as evaluate

    if path == "regrouped":
        monkeypatch.setattr(evaluate, "resident_fits", lambda *a: False)
    Xn = X.copy()
    Xn[3, 2], Xn[14, 0], Xn[25, 5] = np.nan, np.inf, -np.inf
    limit = 10 * 6 * 8 + 10 * 8 if path == "streamed" else 2**31  # one batch fits, the second overflows
    with pytest.raises(ValueError, match=rf"features: expected finite values, got {bad} NaN/inf entries"):
        evaluate_split(_identity_forward, _split(Xn, Y), num_classes=3, max_resident_bytes=limit)


@pytest.mark.parametrize("rows", [10, 30])
def test_evaluate_split_label_beyond_k_is_a_labels_error_not_the_losses(rows):
    # cross-entropy raises its own IndexError on a target ≥ K: the labels error is reported instead
    bad = Y.copy()
    bad[17] = 3
    loss = torch.nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"labels: expected values in 0..K-1 = 0..2, got min 0, max 3"):
        evaluate_split(_identity_forward, _split(X, bad, rows), num_classes=3, loss_fn=loss)


def test_evaluate_split_label_the_loss_ignores_is_still_refused():
    # cross-entropy skips target −100 (its ignore_index) without a word: the split's label test catches it
    bad = Y.copy()
    bad[21] = -100
    with pytest.raises(ValueError, match=r"labels: expected values in 0..K-1 = 0..2, got min -100, max 2"):
        evaluate_split(_identity_forward, _split(X, bad), num_classes=3, loss_fn=torch.nn.CrossEntropyLoss())
