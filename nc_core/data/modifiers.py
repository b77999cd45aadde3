"""Train-split modifiers: per-class subsets, imbalance, size cap, random labels, label noise (seeded)."""
from __future__ import annotations


import numpy as np
import torch
from torch import Tensor

from nc_core.data.sources import rng
from nc_core.spec import DataSpec, imbalance_floor

# Independent random streams of one run seed (0–2 are used by the gaussian source).
_STREAM_CAP, _STREAM_RANDOM, _STREAM_NOISE = 10, 11, 12


def class_targets(spec: DataSpec, counts: np.ndarray) -> np.ndarray | None:
    """Wanted train samples per class (K,), or None to keep the split as it is.

    class_counts: as given. imbalance_factor f < 1: n_k = floor(n_max · f^(k/(K−1))) with n_max =
    data.per_class if set, else the smallest class of the split (so every n_k exists). per_class: n.
    """
    k = len(counts)
    if spec.class_counts is not None:
        return np.asarray(spec.class_counts)
    if spec.imbalance_factor < 1.0:
        n_max = spec.per_class if spec.per_class is not None else int(counts.min())
        return np.array(imbalance_floor(n_max, spec.imbalance_factor, k))
    if spec.per_class is not None:
        return np.full(k, spec.per_class)
    return None


def _counts_field(spec: DataSpec) -> str:
    """The field whose class counts a split is cut to (as class_targets reads them)."""
    if spec.class_counts is not None:
        return "data.class_counts"
    if spec.imbalance_factor < 1.0:
        return "data.imbalance_factor" + (f" (with data.per_class={spec.per_class})" if spec.per_class else "")
    return "data.per_class"


def select_per_class(y: np.ndarray, wanted: np.ndarray, source: str = "data.per_class") -> np.ndarray:
    """Indices (sorted) of the first wanted[k] samples of every class k; errors, naming ``source`` (the field
    that asked for the counts), if a class is short."""
    picked = []
    for c, n in enumerate(wanted):
        idx = np.flatnonzero(y == c)
        if n > len(idx):
            raise ValueError(f"{source}: class {c} has {len(idx)} training samples; expected at least {n} "
                             f"(the count {source} asks of it)")
        picked.append(idx[: int(n)])
    return np.sort(np.concatenate(picked))


def modify_train(spec: DataSpec, seed: int, x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Apply, in order: class selection, train_size cap (seeded subset), random labels, label noise."""
    yn = y.numpy()
    counts = np.bincount(yn, minlength=num_classes)
    if len(counts) != num_classes:
        raise ValueError(f"data: expected labels in 0..{num_classes - 1}, got max label {int(yn.max())}")
    wanted = class_targets(spec, counts)
    keep = np.arange(len(yn)) if wanted is None else select_per_class(yn, wanted, _counts_field(spec))
    if spec.train_size is not None and len(keep) > spec.train_size:
        keep = np.sort(rng(seed, _STREAM_CAP).choice(keep, size=spec.train_size, replace=False))
        lost = sorted(set(np.flatnonzero(counts).tolist()) - set(np.unique(yn[keep]).tolist()))
        if lost:  # NC metrics need every class: a class the draw left out would make them undefined all run
            raise ValueError(f"data.train_size: the seeded random subset of {spec.train_size} training samples has "
                             f"no sample of class(es) {lost}; expected every class: raise train_size, or use "
                             f"data.per_class for a balanced subset")
    yn = yn[keep].copy()
    if spec.random_labels:  # a seeded permutation of the labels (tding1's cifar10_random): class counts kept
        yn = yn[rng(seed, _STREAM_RANDOM).permutation(len(yn))]
    if spec.label_noise > 0:
        g = rng(seed, _STREAM_NOISE)
        noisy = g.choice(len(yn), size=int(round(spec.label_noise * len(yn))), replace=False)
        yn[noisy] = g.integers(num_classes, size=len(noisy))  # uniform over all K (may keep the label)
    labels = torch.from_numpy(yn.astype(np.int64))
    if len(keep) == len(x):  # nothing dropped: no copy of a possibly large image tensor
        return x, labels
    return x[torch.from_numpy(keep)], labels
