"""Shared helpers for nc_core.metrics: input conversion and validation, NaN reasons, small linear algebra."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

F64 = torch.float64
EPS64 = float(torch.finfo(F64).eps)


class MetricUndefined(Exception):
    """Raised by a metric that is undefined for its input; the suite turns it into NaN + ``reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class MetricDict(dict):
    """A plain ``dict[str, float]`` plus ``reasons``: key → why that value is NaN, and ``distributions``:
    name → sorted per-sample values downsampled to quantiles (``cos_margin``, see docs/metrics.md).

    Every value is a Python float. ``dict(result)`` or JSON serialisation drops ``reasons`` and
    ``distributions``; call :func:`result_reasons` first when the reasons must travel.
    """

    def __init__(self, *args, reasons: dict[str, str] | None = None,
                 distributions: dict[str, list[float]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.reasons: dict[str, str] = dict(reasons or {})
        self.distributions: dict[str, list[float]] = dict(distributions or {})


def result_reasons(result: dict[str, float]) -> dict[str, str]:
    """Reasons for the NaN values of a metric result (``{}`` when none is NaN).

    Works on a :class:`MetricDict`; for a plain dict the NaN keys get a generic reason.
    """
    reasons = dict(getattr(result, "reasons", {}) or {})
    for key, value in result.items():
        if isinstance(value, float) and math.isnan(value) and key not in reasons:
            reasons[key] = "NaN (the reason was lost: result copied into a plain dict)"
    return {k: v for k, v in reasons.items() if k in result}


def to_tensor(x: Any, name: str, expected: str = "a numeric array") -> torch.Tensor:
    """A torch tensor view of ``x`` (torch tensor, numpy array or nested sequence), detached.
    A dtype torch cannot hold (str, bytes, object, ...) → ValueError "``name``: expected ``expected``"."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise ValueError(f"{name}: expected {expected}, got dtype object ({type(x).__name__})")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr).copy()
    try:
        return torch.from_numpy(arr)
    except TypeError as exc:  # str/bytes/datetime/... arrays
        raise ValueError(f"{name}: expected {expected}, got dtype {dtype_name(x)}") from exc


def dtype_name(x: Any) -> str:
    """The dtype of the caller's input as they passed it: ``torch.float16`` for a tensor, numpy's name
    (``float16``, ``<U3``) for an array, plus the type for a sequence (``float64 (list)``). Error paths only."""
    if isinstance(x, torch.Tensor):
        return str(x.dtype)
    if isinstance(x, np.ndarray):
        return str(x.dtype)
    return f"{np.asarray(x).dtype} ({type(x).__name__})"


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_features(x: Any, *, dim: int | None = None, name: str = "features", finite: bool = True) -> torch.Tensor:
    """Validate a (B, d) real feature batch (finite, 2-D, matching ``dim``); returns a tensor, dtype kept.
    ``finite=False`` leaves the finiteness test to the caller (:func:`check_finite`, e.g. once per split)."""
    t = to_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, d), got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected real numbers, got dtype {dtype_name(x)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name}: expected feature dimension d = {dim}, got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name}: expected feature dimension d >= 1, got shape {tuple(t.shape)}")
    if finite and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.sum())):
        check_finite([t], name)  # slow path only when the cheap sum test fails (or overflows)
    return t


class NonFiniteValues(ValueError):
    """Input values that are NaN or infinite: ``name`` (e.g. 'features') and ``count`` of such entries."""

    def __init__(self, name: str, count: int):
        super().__init__(f"{name}: expected finite values, got {count} NaN/inf entries")
        self.name, self.count = name, count


def check_finite(parts: list[torch.Tensor], name: str = "features") -> None:
    """Raise :class:`NonFiniteValues` ("``name``: expected finite values, got n NaN/inf entries") when any of
    ``parts`` has one (an element-wise count: call it when a cheap test — a sum that is not finite — has failed)."""
    bad = sum(int((~torch.isfinite(t)).sum()) for t in parts if t.is_floating_point())
    if bad:
        raise NonFiniteValues(name, bad)


def check_labels(y: Any, *, n: int, num_classes: int | None, name: str = "labels") -> torch.Tensor:
    """Validate integer labels of shape (n,) in 0..K−1; returns an int64 tensor."""
    t = to_tensor(y, name, "integer class indices")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) to match the features, got {tuple(t.shape)}")
    if not _is_int(t):
        raise ValueError(f"{name}: expected integer class indices, got dtype {dtype_name(y)}")
    t = t.to(torch.int64)
    if n and num_classes is not None:
        check_label_range(t, num_classes, name)
    return t


def check_label_range(t: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    """Raise unless the int64 labels ``t`` (n ≥ 1,) all lie in 0..K−1."""
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(t)).tolist())  # one pass, one sync
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name}: expected values in 0..K-1 = 0..{num_classes - 1}, got min {lo}, max {hi}")


def infer_classes(labels: Any, *, n: int, d: int, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Labels (n,) → (int64 labels, K) when num_classes is not given: K = the rows of a classifier ``weight``
    (K, d) of matching d (a label >= K is a labels error), else max(label) + 1."""
    y = check_labels(labels, n=n, num_classes=None)
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(y)).tolist())  # one pass, one sync
    if lo < 0:
        raise ValueError(f"labels: expected values >= 0, got min {lo}")
    if weight is not None and weight.ndim == 2 and weight.shape[1] == d:
        k = weight.shape[0]
        if hi >= k:
            raise ValueError(f"labels: expected class indices in 0..K-1 = 0..{k - 1} (K = {k} rows of weight), "
                             f"got max {hi}")
        if k >= 2:
            return y, k  # the classifier's K: the last classes may have no sample in this split
    if hi + 1 < 2:
        raise ValueError(f"num_classes: inferred K = max(label) + 1 = {hi + 1}; NC metrics need K >= 2 "
                         "(pass num_classes)")
    return y, hi + 1


