"""Cosine-margin figure of one run: the stored sorted distribution (𝒫_CM) and its hardest tail, or the statistics."""
from __future__ import annotations

import math
import threading

import numpy as np
from sqlalchemy.orm import Session

from nc_core.db import distributions_repo
from nc_core.db.models import Run
from nc_core.spec import RunSpec
from service.plots import _message_png, _unfinished, _png, new_figure, plot_epochs, run_series, run_step

MARGIN_KEYS = ("cos_margin_mean", "cos_margin_median", "cos_margin_min")
TAIL = 0.02  # the hardest-samples panel shows the lowest 2% of the sorted margins
# matplotlib's mathtext parser (the P_CM title) is one shared object with per-parse state: one such figure at a time
_MATHTEXT = threading.Lock()


def num_classes(run: Run | None) -> int | None:
    """K from the run's spec (None when the spec is missing or not a valid RunSpec)."""
    if run is None or not run.spec:
        return None
    try:
        return RunSpec.model_validate(run.spec).num_classes
    except Exception:  # noqa: BLE001 - an old or hand-written spec: draw without the ideal line
        return None


def margins_png(session: Session, run_id: int) -> bytes:
    """Sorted per-sample cosine margins of the last stored epoch per split (x = sample fraction, y = margin)
    plus the lowest 2% (hardest samples), with the collapsed value 1 + 1/(K−1) dashed; without a stored
    distribution, the statistics (mean, median, min) vs epoch."""
    dists = distributions_repo.distributions(session, run_id, key="cos_margin")
    if not dists:
        return _statistics_png(session, run_id)
    K, unit = num_classes(session.get(Run, run_id)), run_step(session, run_id)
    ideal = 1.0 + 1.0 / (K - 1) if K and K > 1 else None
    fig, (full, tail) = new_figure(1, 2, figsize=(11, 4))
    for d in dists:
        y = np.array([math.nan if v is None else float(v) for v in d.values])  # (n,) ascending
        x = np.linspace(0.0, 1.0, y.shape[0])  # (n,) quantile probability = sample fraction
        label = f"{d.split} ({unit} {d.epoch})"
        line, = full.plot(x, y, lw=2, label=label)
        cut = max(int(np.searchsorted(x, TAIL, side="right")), min(y.shape[0], 5))
        tail.plot(x[:cut], y[:cut], lw=2, marker=".", color=line.get_color(), label=label)
    for ax in (full, tail):
        if ideal is not None:
            ax.axhline(ideal, color="k", ls="--", lw=1, label=f"collapse 1 + 1/(K−1), K={K}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("sample fraction (sorted ascending)")
        ax.set_ylabel("cosine margin")
        ax.grid(alpha=0.3)
    full.set_title(f"run {run_id}: sorted cosine margins " r"$\mathcal{P}_{CM}$" f" (last stored {unit})", fontsize=9,
                   parse_math=True)
    tail.set_title(f"hardest samples: lowest {TAIL:.0%}", fontsize=9)
    full.legend(fontsize=8)
    with _MATHTEXT:  # layout and drawing parse the title's mathtext
        fig.tight_layout()
        return _png(fig)


def _statistics_png(session: Session, run_id: int) -> bytes:
    """Cosine-margin statistics (mean, median, min) vs epoch per split (runs without a stored distribution)."""
    by = run_series(session, run_id, MARGIN_KEYS)
    if not by:
        return _message_png(f"run {run_id}: no cosine-margin metrics stored" +
                            (" yet" if _unfinished(session, run_id) else ""))
    splits = sorted({sp for sp, _ in by})
    unit = run_step(session, run_id)
    fig, axes = new_figure(1, len(splits), figsize=(5.5 * len(splits), 3.8), squeeze=False)
    for ax, sp in zip(axes.flat, splits):
        for key in MARGIN_KEYS:
            pts = by.get((sp, key))
            if pts:
                plot_epochs(ax, pts, unit, label=key.replace("cos_margin_", ""))
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"run {run_id}: cosine margin [{sp}]\n(statistics; no sorted distribution stored for this run)",
                     fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)
