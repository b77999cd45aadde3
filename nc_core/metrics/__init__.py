"""Neural-collapse metrics: streaming float64 class statistics, every metric key of docs/metrics.md, evaluate_split."""
from ._util import MetricDict, MetricUndefined, NonFiniteValues, result_reasons
from .evaluate import evaluate_split
from .ncc import SampleStats
from .stats import ClassStats
from .suite import METRIC_KEYS, METRIC_VERSION, compute_metrics, nc_metrics

__all__ = [
    "METRIC_KEYS",
    "METRIC_VERSION",
    "ClassStats",
    "MetricDict",
    "MetricUndefined",
    "NonFiniteValues",
    "SampleStats",
    "compute_metrics",
    "evaluate_split",
    "nc_metrics",
    "result_reasons",
]
