"""Resident split: features label-sorted once, then each class visited in cache-sized float64 chunks."""
from __future__ import annotations

import functools
import queue

import torch

from ._blas import add_gram, column_sums
from ._parallel import class_workers, parallel_map
from ._util import F64, MetricUndefined, check_finite as check_finite_values, label_order
from ._workspace import release_workspace, sorted_buffer  # noqa: F401 - release_workspace: public here
from .nc1 import class_rank_ratios
from .ncc import SampleStats, Scores
from .stats import PER_CLASS_AUTO_BYTES, ClassStats, class_slices

#: The resident path takes splits whose features would fill at most this many float64 bytes (N·d·8).
RESIDENT_F64_BYTES = 2**29
#: Rows of a class are converted to float64 in chunks of about this size (they stay in L3 while
#: they are centred, reduced, added to the Gram and projected). GPUs take a class at once.
_CHUNK_BYTES = 2**22


def fits(n: int, dim: int, num_classes: int) -> bool:
    """Whether N = n features of dimension d take the resident path (per-class scatter on, buffer in budget)."""
    return num_classes * dim * dim * 8 <= PER_CLASS_AUTO_BYTES and n * dim * 8 <= RESIDENT_F64_BYTES


def resident_pass(batches: list, num_classes: int, dim: int, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, *,
                  check_finite: bool = False) -> tuple[ClassStats, SampleStats | None]:
    """ClassStats and (with ``weight``) SampleStats of validated (features (B, d), labels (B,)) batches on
    one device (the list is consumed). ``check_finite``: the features are not yet known to be finite —
    a ValueError counts the NaN/inf entries if sweep 1 meets any (a class sum is finite exactly when
    its rows are, float32 rows summed in float64 never overflowing), before sweep 2 uses them.

    The features are copied once, in their own dtype (promoted if batches differ), into label order:
    each class gathers its rows when the batches are consecutive rows of one tensor, a counting sort
    places each batch's rows otherwise. Sweep 1 takes each class's float64 sum (its mean); sweep 2
    visits each class again in cache-sized float64 chunks r = h − μ_k and, while the chunk is in cache,
    takes ‖r‖², adds rᵀr (its Gram) and projects r on the classifier and the centred means; the
    per-sample metrics and (on a CPU) the class's nuclear-norm ratio are then taken a class at a time from
    those (2K + 1, n_k) products and its Gram. No float64 copy of the split is made. On a CPU with T ≥ 2 torch
    threads and at least T classes, both sweeps share the classes out among T single-threaded workers
    (:func:`class_workers`); results are merged in class order either way.
    The ClassStats equals, to rounding, one fed with the same batches through ``update``.
    """
    K, d = num_classes, dim
    ys = torch.cat([y for _, y in batches])  # (N,)
    counts = torch.bincount(ys, minlength=K).tolist()  # K class sizes
    with class_workers(ys.device, sum(map(bool, counts))) as workers:
        return _sweeps(batches, ys, counts, d, weight, bias, workers, check_finite)


