"""Streaming float64 class statistics (counts, means/sums, within-class scatter) with exact Chan merges."""
from __future__ import annotations

import copy
from typing import Any

import torch

from ._blas import add_gram, column_sums, symmetric
from ._util import F64, check_features, check_labels, check_num_classes, label_order

#: Per-class d×d scatter matrices are kept when K·d²·8 bytes is at most this (auto mode).
PER_CLASS_AUTO_BYTES = 2**30
#: Rows per float64 work chunk inside :meth:`ClassStats.update` (bounded temporary memory).
CHUNK_BYTES = 2**24


def class_slices(xs: torch.Tensor, counts: list[int]):  # noqa: ANN201 - an iterator of (int, Tensor)
    """(k, view of the rows of class k) for each non-empty class of label-sorted rows xs (B, d)."""
    start = 0
    for k, n_k in enumerate(counts):
        if n_k:
            yield k, xs[start:start + n_k]  # (n_k, d)
            start += n_k


class ClassStats:
    """One-pass, mergeable float64 statistics of labelled features; never stores samples.

    State per class k: count n_k, mean μ_k, within sum of squares Σ_{i∈k} ‖h_i − μ_k‖², and the
    within-class scatter, either pooled S_W = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ (d × d) or per class
    C_k (K × d × d; ``per_class=True``, needed for the nuclear-norm metrics without a second pass;
    default: on when K·d²·8 ≤ 1 GiB).

    Numerics: all data are shifted by a reference point (the mean of the first batch, kept in
    ``shift``), each batch is centred at its own class means (B × d float64 residuals, one GEMM) and
    merged with the parallel-axis (Chan et al. 1979) update
        S ← S + S_b + Σ_k (n_k c_k/(n_k + c_k)) (m_k − μ_k)(m_k − μ_k)ᵀ,  μ_k ← μ_k + c_k/(n_k + c_k)(m_k − μ_k),
    so a large common offset (‖μ‖ ≫ spread) never enters a sum of squares or a running mean: no
    cancellation. Batch order and splitting change the result only at rounding level.
    """

    def __init__(self, num_classes: int, dim: int, device: Any = None, *, per_class: bool | None = None):
        self.num_classes = check_num_classes(num_classes)
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"dim: expected an integer d >= 1, got {dim!r}")
        self.dim = int(dim)
        K, d = self.num_classes, self.dim
        self.per_class = bool(K * d * d * 8 <= PER_CLASS_AUTO_BYTES) if per_class is None else bool(per_class)
        self._device = torch.device(device) if device is not None else None
        self._allocated = False
        if self._device is not None:
            self._alloc(self._device)

    # ------------------------------------------------------------------ state
    def _alloc(self, device: torch.device) -> None:
        K, d = self.num_classes, self.dim
        self._device = device
        self._n = torch.zeros(K, dtype=F64, device=device)  # (K,)
        self._mean = torch.zeros(K, d, dtype=F64, device=device)  # (K, d)
        self._ss = torch.zeros(K, dtype=F64, device=device)  # (K,) within sum of squares
        self._shift = None  # (d,) reference point, set by the first non-empty batch; _mean is relative to it
        shape = (K, d, d) if self.per_class else (d, d)
        self._scatter = torch.zeros(shape, dtype=F64, device=device)  # (K, d, d) or (d, d)
        self._allocated = True

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else torch.device("cpu")

    def _ensure(self, device: torch.device) -> None:
        if not self._allocated:
            self._alloc(self._device if self._device is not None else device)

    # ----------------------------------------------------------------- update
    def update(self, features: Any, labels: Any) -> "ClassStats":
        """Add a batch: features (B, d) and labels (B,) as torch tensors (any device) or numpy arrays."""
        x = check_features(features, dim=self.dim)
        y = check_labels(labels, n=x.shape[0], num_classes=self.num_classes)
        self._update_checked(x, y)
        return self

    def _update_checked(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._ensure(x.device)
        if x.shape[0] == 0:
            return
        x = x.to(self.device)
        y = y.to(self.device)
        if self._shift is None:
            self._shift = x[:4096].to(F64).mean(0)  # (d,) reference point
        rows = max(1, CHUNK_BYTES // (8 * self.dim))
        if self.per_class:
            # sort the whole input by label once: the chunks then hold one or two classes each and the
            # per-class GEMMs run over long slices (same result, ~2x faster than short per-batch slices)
            order = label_order(y, self.num_classes)  # (B,)
            for start in range(0, x.shape[0], rows):
                idx = order[start:start + rows]
                self._update_sorted(x.index_select(0, idx), y.index_select(0, idx))
            return
        for start in range(0, x.shape[0], rows):
            self._update_chunk(x[start:start + rows], y[start:start + rows])

    def _update_chunk(self, x: torch.Tensor, y: torch.Tensor) -> None:
        K, d = self.num_classes, self.dim
        xb = x.to(F64)  # (B, d)
        xb = xb - self._shift if xb.data_ptr() == x.data_ptr() else xb.sub_(self._shift)  # never mutate x
        c = torch.bincount(y, minlength=K).to(F64)  # (K,)
        sums = torch.zeros(K, d, dtype=F64, device=xb.device).index_add_(0, y, xb)  # (K, d)
        m = sums / c.clamp_min(1.0)[:, None]  # (K, d) batch class means (0 where absent)
        r = xb.sub_(m[y])  # (B, d) residuals about the batch class means (in place)
        ss = torch.zeros(K, dtype=F64, device=xb.device).index_add_(0, y, (r * r).sum(1))  # (K,)
        add_gram(self._scatter, r)
        self._combine(c, m, ss)

    def _update_sorted(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Per-class mode, rows x (B, d) sorted by label: shifted to float64, then each class slice is
        centred IN PLACE at its mean (x itself is never mutated), reduced and added to its Gram."""
        K, d = self.num_classes, self.dim
        xs = x.to(F64)  # (B, d) grouped by class
        xs = xs - self._shift if xs.data_ptr() == x.data_ptr() else xs.sub_(self._shift)
        counts = torch.bincount(y, minlength=K).tolist()  # K class sizes
        m = torch.zeros(K, d, dtype=F64, device=xs.device)  # (K, d)
        ss = torch.zeros(K, dtype=F64, device=xs.device)  # (K,)
        for k, xk in class_slices(xs, counts):
            m[k] = column_sums(xk) / xk.shape[0]
            xk.sub_(m[k])  # (n_k, d) h − μ_k
            flat = xk.view(-1)  # (n_k·d,)
            ss[k] = torch.dot(flat, flat)
            add_gram(self._scatter[k], xk)
        self._combine(torch.tensor(counts, dtype=F64, device=xs.device), m, ss)  # counts (K,)

    def _combine(self, c: torch.Tensor, m: torch.Tensor, ss: torch.Tensor) -> None:
        """Parallel-axis merge of (counts c, means m, within SS ss) into the state; the other part's
        scatter must already be added to ``self._scatter``."""
        n = self._n
        tot = n + c  # (K,)
        f = torch.where(tot > 0, n * c / tot.clamp_min(1.0), torch.zeros_like(tot))  # (K,) n c/(n+c)
        delta = m - self._mean  # (K, d)
        w = torch.where(tot > 0, c / tot.clamp_min(1.0), torch.zeros_like(tot))  # (K,)
        self._mean += w[:, None] * delta
        if self.per_class:
            for k, fk in enumerate(f.tolist()):
                if fk > 0:
                    self._scatter[k].addr_(delta[k], delta[k], alpha=fk)  # in place, one d × d pass
        else:
            D = f.sqrt()[:, None] * delta  # (K, d)
            self._scatter.addmm_(D.T, D)
        self._ss += ss + f * (delta * delta).sum(1)
        self._n = tot

    # ------------------------------------------------------------------ merge
    def merge(self, other: "ClassStats") -> "ClassStats":
        """A new ClassStats equal (to rounding) to one fed with both inputs; neither operand changes.
        Per-class scatter survives only if both operands keep it."""
        if not isinstance(other, ClassStats):
            raise ValueError(f"merge: expected a ClassStats, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"merge: expected (num_classes, dim) = ({self.num_classes}, {self.dim}), "
                f"got ({other.num_classes}, {other.dim})")
        dev = self._device if self._device is not None else other._device
        out = ClassStats(self.num_classes, self.dim, dev if dev is not None else "cpu",
                         per_class=self.per_class and other.per_class)
        for part in (self, other):
            if not part._allocated:
                continue
            if part._shift is None:
                continue
            sc = part._scatter.to(out.device)
            if part.per_class and not out.per_class:
                sc = sc.sum(0)  # (K, d, d) → (d, d)
            out._scatter += sc
            shift = part._shift.to(out.device)
            if out._shift is None:
                out._shift = shift.clone()
            rel = part._mean.to(out.device) + (shift - out._shift)  # (K, d) in out's frame
            out._combine(part._n.to(out.device), rel, part._ss.to(out.device))
        return out

    def __add__(self, other: "ClassStats") -> "ClassStats":
        return self.merge(other)

    def copy(self) -> "ClassStats":
        return copy.deepcopy(self)

    def __copy__(self) -> "ClassStats":
        """``copy.copy`` is a full copy too: a shallow one would share the state tensors that ``update``
        changes in place (the original's means and scatter would move with the copy's updates)."""
        return self.copy()

    def to(self, device: Any) -> "ClassStats":
        """A copy on ``device``."""
        out = ClassStats(self.num_classes, self.dim, device, per_class=self.per_class)
        if self._allocated:
            for name in ("_n", "_mean", "_ss", "_scatter", "_shift"):
                val = getattr(self, name)
                setattr(out, name, None if val is None else val.to(out.device).clone())
        return out

    # ---------------------------------------------------------------- derived
    def _state(self, name: str) -> torch.Tensor:
        self._ensure(self.device)
        return getattr(self, name)

    @property
    def counts(self) -> torch.Tensor:
        """(K,) float64 sample counts n_k."""
        return self._state("_n")

    @property
    def num_samples(self) -> int:
        return int(round(float(self.counts.sum())))

    @property
    def empty_classes(self) -> list[int]:
        return torch.nonzero(self.counts == 0).squeeze(1).tolist()

    @property
    def shift(self) -> torch.Tensor:
        """(d,) the reference point the internal means are relative to (zeros before any sample)."""
        return self._shift if self._shift is not None else torch.zeros(self.dim, dtype=F64, device=self.device)  # (d,)

    def relative_means(self) -> torch.Tensor:
        """(K, d) μ_k − shift (exact frame for differences of means); NaN rows for empty classes."""
        rel = self._state("_mean").clone()
        rel[self._n == 0] = float("nan")
        return rel

    def relative_global_mean(self) -> torch.Tensor:
        """(d,) μ_G − shift."""
        n = self.counts
        return (n[:, None] * self._mean).sum(0) / n.sum()

    @property
    def means(self) -> torch.Tensor:
        """(K, d) class means μ_k; NaN rows for classes without samples."""
        return self.relative_means() + self.shift

    @property
    def sums(self) -> torch.Tensor:
        """(K, d) class sums Σ_{i∈k} h_i = n_k μ_k."""
        return self._state("_n")[:, None] * (self._state("_mean") + self.shift)

    @property
    def global_mean(self) -> torch.Tensor:
        """(d,) sample-weighted global mean μ_G = (1/N) Σ_k n_k μ_k (NaN if N = 0)."""
        return self.relative_global_mean() + self.shift

    def centred_means(self, center: str = "global") -> torch.Tensor:
        """(K, d) μ_k − μ_G (``center="global"``, sample-weighted) or μ_k − μ̄ (``"unweighted"``),
        computed in the shifted frame (no large-offset cancellation)."""
        rel = self.relative_means()
        if center == "global":
            return rel - self.relative_global_mean()
        if center == "unweighted":
            return rel - rel.mean(0)
        raise ValueError(f"center: expected 'global' or 'unweighted', got {center!r}")

    @property
    def class_ss(self) -> torch.Tensor:
        """(K,) within-class sums of squares Σ_{i∈k} ‖h_i − μ_k‖²."""
        return self._state("_ss")

    @property
    def scatter(self) -> torch.Tensor:
        """(d, d) pooled within-class scatter Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ."""
        sc = self._state("_scatter")
        return symmetric(sc.sum(0) if self.per_class else sc)

    @property
    def class_scatter(self) -> torch.Tensor | None:
        """(K, d, d) per-class centred scatter C_k, or None when ``per_class`` is off."""
        return symmetric(self._state("_scatter")) if self.per_class else None

    @property
    def sigma_w(self) -> torch.Tensor:
        """(d, d) Σ_W = S_W / N (pooled, divided by the total N; nc-spec §2.1)."""
        return self.scatter / self.counts.sum()

    @property
    def sigma_b(self) -> torch.Tensor:
        """(d, d) Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ (unweighted over classes, centred at weighted μ_G)."""
        hc = self.centred_means("global")  # (K, d)
        return hc.T @ hc / self.num_classes

    def __repr__(self) -> str:
        return (f"ClassStats(num_classes={self.num_classes}, dim={self.dim}, device={self.device}, "
                f"per_class={self.per_class}, N={self.num_samples if self._allocated else 0})")
