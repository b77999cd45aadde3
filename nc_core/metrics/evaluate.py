"""evaluate_split: one forward pass over a split → acc, loss and every NC metric (second pass only if needed)."""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Callable, Iterable, Mapping

import torch

from ._util import (F64, MetricDict, check_classifier, check_features, check_finite, check_label_range, check_labels,
                    check_num_classes)
from ._workspace import kept_batches
from .ncc import SampleStats
from .resident import fits as resident_fits, resident_pass
from .stats import CHUNK_BYTES, PER_CLASS_AUTO_BYTES, ClassStats
from .suite import _compute


def _run(forward: Callable, batch: Any, K: int, d: int | None,
         checked: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, logits and int64 labels of one batch. ``checked=False`` skips the value tests (finite
    features, labels in 0..K−1), which the caller then makes once for the whole split."""
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise ValueError(f"batches: expected (x, y) pairs, got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    out = forward(x)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(f"forward: expected (features (B, d), logits (B, K)), got {type(out).__name__}")
    feats = check_features(out[0], dim=d, finite=checked)
    B = feats.shape[0]
    logits = torch.as_tensor(out[1])  # (B, K), checked next
    if tuple(logits.shape) != (B, K):
        raise ValueError(f"forward: expected logits of shape (B, K) = ({B}, {K}), got {tuple(logits.shape)}")
    labels = check_labels(torch.as_tensor(y).to(feats.device), n=B, num_classes=K if checked else None)  # (B,)
    return feats, logits, labels


def _batch_loss(loss_fn: Callable, logits: torch.Tensor, y: torch.Tensor, K: int) -> torch.Tensor:
    """Sum of ``loss_fn`` over one batch (float64). When the loss fails on labels not yet range-checked
    (e.g. cross-entropy on a label ≥ K), the labels error is the one raised."""
    B = y.shape[0]
    if B == 0:  # a mean over no sample is NaN: the batch adds nothing
        return torch.zeros((), dtype=F64, device=logits.device)  # ()
    try:
        lv = torch.as_tensor(loss_fn(logits, y.to(logits.device)))  # () or (B,), checked below
    except Exception:
        if B:
            check_label_range(y, K)
        raise
    if lv.ndim == 0:
        return lv.to(F64) * B
    if tuple(lv.shape) == (B,):
        return lv.to(F64).sum()
    raise ValueError(f"loss_fn: expected a scalar or shape ({B},), got {tuple(lv.shape)}")


def _check_values(kept: list, K: int | None) -> None:
    """The value tests :func:`_run` skipped, over kept (features, labels) batches: labels in 0..K−1 (unless
    K is None: tested already), finite features (a sum per batch first, an element-wise count only when
    one fails)."""
    for f, y in kept:
        if K is not None and y.shape[0]:
            check_label_range(y, K)
    check_finite([f for f, _ in kept if f.numel() and not bool(torch.isfinite(f.sum()))])


def _regroup(kept: list, rows: int) -> list:
    """Concatenate consecutive (features, labels) batches into chunks of about ``rows`` rows, dropping
    the originals as it goes (peak memory ≈ the kept features + one chunk)."""
    groups, fs, ys, n = [], [], [], 0
    while kept:
        f, y = kept.pop(0)
        fs.append(f), ys.append(y)
        n += f.shape[0]
        if n >= rows or not kept:
            groups.append((torch.cat(fs), torch.cat(ys)))  # (n, d), (n,)
            fs, ys, n = [], [], 0
    return groups


def evaluate_split(forward: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
                   batches: Iterable, *, num_classes: int, weight: Any = None, bias: Any = None,
                   loss_fn: Callable | None = None, gof: Mapping[str, Any] | None = None,
                   max_resident_bytes: int = 2**31) -> MetricDict:
    """Metrics of one split: ``acc`` (top-1, percent), ``loss`` (mean of ``loss_fn``; omitted without it)
    and every NC key of :func:`compute_metrics`.

    ``forward(x) -> (features (B, d), logits (B, K))``; ``batches`` a re-iterable of (x, y) on the
    device (e.g. a DataLoader with deterministic transforms; call ``model.eval()`` first). Runs under
    ``torch.inference_mode``. While the features (and labels) fit in ``max_resident_bytes`` copies of
    them stay on the device and one pass suffices; otherwise the per-sample metrics (with ``weight``: NCC,
    cosine margins) take a second pass — impossible for a one-shot iterator, whose per-sample keys are
    then NaN with a reason, and NaN with a reason too when that pass sees other samples (per-class counts
    or sums differ: e.g. a shuffled loader with ``drop_last``). ``loss_fn(logits, y)`` may return the batch
    mean (scalar) or per-sample losses (B,); NaN or +inf logits make ``acc`` and ``loss`` NaN with a reason.
    """
    K = check_num_classes(num_classes)
    one_shot = isinstance(batches, Iterator)
    with torch.inference_mode(), kept_batches() as keeper:
        stats: ClassStats | None = None
        kept: list = []
        resident, used, n = True, 0, 0
        correct = loss_sum = None
        tops: list[torch.Tensor] = []  # each batch's row maxima (B,)
        for batch in batches:  # while resident, the value tests wait for the whole split (one pass)
            feats, logits, y = _run(forward, batch, K, stats.dim if stats is not None else None, not resident)
            B = feats.shape[0]
            n += B
            top, pred = logits.max(1)  # (B,) a row's max is NaN or ±inf when its argmax is no prediction
            hits = (pred == y.to(logits.device)).sum()
            correct = hits if correct is None else correct + hits
            tops.append(top)  # tested once, after the loop
            if loss_fn is not None:
                lv = _batch_loss(loss_fn, logits, y, K)
                loss_sum = lv if loss_sum is None else loss_sum + lv
            if stats is None:
                stats = ClassStats(K, feats.shape[1], feats.device)
            if resident:
                nbytes = feats.numel() * feats.element_size() + y.numel() * y.element_size()
                if used + nbytes <= max_resident_bytes:  # copies: the forward or loader may reuse its buffers
                    kept.append((keeper.keep(feats), y.clone()))
                    used += nbytes
                    continue
                resident = False
                _check_values(kept + [(feats, y)], K)
                for f, yy in kept:
                    stats._update_checked(f, yy)
                kept.clear()
            stats._update_checked(feats, y)
        if stats is None or n == 0:
            raise ValueError("batches: expected at least one non-empty batch, got none")
        if resident:  # the labels' range test, deferred to here (the features': the resident pass, or below)
            check_label_range(torch.cat([yy for _, yy in kept]), K)
        W, b = check_classifier(weight, bias, K, stats.dim, stats.device)
        needs_samples = W is not None or not stats.per_class  # resident: the ratios a class at a time from the rows
        # a second pass serves the keys that need W, and the nuclear ratios only where it can hold per-class Grams
        second_pass = W is not None or (not stats.per_class and SampleStats.grams_by_default(stats))
        samples, reason = None, None
        if not (resident or second_pass or stats.per_class):
            reason = (f"per-class scatter not kept: K·d²·8 = {K * stats.dim ** 2 * 8:,} bytes exceeds its "
                      f"{PER_CLASS_AUTO_BYTES:,}-byte budget, and the features exceeded max_resident_bytes")
        if resident:
            if resident_fits(n, stats.dim, K):  # label-sorted once, then class by class in float64 chunks
                stats, samples = resident_pass(kept, K, stats.dim, W, b, check_finite=True)
            else:
                _check_values(kept, None)  # the features' test (the labels' ran above)
                groups = _regroup(kept, max(1, CHUNK_BYTES // (8 * stats.dim)))
                for f, yy in groups:
                    stats._update_checked(f, yy)
                if needs_samples:
                    samples = SampleStats._from_groups(stats, groups, W, b, own_rows=True)
                del groups
        elif second_pass and one_shot:
            reason = ("features exceeded max_resident_bytes and batches is a one-shot iterator: "
                      "no second pass for the per-sample metrics")
        elif second_pass:
            samples = SampleStats(stats, W, b)
            for batch in batches:
                feats, _, y = _run(forward, batch, K, stats.dim)
                samples._update_checked(feats, y)
        out = _compute(stats, W, b, gof, samples, no_sample_reason=reason)
        out["acc"] = 100.0 * float(correct) / n
        if loss_fn is not None:
            out["loss"] = float(loss_sum) / n
        _explain_logits(out, bool(torch.isfinite(torch.cat(tops)).all()))  # (N,) row maxima: one test
    return out


def _explain_logits(out: MetricDict, finite_maxima: bool) -> None:
    """``acc`` (and ``loss``) NaN with the reason unless every row of logits had a finite maximum (a NaN or +inf
    logit, or a row all −inf, makes its argmax no prediction); a loss that is NaN/inf from such logits says so."""
    if not finite_maxima:
        why = "logits are not finite (a row's maximum is NaN or ±inf): the model's outputs are not predictions"
        for key in ("acc", "loss"):
            if key in out:
                out[key], out.reasons[key] = float("nan"), why
    elif "loss" in out and not math.isfinite(out["loss"]):
        out.reasons["loss"] = "loss_fn returned NaN/inf (for logits whose row maxima are finite)"
        out["loss"] = float("nan")