def _sweeps(batches: list, ys: torch.Tensor, counts: list[int], d: int, weight: torch.Tensor | None,
            bias: torch.Tensor | None, workers: int, check_finite: bool) -> tuple[ClassStats, SampleStats | None]:
    """:func:`resident_pass` given the labels ys (N,) and the K class sizes, its classes shared out among
    ``workers`` (a :func:`class_workers` value)."""
    K, N, device = len(counts), ys.shape[0], ys.device
    order = label_order(ys, K)  # (N,) sorted position → input row
    stats = ClassStats(K, d, device, per_class=True)
    rows = N if device.type != "cpu" else max(1, _CHUNK_BYTES // (8 * d))
    dtype = functools.reduce(torch.promote_types, (f.dtype for f, _ in batches))  # batches may differ
    with sorted_buffer(N, d, dtype, device) as sorted_:
        classes = list(class_slices(sorted_, counts))  # (k, (n_k, d) rows) of the non-empty classes
        source = _one_block(batches, dtype)  # (N, d), when the batches are consecutive rows of one tensor
        # Sweep 1 on the class workers too. Right after the forward pass an OpenMP thread of the caller
        # still spins for a few ms beside them: on a 2-core AMD EPYC, where the sweep took 6.2 ms in the
        # caller's thread, two workers took 7.0; on a 2-core Intel Xeon it took 16 ms and two workers 8-9.
        if source is not None:  # each class gathers its rows, and sums them while they are in cache
            inputs = [rows_k for _, rows_k in class_slices(order, counts)]  # input rows of each class
            sweep1 = parallel_map(functools.partial(_gather_mean, source),
                                  [(region, rows_k) for (_, region), rows_k in zip(classes, inputs)], workers)
        else:
            _place_batches(sorted_, order, batches, dtype)
            sweep1 = parallel_map(_class_mean, [xk for _, xk in classes], workers)
        batches.clear()
        mu = torch.zeros(K, d, dtype=F64, device=device)  # (K, d) μ_k (0 for an empty class)
        for (k, _), m in zip(classes, sweep1):
            mu[k] = m
        if check_finite and not bool(torch.isfinite(mu).all()):
            check_finite_values([sorted_])  # raises, unless float64 rows overflowed a sum (then, as in update)
        zeros = torch.zeros(K, dtype=F64, device=device)  # (K,) the sums of squares follow in sweep 2
        sizes = torch.tensor(counts, dtype=F64, device=device)  # (K,)
        stats._shift = sizes @ mu / N  # (d,) μ_G: the frame of the state (relative means μ_k − μ_G)
        stats._combine(sizes, mu - stats._shift, zeros)
        samples = SampleStats(stats, weight, bias, class_gram=False)._own_rows() if weight is not None else None
        n, means = stats.counts, stats.means  # (K,), (K, d) as the suite reads them
        free = queue.SimpleQueue()  # one float64 chunk per worker
        for _ in range(workers):
            free.put(torch.empty(min(rows, max(counts)), d, dtype=F64, device=device))  # (rows, d)

        def visit(item: tuple[int, torch.Tensor]) -> tuple[torch.Tensor, Scores | None, torch.Tensor | str | None]:
            """Sweep 2 over class k: its Gram (into the stats), Σ‖h − μ_k‖², and with W its per-sample scores
            and nuclear-norm ratio (or why it is undefined; without W the suite takes the ratios)."""
            k, xk = item
            n_k, chunk = xk.shape[0], free.get()
            try:
                sq = torch.empty(n_k, dtype=F64, device=device)  # (n_k,) ‖h − μ_k‖²
                # (2K + 1, n_k) products of the residuals, only for a SampleStats pass
                P = torch.empty(2 * K + 1, n_k, dtype=F64, device=device) if samples is not None else None
                for lo in range(0, n_k, rows):
                    r = torch.sub(xk[lo:lo + rows], mu[k], out=chunk[:min(rows, n_k - lo)])  # (n, d) h − μ_k
                    add_gram(stats._scatter[k], r)
                    torch.linalg.vector_norm(r, dim=1, out=sq[lo:lo + rows]).square_()
                    if samples is not None:
                        samples.products(r, out=P[:, lo:lo + rows])
            finally:
                free.put(chunk)
            if samples is None:
                return sq.sum(), None, None
            # on a CPU the class's nuclear-norm ratio while its scatter is in cache; elsewhere the suite takes all
            # classes in one batched factorisation and SVD (one launch and one sync instead of K)
            ratio = _class_ratio(stats._scatter[k], n[k], means[k]) if device.type == "cpu" else None
            return sq.sum(), samples._residual_scores(P, sq, k, xk), ratio

        ratios = []
        for (k, xk), (ss_k, scores, ratio) in zip(classes, parallel_map(visit, classes, workers)):
            stats._ss[k] += ss_k
            if samples is not None:
                samples._absorb(scores)
                samples.num_samples += xk.shape[0]
                ratios.append(ratio)
        if samples is not None and len(ratios) == K and all(isinstance(r, torch.Tensor) for r in ratios):
            samples.class_ratios = torch.stack(ratios)  # (K,) what the suite would take from the stats
    return stats, samples


def _class_ratio(scatter: torch.Tensor, n_k: torch.Tensor, mean: torch.Tensor) -> torch.Tensor | str:
    """‖X_k‖_*/‖X_k‖_F of one class from its scatter's upper triangle (d, d), size () and mean (d,), as
    the suite takes it — or the reason it is undefined."""
    try:
        return class_rank_ratios(scatter[None], n_k[None], mean[None])[0]
    except MetricUndefined as exc:
        return exc.reason
    except torch.linalg.LinAlgError:  # an overflowed scatter: the suite's scale check names the features
        return "the class scatter is not finite"


def _one_block(batches: list, dtype: torch.dtype) -> torch.Tensor | None:
    """The (N, d) tensor whose consecutive rows the feature batches are (views of one buffer, as the
    kept workspace or a split cut into batches gives them), or None."""
    ptr, n, first = None, 0, batches[0][0]
    for f, _ in batches:
        if f.shape[0] == 0:
            continue
        if f.dtype != dtype or not f.is_contiguous() or (ptr is not None and f.data_ptr() != ptr) or (
                f.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()):
            return None
        ptr, n = f.data_ptr() + f.numel() * f.element_size(), n + f.shape[0]
    head = next((f for f, _ in batches if f.shape[0]), first)
    return head.as_strided((n, head.shape[1]), (head.shape[1], 1))


def _gather_mean(source: torch.Tensor, item: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Sweep 1 over one class from one block: its rows of ``source`` (N, d) (``item``: its label-sorted
    slice ``region`` (n_k, d) and input rows (n_k,)) copied into the region, then their (d,) float64 mean
    while in cache."""
    region, inputs = item
    torch.index_select(source, 0, inputs, out=region)  # 60,000 × 128 float32: 2.6 ms, numpy's take 5.7 ms
    return column_sums(region) / region.shape[0]  # (d,) (1/n_k) Σ_{i∈k} h_i


def _place_batches(sorted_: torch.Tensor, order: torch.Tensor, batches: list, dtype: torch.dtype) -> None:
    """The label sort of batches in separate tensors: each batch's rows to their sorted places."""
    dest = torch.empty_like(order)  # (N,)
    dest[order] = torch.arange(order.shape[0], device=order.device)  # (N,) input row → sorted position
    start = 0
    for f, _ in batches:
        _place_rows(sorted_, dest[start:start + f.shape[0]], f.to(dtype))  # (B, d) rows to their sorted places
        start += f.shape[0]


def _place_rows(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """dst[index] = src for rows (index (B,), src (B, d)); float32/float64 on the CPU through numpy's
    row assignment (~1.5× ``index_copy_``)."""
    if dst.device.type == "cpu" and dst.dtype in (torch.float32, F64) and not src.requires_grad:
        dst.numpy()[index.numpy()] = src.numpy()
    else:
        dst.index_copy_(0, index, src)


def _class_mean(xk: torch.Tensor) -> torch.Tensor:
    """(d,) float64 mean of one class's label-sorted rows (n_k, d), float64 accumulation."""
    return column_sums(xk) / xk.shape[0]  # (d,) (1/n_k) Σ_{i∈k} h_i