def label_order(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) the stable argsort of labels y (N,) in 0..K−1: sorted as the narrowest integer type that holds
    K − 1, since torch's radix sort takes one pass per byte (60,000 labels, one thread: 0.18 ms as uint8
    against 1.5 ms as int64; the same order)."""
    small = torch.uint8 if num_classes <= 256 else torch.int16 if num_classes <= 2**15 else y.dtype
    return torch.argsort(y.to(small), stable=True)


def check_num_classes(K: Any) -> int:
    if isinstance(K, bool) or int(K) != K or K < 2:
        raise ValueError(f"num_classes: expected an integer K >= 2, got {K!r}")
    return int(K)


def check_classifier(weight: Any, bias: Any, K: int, d: int, device) -> tuple:
    """Validate W (K, d) and b (K,) → float64 tensors on ``device`` (None stays None)."""
    W = b = None
    if weight is not None:
        W = to_tensor(weight, "weight")
        if tuple(W.shape) != (K, d):
            raise ValueError(f"weight: expected shape (K, d) = ({K}, {d}), got {tuple(W.shape)}")
        W = W.to(device=device, dtype=F64)
        if not bool(torch.isfinite(W).all()):
            raise ValueError("weight: expected finite values, got NaN/inf entries")
        top = float(W.abs().amax()) if W.numel() else 0.0
        if top > SCALE_LIMIT or 0 < top < 1 / SCALE_LIMIT:  # 0: an all-zero W, whose metrics say so
            raise ValueError(f"weight: expected magnitudes within [1e-150, 1e150] (the metrics square W and its "
                             f"Gram in float64), got max |w| = {top:.3g}")
    if bias is not None:
        b = to_tensor(bias, "bias")
        if tuple(b.shape) != (K,):
            raise ValueError(f"bias: expected shape (K,) = ({K},), got {tuple(b.shape)}")
        b = b.to(device=device, dtype=F64)
        if not bool(torch.isfinite(b).all()):
            raise ValueError("bias: expected finite values, got NaN/inf entries")
    return W, b


def fro(A: torch.Tensor) -> float:
    """Frobenius norm as a Python float, taken of A / max|A| and scaled back, so that its squares neither
    overflow (a Gram of features ~1e77) nor underflow (~1e-77)."""
    top = A.abs().amax() if A.numel() else A.new_zeros(())
    if not 0 < float(top) < float("inf"):
        return float(torch.linalg.norm(A))
    return float(top) * float(torch.linalg.norm(A / top))


SCALE_LIMIT = 1e150  # features are squared once (Grams) and their Grams again (norms): 1e150² < 1e308


def check_scale(means: torch.Tensor, class_ss: torch.Tensor, n: int) -> None:
    """ValueError unless the features' scale — max |μ_k| and the within-class RMS √(Σ‖h − μ_k‖²/N) —
    lies in [1/SCALE_LIMIT, SCALE_LIMIT] (or is 0: all features equal), where the float64 statistics are
    exact to rounding. Features of a float32 or bf16 network always are (|h| < 3.4e38)."""
    rms = (class_ss.sum() / max(n, 1)).sqrt()  # ()
    scale = float(torch.maximum(means.nan_to_num(0.0).abs().amax(), rms))
    if not scale <= SCALE_LIMIT or 0 < scale < 1 / SCALE_LIMIT:  # NaN: the sums of squares overflowed
        got = f"a scale of {scale:.3g} (max |class mean|, within-class RMS)" if scale == scale else \
            f"sums of squares that overflow float64 (max |class mean| {float(means.nan_to_num(0.0).abs().amax()):.3g})"
        raise ValueError(f"features: expected magnitudes within [1e-150, 1e150] (the metrics square them in "
                         f"float64), got {got}")


def normalised_gap(A: torch.Tensor, target: torch.Tensor, what: str) -> float:
    """‖A/‖A‖_F − target‖_F, undefined when A = 0."""
    n = fro(A)
    if not n > 0:
        raise MetricUndefined(f"{what} is zero, cannot be normalised")
    return fro(A / n - target)


def pinv_keep(eigs: torch.Tensor, n: int, max_rank: int | None = None) -> torch.Tensor:
    """Mask of eigenvalues kept by a pseudo-inverse with scipy's cutoff |λ| > n·eps·max|λ| (n × n matrix)
    — optionally also at most the ``max_rank`` largest ones (a known rank bound)."""
    a = eigs.abs()
    keep = a > n * EPS64 * a.max()
    if max_rank is not None and int(keep.sum()) > max_rank:
        order = torch.argsort(a, descending=True)
        keep = torch.zeros_like(keep)
        keep[order[:max_rank]] = True
    return keep
