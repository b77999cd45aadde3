"""The metric suite: every key of metrics.md from ClassStats (+ SampleStats, W, b, GOF), and the one-call nc_metrics."""
from __future__ import annotations

from functools import cached_property
from typing import Any, Callable, Mapping

import numpy as np
import torch

from nc_core.metric_keys import METRIC_KEYS, METRIC_VERSION  # noqa: F401 - re-exported by nc_core.metrics

from . import etfdist, gof as gofm, nc1, nc2, nc3, resident
from ._util import (F64, MetricDict, MetricUndefined, check_classifier, check_features, check_labels,
                    check_num_classes, check_scale, infer_classes, to_tensor)
from .ncc import SampleStats
from .passes import other_samples
from .stats import ClassStats

#: Per-class Grams X_kᵀX_k are built and eigen-solved in blocks of at most this many bytes.
RATIO_BLOCK_BYTES = 2**26


class _Ctx:
    """Lazily derived float64 quantities; a property raises MetricUndefined when it cannot exist."""

    def __init__(self, stats: ClassStats, W, b, gof, samples: SampleStats | None,
                 no_sample_reason: str | None = None):
        self.stats, self.W, self.b, self.gof, self.samples = stats, W, b, gof, samples
        self.no_sample_reason = no_sample_reason
        self.K, self.d = stats.num_classes, stats.dim

    @cached_property
    def n_total(self) -> int:
        n = self.stats.num_samples
        if n == 0:
            raise MetricUndefined("no samples")
        return n

    @cached_property
    def mu_g(self) -> torch.Tensor:
        _ = self.n_total
        return self.stats.global_mean  # (d,)

    @cached_property
    def means(self) -> torch.Tensor:
        _ = self.n_total
        empty = self.stats.empty_classes
        if empty:
            raise MetricUndefined(f"class(es) {empty} have no sample in this split")
        return self.stats.means  # (K, d)

    @cached_property
    def hc(self) -> torch.Tensor:
        _ = self.means
        return self.stats.centred_means("global")  # (K, d) rows μ_k − μ_G (H̃ᵀ)

    @cached_property
    def hbar(self) -> torch.Tensor:
        _ = self.means
        return self.stats.centred_means("unweighted")  # (K, d) rows μ_k − μ̄

    @cached_property
    def sigma_w(self) -> torch.Tensor:
        _ = self.n_total
        return self.stats.sigma_w  # (d, d)

    @cached_property
    def class_var(self) -> torch.Tensor:
        _ = self.means
        return self.stats.class_ss / self.stats.counts  # (K,)

    @cached_property
    def ratios(self) -> torch.Tensor:
        means = self.means
        if self.samples is not None and self.samples.class_ratios is not None:
            self._same_samples()  # from_features, or finalize() called by hand, may have had other rows
            return self.samples.class_ratios  # (K,) taken already (the resident pass, class by class)
        cs = self.stats.class_scatter
        if cs is not None:
            n, d = self.stats.counts, cs.shape[-1]
            step = max(1, RATIO_BLOCK_BYTES // (8 * d * d))  # classes per batched factor and SVD
            parts = []
            for lo in range(0, self.K, step):
                m, nk = means[lo:lo + step], n[lo:lo + step]  # (b, d), (b,)
                parts.append(nc1.class_rank_ratios(cs[lo:lo + step], nk, m))
            return torch.cat(parts)  # (K,)
        if self.samples is None:
            raise MetricUndefined(self.no_sample_reason or
                                  "needs per-class scatter: ClassStats(per_class=True) or a SampleStats pass")
        self._same_samples()
        self.samples.finalize()
        if self.samples.class_ratios is None:
            raise MetricUndefined(self.samples.class_ratio_reason)
        return self.samples.class_ratios  # (K,)

    @cached_property
    def sample(self) -> SampleStats:
        if self.samples is None:
            raise MetricUndefined(self.no_sample_reason or
                                  "per-sample metric: pass per_sample=SampleStats(...) (a second pass)")
        if self.samples.W is None:
            raise MetricUndefined("per-sample metric: the SampleStats was built without the classifier weight")
        self._same_samples()
        return self.samples

    def _same_samples(self) -> None:
        """MetricUndefined unless the SampleStats saw the ClassStats' samples (its count, then per class)."""
        if self.samples.num_samples != self.n_total:
            raise MetricUndefined(f"SampleStats saw {self.samples.num_samples} samples, ClassStats "
                                  f"{self.n_total}: not the same split")
        why = other_samples(self.samples)
        if why:
            raise MetricUndefined(f"the second pass saw other samples than the first ({why}): per-sample metrics "
                                  "need batches that yield the same samples each pass (a shuffled loader with "
                                  "drop_last, or random augmentation, does not)")

    @cached_property
    def sorted_margins(self) -> torch.Tensor:
        return _sort(self.sample.margins)  # (N,) ascending, sorted once for min/median/quantiles

    @cached_property
    def ncc(self) -> SampleStats:
        _ = self.means
        return self.sample

    @cached_property
    def targets(self) -> dict:
        return gofm.gof_targets(gofm.parse_gof(self.gof, self.stats.counts))


DISTRIBUTION_POINTS = 1001  # at most this many quantiles per stored distribution


def sorted_quantiles(v: torch.Tensor, points: int = DISTRIBUTION_POINTS, *,
                     presorted: bool = False) -> list[float]:
    """Quantiles of ``v`` (N,) at probabilities linspace(0, 1, min(N, points)), float64, ascending —
    numpy's default ("linear") np.quantile; the exact sorted values when N ≤ ``points``.
    ``presorted=True``: ``v`` is already ascending (no second sort)."""
    s = v.detach().to(F64).flatten()  # (N,)
    s = s if presorted else _sort(s)
    n = s.shape[0]
    if n <= points:
        return s.tolist()
    pos = torch.linspace(0.0, 1.0, points, dtype=F64, device=s.device) * (n - 1)  # (P,)
    lo = pos.floor().long().clamp(max=n - 2)  # (P,)
    t = pos - lo  # (P,) in [0, 1]
    a, b = s[lo], s[lo + 1]
    return torch.where(t < 0.5, a + (b - a) * t, b - (b - a) * (1 - t)).tolist()  # numpy's _lerp


def _sort(v: torch.Tensor) -> torch.Tensor:
    """Ascending copy of a 1-D tensor (numpy's vectorised sort on the CPU: ~2x torch.sort; NaN last in both)."""
    if v.device.type == "cpu" and not v.requires_grad:
        return torch.from_numpy(np.sort(v.numpy()))
    return torch.sort(v).values


def _median(s: torch.Tensor) -> float:
    """Median of an ascending (N,) tensor."""
    n = s.shape[0]
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


# key → (needs, fn(ctx)); needs: "W" (omitted without weight), "gof" (omitted without gof)
_REGISTRY: dict[str, tuple[tuple[str, ...], Callable[[_Ctx], float]]] = {
    "nc1": ((), lambda c: nc1.nc1(c.sigma_w, c.hc)),
    "nc1_svd": ((), lambda c: nc1.nc1_svd(c.sigma_w, c.hbar)),
    "nc1_quotient": ((), lambda c: nc1.nc1_quotient(c.sigma_w, c.hbar)),
    "cdnv": ((), lambda c: nc1.cdnv(c.class_var, c.hc)),  # differences of centred means: no offset
    "vci": ((), lambda c: nc1.vci(c.sigma_w, c.hc)),
    "trace_sw": ((), lambda c: nc1.trace_sw(c.sigma_w)),
    "trace_sb": ((), lambda c: nc1.trace_sb(c.hc)),
    "nc2_w": (("W",), lambda c: nc2.nc2_w(c.W)),
    "nc2_w_uncentered": (("W",), lambda c: nc2.nc2_w_uncentered(c.W)),
    "nc2_h": ((), lambda c: nc2.nc2_h(c.hc)),
    "nc2_h_unweighted": ((), lambda c: nc2.nc2_h_unweighted(c.hbar)),
    "nc2_w_identity": (("W",), lambda c: nc2.nc2_w_identity(c.W)),
    "nc2_h_identity": ((), lambda c: nc2.nc2_h_identity(c.means)),
    "equinorm_w": (("W",), lambda c: nc2.equinorm_w(c.W)),
    "equinorm_h": ((), lambda c: nc2.equinorm_h(c.hc)),
    "equinorm_diff": (("W",), lambda c: nc2.equinorm_diff(c.W, c.hc)),
    "gnc2_dist": ((), lambda c: nc2.gnc2_dist(c.hbar)),
    "gnc2_log": ((), lambda c: nc2.gnc2_log(c.hbar)),
    "nc3": (("W",), lambda c: nc3.nc3(c.W, c.hc)),
    "nc3_uncentered": (("W",), lambda c: nc3.nc3_uncentered(c.W, c.hc)),
    "nc3_identity": (("W",), lambda c: nc3.nc3_identity(c.W, c.means)),
    "nc3_w_sub_h": (("W",), lambda c: nc3.nc3_w_sub_h(c.W, c.means)),
    "nc3_w_sub_h_centered": (("W",), lambda c: nc3.nc3_w_sub_h_centered(c.W, c.hc)),
    "nc3_uniform_duality": (("W",), lambda c: nc3.nc3_uniform_duality(c.W, c.hbar)),
    "wh_b": (("W",), lambda c: nc3.wh_b(c.W, c.b, c.mu_g)),
    # 100 − 100·(1/N) Σ_i 1[NCC(h_i) = argmax(Wh_i + b)] (Papyan et al. 2020 NC4; Markou et al. 2024, Guiding)
    "ncc_mismatch": (("W",), lambda c: 100.0 - 100.0 * c.ncc.ncc_match / c.n_total),
    # (1/N) Σ_i 1[NCC(h_i) = argmax(Wh_i)], bias ignored (Wu & Papyan 2024, rhubarbwu `clf_ncc_agreement`)
    "ncc_agreement": (("W",), lambda c: c.ncc.ncc_agree / c.n_total),
    # mean, min, median of sample_scores.cosine_margins (Markou et al. 2024; the _logit variant: Zhou et al. 2022)
    "cos_margin_mean": (("W",), lambda c: float(c.sample.margins.mean())),
    "cos_margin_min": (("W",), lambda c: float(c.sorted_margins[0])),
    "cos_margin_median": (("W",), lambda c: _median(c.sorted_margins)),
    "cos_margin_mean_logit": (("W",), lambda c: float(c.sample.margins_logit.mean())),
    "nuclear_frobenius": ((), lambda c: nc1.nuclear_frobenius(c.ratios)),
    "numerical_rank": ((), lambda c: nc1.numerical_rank(c.ratios)),
    "etf_dist_w": (("W",), lambda c: etfdist.etf_dist_w(c.W)),
    "etf_dist_h": ((), lambda c: etfdist.etf_dist_h(c.hc)),
    "etf_dist_wh": (("W",), lambda c: etfdist.etf_dist_wh(c.W, c.hc)),
    "wh_dist": (("W",), lambda c: etfdist.wh_dist(c.W, c.hc)),
    "nc2_w_gof": (("W", "gof"), lambda c: gofm.nc2_w_gof(c.W, c.targets["d1"])),
    "nc2_h_gof": (("gof",), lambda c: gofm.nc2_h_gof(c.means, c.targets["d2"])),
    "nc3_wh_gof": (("W", "gof"), lambda c: gofm.nc3_wh_gof(c.W, c.means, c.targets["d3"])),
    "nc3_w_sub_h_gof": (("W", "gof"), lambda c: gofm.nc3_w_sub_h_gof(c.W, c.means, c.targets["d4"])),
}


def compute_metrics(stats: ClassStats, weight: Any = None, bias: Any = None, *,
                    gof: Mapping[str, Any] | None = None,
                    per_sample: SampleStats | None = None) -> MetricDict:
    """Every metric key computable from ``stats`` (+ W (K, d), b (K,), GOF parameters, a SampleStats).

    Omitted keys: those needing W when ``weight`` is None; GOF keys when ``gof`` is None; ``acc``/``loss``
    (only :func:`evaluate_split` measures them). Undefined values are NaN and explained in
    ``result.reasons`` (see :func:`result_reasons`). A missing ``bias`` means a bias-free model (b = 0 in
    ``wh_b`` and ``ncc_mismatch``).
    """
    return _compute(stats, weight, bias, gof, per_sample)


def _compute(stats, weight, bias, gof, per_sample, no_sample_reason: str | None = None) -> MetricDict:
    if not isinstance(stats, ClassStats):
        raise ValueError(f"stats: expected a ClassStats, got {type(stats).__name__}")
    W, b = check_classifier(weight, bias, stats.num_classes, stats.dim, stats.device)
    check_scale(stats.means, stats.class_ss, stats.num_samples)
    if gof is not None:
        _parse_gof_early(gof, stats.counts)  # ValueError for malformed gof input, before any work
    ctx = _Ctx(stats, W, b, gof, per_sample, no_sample_reason)
    out = MetricDict()
    for key in METRIC_KEYS:
        if key not in _REGISTRY:
            continue
        needs, fn = _REGISTRY[key]
        if ("W" in needs and W is None) or ("gof" in needs and gof is None):
            continue
        try:
            out[key] = float(fn(ctx))
        except MetricUndefined as exc:
            out[key], out.reasons[key] = float("nan"), exc.reason
        except torch.linalg.LinAlgError as exc:  # pragma: no cover - non-convergent eigensolver
            out[key], out.reasons[key] = float("nan"), f"linear algebra failed: {exc}"
    if W is not None:
        try:
            out.distributions["cos_margin"] = sorted_quantiles(ctx.sorted_margins, presorted=True)
        except MetricUndefined:  # no per-sample pass: the cos_margin_* keys already say why
            pass
    return out


def _parse_gof_early(gof, counts) -> None:
    """Raise ValueError on a malformed ``gof``; undefined-but-well-formed cases become NaN later."""
    try:
        gofm.parse_gof(gof, counts)
    except MetricUndefined:
        pass


def nc_metrics(features: Any, labels: Any, weight: Any = None, bias: Any = None, *,
               num_classes: int | None = None, gof: Mapping[str, Any] | None = None) -> dict[str, float]:
    """One call: all metrics of a split from its features (N, d) and labels (N,) (numpy or torch, any
    device; computed in float64 on that device). ``weight`` (K, d) / ``bias`` (K,) add the classifier
    metrics; ``gof`` = {weight_decay, feature_decay, depth_linear[, class_counts]} adds the GOF metrics.
    K defaults to the rows of ``weight``, else max(label) + 1. Returns a :class:`MetricDict` (NaN values
    explained in ``.reasons``).
    """
    x = check_features(features)
    n, d = x.shape
    if n == 0:
        raise ValueError("features: expected at least one sample, got 0 rows")
    w = None if weight is None else to_tensor(weight, "weight")
    if num_classes is None:
        y, K = infer_classes(labels, n=n, d=d, weight=w)
    else:
        K = check_num_classes(num_classes)
        y = check_labels(labels, n=n, num_classes=K)
    W, b = check_classifier(w, bias, K, d, x.device)
    if resident.fits(n, d, K):  # the path of evaluate_split: the same numbers from both entry points
        stats, samples = resident.resident_pass([(x, y)], K, d, W, b)
        return compute_metrics(stats, W, b, gof=gof, per_sample=samples)
    stats = ClassStats(K, d, x.device)
    stats._update_checked(x, y)
    samples = None
    if W is not None or not stats.per_class:
        samples = SampleStats._from_groups(stats, [(x, y)], W, b, own_rows=True)
    return compute_metrics(stats, W, b, gof=gof, per_sample=samples)
