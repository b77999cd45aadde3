"""Per-sample metrics (NCC agreement, cosine margins, per-class rank ratios) as a second-pass accumulator."""
from __future__ import annotations

from typing import Any

import torch

from ._blas import add_gram
from ._util import EPS64, F64, MetricUndefined, check_classifier, check_features, check_labels
from .nc1 import class_rank_ratio
# Scores and first_index are also imported from here (metrics.resident, tests)
from .sample_scores import Scores, cosine_margins, first_index, first_true, ncc_predict
from .stats import CHUNK_BYTES, PER_CLASS_AUTO_BYTES, ClassStats


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The concatenation of ``parts``, which is replaced by it (concatenated once, then kept)."""
    if len(parts) > 1:
        parts[:] = [torch.cat(parts)]  # (N,)
    return parts[0] if parts else torch.zeros(0, dtype=F64)  # (N,)


class SampleStats:
    """Second pass over the features, given the final :class:`ClassStats` of the same split.

    Accumulates: NCC agreement counts (needs W), cosine margins (needs W; the N margins are kept as
    floats — never the features), and, when ``class_gram`` (default: the ClassStats has no per-class
    scatter and K·d²·8 ≤ 1 GiB), per-class scatter about the final means for the nuclear-norm ratios.
    Batch order and splitting do not matter.
    """

    def __init__(self, stats: ClassStats, weight: Any = None, bias: Any = None, *,
                 class_gram: bool | None = None):
        if not isinstance(stats, ClassStats):
            raise ValueError(f"stats: expected a ClassStats, got {type(stats).__name__}")
        self.stats = stats
        K, d = stats.num_classes, stats.dim
        dev = stats.device
        self.W, self.b = check_classifier(weight, bias, K, d, dev)
        self.empty_classes = stats.empty_classes
        self._shift = stats.shift  # (d,) work in the ClassStats' shifted frame
        self._rel_g = stats.relative_global_mean()  # (d,) μ_G − shift
        self._mu_g = stats.global_mean  # (d,)
        self._means = stats.means  # (K, d)
        self._mc = stats.centred_means("global")  # (K, d) μ_k − μ_G
        self._mc_sq = (self._mc * self._mc).sum(1)  # (K,) ‖μ_k − μ_G‖²
        if self.W is not None:
            w_bar = self.W.mean(0, keepdim=True)  # (1, d)
            wc = self.W - w_bar  # (K, d) rows w_k − w̄
            self._wc_norm = torch.linalg.vector_norm(wc, dim=1)  # (K,)
            # ‖w_k − w̄‖ at or below w̄'s own rounding (K·eps·max‖w_j‖, ×4) is a row equal to the mean
            self._flat_tol = 4 * K * EPS64 * float(torch.linalg.vector_norm(self.W, dim=1).max())
            # xc·w_k = xc·(w_k − w̄) + xc·w̄: as accurate as the direct product, one column instead of K
            self._proj_t = torch.cat([wc, w_bar, self._mc.nan_to_num(0.0)]).contiguous()  # (2K + 1, d)
            self._w_mu = self.W @ self._mu_g  # (K,) W μ_G
            self._offset_proj = self.products(self._mc.nan_to_num(0.0))  # (2K + 1, K) products of μ_k − μ_G
            # rounding scale of the rebuilt logits: |W h| ≤ max‖w_k‖ (‖h − μ_G‖ + ‖μ_G‖), plus |b|
            self._w_max = float(torch.linalg.vector_norm(self.W, dim=1).max())
            self._mu_g_norm = float(torch.linalg.vector_norm(self._mu_g))
            self._b_max = float(self.b.abs().max()) if self.b is not None else 0.0
        self.num_samples = 0
        # per-class counts and Σ (h − μ_G) of what _chunk saw, to tell a pass over other samples (a shuffled
        # loader with drop_last) from the ClassStats' split; off where the rows are the ClassStats' own
        self._seen_counts = torch.zeros(K, dtype=torch.int64, device=dev)  # (K,)
        self._seen_sums: torch.Tensor | None = torch.zeros(K, d, dtype=F64, device=dev)  # (K, d)
        self._seen_eps = EPS64  # the largest machine epsilon of the features seen (their own rounding)
        self._match = torch.zeros((), dtype=torch.int64, device=dev)  # ()
        self._agree = torch.zeros((), dtype=torch.int64, device=dev)  # ()
        self._margins: list[torch.Tensor] = []
        self._margins_logit: list[torch.Tensor] = []
        if class_gram is None:
            class_gram = self.grams_by_default(stats)
        self.class_gram = bool(class_gram)
        self._grams = torch.zeros(K, d, d, dtype=F64, device=dev) if self.class_gram else None  # (K, d, d)
        self.class_ratios: torch.Tensor | None = None  # (K,) ‖X_k‖_*/‖X_k‖_F once known
        self.class_ratio_reason = ("per-class Gram matrices not accumulated (K·d² too large or "
                                   "class_gram=False)")

    @staticmethod
    def grams_by_default(stats: ClassStats) -> bool:
        """Whether a SampleStats of ``stats`` accumulates per-class Grams unless told: the ClassStats keeps no
        per-class scatter and K·d²·8 ≤ PER_CLASS_AUTO_BYTES."""
        return not stats.per_class and stats.num_classes * stats.dim ** 2 * 8 <= PER_CLASS_AUTO_BYTES

    def update(self, features: Any, labels: Any) -> "SampleStats":
        """Add a batch (B, d) / (B,) of the same split the ClassStats was built from."""
        x = check_features(features, dim=self.stats.dim)
        y = check_labels(labels, n=x.shape[0], num_classes=self.stats.num_classes)
        self._update_checked(x, y)
        return self

    def _update_checked(self, x: torch.Tensor, y: torch.Tensor, grams: bool = True) -> None:
        dev = self.stats.device
        x, y = x.to(dev), y.to(dev)
        rows = max(1, CHUNK_BYTES // (8 * max(self.stats.dim, self.stats.num_classes)))
        for start in range(0, x.shape[0], rows):
            self._chunk(x[start:start + rows], y[start:start + rows], grams)
        self.num_samples += int(x.shape[0])

    def _chunk(self, x: torch.Tensor, y: torch.Tensor, grams: bool) -> None:
        xc = x.to(F64)  # (B, d)
        xc = xc - self._shift if xc.data_ptr() == x.data_ptr() else xc.sub_(self._shift)  # never mutate x
        xc.sub_(self._rel_g)  # (B, d) h − μ_G (via the shift: no large-offset cancellation)
        if self._seen_sums is not None:
            self._seen_counts += torch.bincount(y, minlength=self.stats.num_classes)
            self._seen_sums.index_add_(0, y, xc)
            if x.dtype.is_floating_point:
                self._seen_eps = max(self._seen_eps, torch.finfo(x.dtype).eps)
        self._per_sample(xc, y, x)
        if grams and self._grams is not None and not self.empty_classes:
            r = xc - self._mc[y]  # (B, d) h − μ_{y}
            for k in torch.unique(y).tolist():
                rk = r[y == k]  # (n_k, d)
                add_gram(self._grams[k], rk)

    def _per_sample(self, xc: torch.Tensor, y: torch.Tensor, raw: torch.Tensor) -> None:
        """NCC counts and cosine margins of centred float64 features xc = h − μ_G (B, d) of the rows ``raw``."""
        if self.W is None:
            return
        P = self.products(xc)  # (2K + 1, B): [(w_k − w̄)·xc | w̄·xc | (μ_k − μ_G)·xc]
        self._absorb(self._score(P, torch.linalg.vector_norm(xc, dim=1), y, raw))

    def products(self, r: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(2K + 1, n) products of float64 rows r (n, d) with [w_k − w̄ | w̄ | μ_k − μ_G] (in ``out`` if
        given): one sample per column, so the scores' reductions over k run along contiguous rows."""
        return torch.mm(self._proj_t, r.T, out=out)

    def _residual_scores(self, P: torch.Tensor, sq: torch.Tensor, k: int, raw: torch.Tensor) -> Scores | None:
        """The :class:`Scores` of rows ``raw`` (n, d) of one class k given as residuals r = h − μ_k (None
        without W), for :meth:`_absorb`: ``P`` (2K + 1, n) = :meth:`products` of r (OVERWRITTEN) and ``sq``
        (n,) = ‖r‖². With o = μ_k − μ_G, h − μ_G = r + o: its products are r's plus o's, and ‖h − μ_G‖² =
        ‖r‖² + 2 r·o + ‖o‖², whose terms carry rounding of eps·(‖r‖² + ‖o‖²); where that sum cancels to less than
        half of ‖r‖² + ‖o‖² (a sample near μ_G: a cosine margin of −2.8 at 1e-8 from it), the row's h − μ_G is
        formed from h instead, its products and norm taken exactly (few rows: a class's samples lie around its
        mean, away from μ_G). Reads the statistics only, so classes may be scored concurrently."""
        if self.W is None:
            return None
        K = self.stats.num_classes
        whole = sq + self._mc_sq[k]  # (n,) ‖r‖² + ‖o‖²
        norm2 = torch.add(whole, P[K + 1 + k], alpha=2.0)  # (n,) ‖h − μ_G‖²
        P += self._offset_proj[:, k:k + 1]
        near = (norm2 < 0.5 * whole).nonzero().squeeze(1)  # (m,) rows where the sum cancels
        if near.numel():
            c = raw[near].to(F64) - self._mu_g  # (m, d) h − μ_G straight from h
            P[:, near] = self.products(c)
            norm2[near] = torch.linalg.vector_norm(c, dim=1).square_()
        return self._score(P, norm2.clamp_min_(0.0).sqrt_(), k, raw)

    def _score(self, P: torch.Tensor, xc_norm: torch.Tensor, y: torch.Tensor | int, raw: torch.Tensor) -> Scores:
        """NCC counts and both cosine margins from the products P (2K + 1, B) of h − μ_G with
        [w_k − w̄ | w̄ | μ_k − μ_G] and its norms (B,) of the rows ``raw`` (B, d); ``y`` the labels, or one
        int for a one-class block."""
        K = self.stats.num_classes
        num = P[:K]  # (K, B) (w_k − w̄)·(h − μ_G)
        logits = (P[K] + self._w_mu[:, None]).add_(num)  # (K, B) bias-free logits W h = w̄·h + (w_k − w̄)·h
        match = agree = None
        if not self.empty_classes:
            ncc = ncc_predict(P[K + 1:2 * K + 1], self._mc_sq)  # (B,)
            tol = (xc_norm + self._mu_g_norm).mul_(self._w_max).add_(self._b_max).mul_(4 * raw.shape[1] * EPS64)
            agree = (ncc == self._argmax(logits, tol, raw)).sum()  # ()
            if self.b is not None:
                full = logits + self.b[:, None]  # (K, B)
                match = (ncc == self._argmax(full, tol, raw, self.b)).sum()  # ()
            else:
                match = agree
        return Scores(match, agree, cosine_margins(num, self._wc_norm, xc_norm, y, self._flat_tol),
                      cosine_margins(logits, self._wc_norm, xc_norm, y, self._flat_tol))

    def _argmax(self, A: torch.Tensor, tol: torch.Tensor, raw: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the first class of the largest entry of each column of the logits A (K, B) (W h, or W h + b:
        ``bias``), as torch's argmax. Rebuilt from centred products, logits that tie exactly (an ETF head's
        rows share entries, ReLU features have zeros) differ by rounding and would pick a winner at random:
        columns whose top two lie within ``tol`` (B,) (4·d·eps of their scale) get W h (+ b) straight from
        the rows ``raw`` (B, d) in float64 (written into A) and their first maximum."""
        near = A >= A.amax(0) - tol  # (K, B) within rounding of the top
        pred = first_true(near)  # (B,) the first near-top class
        tied = near.sum(0) > 1  # (B,)
        if bool(tied.any()):
            cols = tied.nonzero().squeeze(1)  # (m,)
            exact = self.W @ raw[cols].to(F64).T  # (K, m) W h from h
            if bias is not None:
                exact += bias[:, None]
            A[:, cols] = exact
            pred[cols] = first_index(exact, exact.amax(0))
        return pred

    def _absorb(self, scores: Scores | None) -> None:
        """Add one block's :class:`Scores` (in sample order; ``num_samples`` is the caller's to count)."""
        if scores is None:
            return
        if scores.match is not None:
            self._match += scores.match
            self._agree += scores.agree
        self._margins.append(scores.margins)
        self._margins_logit.append(scores.margins_logit)

    # -------------------------------------------------------------- results
    @property
    def ncc_match(self) -> int:
        """Samples with NCC(h) = argmax(Wh + b)."""
        return int(self._match)

    @property
    def ncc_agree(self) -> int:
        """Samples with NCC(h) = argmax(Wh) (bias ignored)."""
        return int(self._agree)

    @property
    def margins(self) -> torch.Tensor:
        """(N,) cosine margins (Guiding convention), in the order the samples were added (label-sorted
        on the resident path)."""
        return _joined(self._margins)

    @property
    def margins_logit(self) -> torch.Tensor:
        """(N,) MSE-repo cosine margins (uncentred numerator), in the order of :attr:`margins`."""
        return _joined(self._margins_logit)

    def _own_rows(self) -> "SampleStats":
        """Self, told that its rows are the ClassStats' own (the resident paths): nothing to cross-check."""
        self._seen_sums = None
        return self

    def finalize(self) -> "SampleStats":
        """Turn accumulated per-class Grams into ``class_ratios`` (idempotent)."""
        if self.class_ratios is None and self._grams is not None and not self.empty_classes:
            n, mean = self.stats.counts, self._means
            self._set_ratios((self._grams[k], int(n[k]), mean[k]) for k in range(self.stats.num_classes))
        return self

    def _set_ratios(self, classes) -> None:
        """class_ratios from (scatter about the class mean (d, d), n_k, μ_k (d,)) of each class, or the reason."""
        try:
            self.class_ratios = torch.tensor([class_rank_ratio(c, n, m) for c, n, m in classes], dtype=F64)  # (K,)
        except MetricUndefined as exc:
            self.class_ratio_reason = exc.reason

    @classmethod
    def from_features(cls, stats: ClassStats, features: Any, labels: Any, weight: Any = None,
                      bias: Any = None) -> "SampleStats":
        """All features at hand (resident): one call; per-class ratios computed class by class
        (d × d memory) when the ClassStats has no per-class scatter."""
        x = check_features(features, dim=stats.dim)
        y = check_labels(labels, n=x.shape[0], num_classes=stats.num_classes)
        return cls._from_groups(stats, [(x, y)], weight, bias)

    @classmethod
    def _from_groups(cls, stats: ClassStats, groups: list, weight: Any = None,
                     bias: Any = None, own_rows: bool = False) -> "SampleStats":
        """Resident features as a list of validated (features (B, d), labels (B,)) chunks (``own_rows``: those
        that built ``stats``, so nothing to cross-check)."""
        self = cls(stats, weight, bias, class_gram=False)
        if own_rows:
            self._own_rows()
        for x, y in groups:
            self._update_checked(x, y, grams=False)
        if not stats.per_class and not self.empty_classes:
            dev = stats.device

            means = stats.means  # (K, d)

            def centred_scatter(k: int) -> tuple[torch.Tensor, int, torch.Tensor]:
                parts = [x.to(dev)[y.to(dev) == k] for x, y in groups]
                r = torch.cat(parts).to(F64) - means[k]  # (n_k, d) h − μ_k
                c = torch.zeros(stats.dim, stats.dim, dtype=F64, device=dev)  # (d, d), upper triangle
                add_gram(c, r)
                return c, r.shape[0], means[k]

            self._set_ratios(map(centred_scatter, range(stats.num_classes)))
        return self
