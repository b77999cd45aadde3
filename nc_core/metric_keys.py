"""The metric keys (the contract of ../shared/metrics.md) without torch, for the API and the CLIs to check."""
from __future__ import annotations

from typing import Iterable

#: The version of the metric definitions, stored with every value (docs/metrics.md, "Versioning"):
#: 1 the first; 2 a training run's GOF keys score against the λ's of the UFM objective it minimises
#: (nc_core.training.optim.gof_lambdas) and the training class counts on every split; 3 nuclear-norm
#: ratios exact near collapse, ETF distances of rank-deficient frames, a logit margin at μ_G.
METRIC_VERSION = 4

METRIC_KEYS: tuple[str, ...] = (
    "nc1", "nc1_svd", "nc1_quotient", "cdnv", "vci", "trace_sw", "trace_sb",
    "nc2_w", "nc2_w_uncentered", "nc2_h", "nc2_h_unweighted", "nc2_w_identity", "nc2_h_identity",
    "equinorm_w", "equinorm_h", "equinorm_diff", "gnc2_dist", "gnc2_log",
    "nc3", "nc3_uncentered", "nc3_identity", "nc3_w_sub_h", "nc3_w_sub_h_centered", "nc3_uniform_duality",
    "wh_b", "ncc_mismatch", "ncc_agreement",
    "cos_margin_mean", "cos_margin_min", "cos_margin_median", "cos_margin_mean_logit",
    "nuclear_frobenius", "numerical_rank",
    "etf_dist_w", "etf_dist_h", "etf_dist_wh", "wh_dist",
    "nc2_w_gof", "nc2_h_gof", "nc3_wh_gof", "nc3_w_sub_h_gof",
    "acc", "loss",
)
#: The keys a results table shows when none are asked for: accuracy and the four NC headline metrics.
HEADLINE_KEYS: tuple[str, ...] = ("acc", "nc1", "nc2_w", "nc3", "wh_b")
#: Training statistics the trainer stores besides the NC contract, on the train split of a 'train' run at every
#: epoch (nc_core/train.py ``_train_epoch``): the running mean loss and accuracy (%) of the epoch's augmented
#: batches, and the learning rate it trained with. A UFM run stores METRIC_KEYS only.
TRAINING_KEYS: tuple[str, ...] = ("running_loss", "running_acc", "lr")
#: Every key a run may store, so every key the API, the plots and the CLI accept.
STORED_KEYS: tuple[str, ...] = METRIC_KEYS + TRAINING_KEYS


def check_metric_keys(field: str, keys: Iterable[str]) -> None:
    """Raise SpecError(field) naming every key that no run stores, and the valid ones (STORED_KEYS)."""
    from nc_core.sweep import SpecError

    bad = [k for k in keys if k not in STORED_KEYS]
    if bad:
        listed = ", ".join(repr(k) for k in bad)
        raise SpecError(field, f"unknown metric key{'s' if len(bad) > 1 else ''} {listed}; expected some of "
                               f"{', '.join(STORED_KEYS)}")


def parse_metric_keys(field: str, raw: str | None) -> list[str] | None:
    """'acc, nc1' → ['acc', 'nc1'] after check_metric_keys; None or blank → None (every key)."""
    keys = [k.strip() for k in (raw or "").split(",") if k.strip()] or None
    check_metric_keys(field, keys or [])
    return keys
