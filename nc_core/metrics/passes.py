"""Whether a second pass (a SampleStats fed through ``update``) saw the samples its ClassStats was built from."""
from __future__ import annotations

import torch

from ._util import F64
from .ncc import SampleStats


def other_samples(samples: SampleStats) -> str | None:
    """Why the rows ``samples`` saw are not the ClassStats' split (None when they are, to rounding): their
    per-class counts differ, or a class's Σ (h − μ_G) is off n_k (μ_k − μ_G) by more than 4·n_k·ε·(‖μ_k‖ +
    ‖μ_G‖ + RMS ‖h − μ_k‖), ε the features' machine epsilon (float32: 1.2e-7) — what rounding-level changes of
    every feature (a non-deterministic GPU forward) and float64 sums of n_k rows can reach; one sample
    exchanged for another moves it by about one RMS, which that exceeds only for classes of millions."""
    if samples._seen_sums is None or samples.num_samples != samples.stats.num_samples:
        return None  # not tracked, or told by the sample count already
    n = samples.stats.counts  # (K,) float64
    if not torch.equal(samples._seen_counts.to(F64), n):
        return "the per-class sample counts differ from the first pass"
    seen = n > 0  # (K,) empty classes are told by the counts
    expect = n[:, None] * samples._mc.nan_to_num(0.0)  # (K, d) n_k (μ_k − μ_G)
    gap = torch.linalg.vector_norm(samples._seen_sums - expect, dim=1)  # (K,)
    means = samples.stats.means.nan_to_num(0.0)  # (K, d) μ_k: features round relative to themselves
    rms = (samples.stats.class_ss / n.clamp_min(1.0)).sqrt()  # (K,)
    scale = torch.linalg.vector_norm(means, dim=1) + torch.linalg.vector_norm(samples._mu_g) + rms  # (K,)
    off = seen & ~(gap <= 4 * samples._seen_eps * n * scale)  # NaN gaps count as off
    if bool(off.any()):
        return f"class(es) {torch.nonzero(off).squeeze(1).tolist()} got other samples than in the first pass"
    return None
