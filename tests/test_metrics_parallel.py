"""Class-parallel resident pass (T torch threads → T single-threaded class workers) and the kept-batch workspace."""
from __future__ import annotations

import math
import os
import threading
from contextlib import nullcontext
from typing import Iterator

import pytest
import torch

from nc_core.metrics import _parallel, _workspace as workspace, evaluate_split, nc_metrics, resident, suite
from test_metrics_evaluate import _same, _setup
from test_metrics_reference import CASES, GOF, _case
from metrics_reference import reference_metrics


@pytest.fixture
def torch_threads() -> Iterator[callable]:
    """Set torch's intra-op thread count for one test (restored after)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def spy_workers(monkeypatch) -> list[int]:  # noqa: ANN001
    """The ``workers`` argument of each parallel_map call the resident pass makes."""
    calls: list[int] = []
    real = _parallel.parallel_map

    def spy(fn, items, workers):  # noqa: ANN001, ANN202
        calls.append(workers)
        return real(fn, items, workers)

    monkeypatch.setattr(resident, "parallel_map", spy)
    return calls


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("name", CASES)
def test_class_workers_match_the_reference(name: str, threads: int, torch_threads, spy_workers) -> None:  # noqa: ANN001
    X, y, K, W, b = _case(name)
    torch_threads(threads)
    ours = nc_metrics(X, y, W, b, num_classes=K, gof=GOF)
    assert torch.get_num_threads() == threads  # set back after the pass
    assert spy_workers and set(spy_workers) == {threads if K >= threads else 1}
    for key, want in reference_metrics(X, y, K, W, b, gof=GOF).items():
        if math.isnan(want):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key


def test_class_workers_equal_class_after_class(torch_threads, spy_workers, monkeypatch) -> None:  # noqa: ANN001
    forward, batches, _, _, head = _setup(N=900)
    kw = dict(num_classes=4, weight=head.weight, bias=head.bias)
    torch_threads(2)
    shared = evaluate_split(forward, batches, **kw)
    monkeypatch.setattr(resident, "class_workers", lambda device, items: nullcontext(1))
    serial = evaluate_split(forward, batches, **kw)
    assert spy_workers == [2, 2, 1, 1]  # both sweeps with workers, then without
    _same(shared, serial)
    assert shared.distributions["cos_margin"] == pytest.approx(serial.distributions["cos_margin"], rel=1e-12)


def test_class_workers_place_separate_batches(torch_threads, spy_workers, monkeypatch) -> None:  # noqa: ANN001
    """Batches that are not rows of one tensor take the counting sort, then sweep 1 on the workers."""
    _, _, x, y, head = _setup(N=900)
    feats = torch.tanh(x[:, :6]).float()  # (N, 6)
    separate = lambda: [(feats[i:i + 64].clone(), y[i:i + 64]) for i in range(0, 900, 64)]  # noqa: E731
    W, b = head.weight.detach()[:, :6].contiguous(), head.bias.detach()
    torch_threads(2)
    assert resident._one_block(separate(), torch.float32) is None
    stats, samples = resident.resident_pass(separate(), 4, 6, W, b)
    monkeypatch.setattr(resident, "class_workers", lambda device, items: nullcontext(1))
    stats1, samples1 = resident.resident_pass(separate(), 4, 6, W, b)
    assert spy_workers == [2, 2, 1, 1]
    torch.testing.assert_close(stats.means, stats1.means, rtol=0, atol=0)  # the same sums, in the same order
    torch.testing.assert_close(samples.margins, samples1.margins, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(samples.class_ratios, samples1.class_ratios, rtol=1e-12, atol=0)


def test_resident_class_ratios_equal_the_suites(one_torch_thread) -> None:  # noqa: ANN001
    X, y, K, W, b = _case("imbalanced")
    batches = [(torch.as_tensor(X), torch.as_tensor(y))]
    stats, samples = resident.resident_pass(list(batches), K, X.shape[1], torch.as_tensor(W), torch.as_tensor(b))
    from_stats = suite._Ctx(stats, None, None, None, None).ratios  # the suite's batched path
    assert samples.class_ratios is not None
    torch.testing.assert_close(samples.class_ratios, from_stats, rtol=1e-13, atol=0)


def _workers(items: int) -> int:
    with _parallel.class_workers(torch.device("cpu"), items) as workers:
        return workers


def test_class_workers_need_a_class_per_thread(torch_threads) -> None:  # noqa: ANN001
    torch_threads(1)
    assert _workers(10) == 1
    torch_threads(2)
    assert _workers(10) == 2 and _workers(2) == 2 and _workers(1) == 1
    torch_threads(3)
    assert _workers(2) == 1  # fewer classes than threads: torch's threads per kernel
    with _parallel.class_workers(torch.device("meta"), 10) as workers:
        assert workers == 1
    with _parallel._STATE.lock:  # "another thread" is inside its block: this one goes class by class
        assert _workers(10) == 1
    assert torch.get_num_threads() == 3


def _threads_of_a_new_thread() -> int:
    """torch's thread count as a thread started now sees it (from the process-wide setting)."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start(), t.join()
    return seen[0]


def _probe(item: int) -> tuple[int, str, int, bool, bool]:
    return (item * item, threading.current_thread().name, torch.get_num_threads(),
            torch.is_inference_mode_enabled(), torch.is_grad_enabled())


def test_parallel_map_runs_single_threaded_workers_in_the_callers_modes(torch_threads) -> None:  # noqa: ANN001
    torch_threads(2)
    with _parallel.class_workers(torch.device("cpu"), 8) as workers:
        assert workers == 2 and torch.get_num_threads() == 1  # the caller too, inside the block
        with torch.inference_mode():
            out = _parallel.parallel_map(_probe, list(range(8)), workers)
        with torch.no_grad():
            no_grad = _parallel.parallel_map(_probe, [1, 2], workers)
    assert [o[0] for o in out] == [i * i for i in range(8)]  # item order
    assert all(name.startswith("nc-class") and n == 1 and inf for _, name, n, inf, _ in out)
    assert not any(grad for *_, grad in no_grad)
    assert torch.get_num_threads() == 2 and _threads_of_a_new_thread() == 2  # the process-wide count too
    serial = _parallel.parallel_map(_probe, [1, 2], 1)  # one worker: the caller's thread
    assert {name for _, name, *_ in serial} == {threading.current_thread().name}


def test_class_workers_pass_errors_on_and_restore_threads(torch_threads) -> None:  # noqa: ANN001
    torch_threads(2)

    def fail(item: int) -> int:
        if item == 3:
            raise ValueError("class 3")
        return item

    with pytest.raises(ValueError, match="class 3"):
        with _parallel.class_workers(torch.device("cpu"), 6) as workers:
            _parallel.parallel_map(fail, list(range(6)), workers)
    assert torch.get_num_threads() == 2 and _threads_of_a_new_thread() == 2
    assert _workers(6) == 2  # the lock is free again


def test_a_forked_child_starts_without_the_parents_threads_and_locks(torch_threads) -> None:  # noqa: ANN001
    torch_threads(2)
    with _parallel.class_workers(torch.device("cpu"), 3) as workers:
        _parallel.parallel_map(_probe, [1, 2], workers)  # the parent now keeps a pool
    assert _parallel._STATE.executor is not None
    with _parallel._STATE.lock, workspace._SORTED.lock:  # held by the parent while it forks
        pid = os.fork()
        if pid == 0:  # the child: a Celery prefork worker, say
            ok = (_parallel._STATE.executor is None and not _parallel._STATE.lock.locked()
                  and not workspace._SORTED.lock.locked() and not workspace._KEPT.lock.locked())
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_kept_batches_pack_copies_into_the_workspace() -> None:
    buf = torch.zeros(200, dtype=torch.uint8)
    kept = workspace.KeptBatches(buf)
    a, b, c = torch.arange(6.0).view(2, 3), torch.arange(10, dtype=torch.float64), torch.ones(40)
    ka, kb = kept.keep(a), kept.keep(b)
    assert torch.equal(ka, a) and torch.equal(kb, b) and ka.dtype == a.dtype and kb.shape == b.shape
    base = buf.data_ptr()
    assert ka.data_ptr() == base and kb.data_ptr() == base + 64  # 64-byte aligned slots
    kc = kept.keep(c)  # a slot at 192 of 160 bytes: no room in 200, kept as a copy of its own
    assert kc is not c and torch.equal(kc, c) and kc.data_ptr() != c.data_ptr()
    assert kept.used == 192 + 160  # what the next call's workspace is sized to
    rows = workspace.KeptBatches(torch.zeros(400, dtype=torch.uint8))
    r1, r2, r3 = rows.keep(torch.ones(3, 5)), rows.keep(torch.zeros(2, 5)), rows.keep(torch.ones(1, 5).double())
    assert r2.data_ptr() == r1.data_ptr() + 60  # same dtype and row shape: the next rows, no gap
    assert r3.data_ptr() == r1.data_ptr() + 128  # another dtype: the next 64-byte boundary
    grad = torch.ones(2, requires_grad=True)
    kg = workspace.KeptBatches(buf).keep(grad)
    assert torch.equal(kg, grad) and not kg.requires_grad and kg.data_ptr() != grad.data_ptr()
    kn = workspace.KeptBatches(None).keep(a)  # never the caller's tensor: its forward may overwrite it
    assert torch.equal(kn, a) and kn.data_ptr() != a.data_ptr()


def test_evaluations_reuse_the_kept_workspace(one_torch_thread) -> None:  # noqa: ANN001
    forward, batches, _, _, head = _setup(N=700)
    kw = dict(num_classes=4, weight=head.weight, bias=head.bias)
    resident.release_workspace()
    first = evaluate_split(forward, batches, **kw)  # sizes the workspace for the next call
    buf = workspace._KEPT.buffer
    assert buf is not None and buf.numel() >= 700 * 8 * 8  # 700 float64 features of d = 8
    again = evaluate_split(forward, batches, **kw)
    assert workspace._KEPT.buffer is buf
    with workspace._KEPT.lock:  # busy in "another thread": each batch is kept as a copy of its own
        busy = evaluate_split(forward, batches, **kw)
    _same(first, again)
    _same(first, busy)
    resident.release_workspace()
    assert workspace._KEPT.buffer is None


@pytest.mark.parametrize("threads", [1, 2])
def test_a_zero_class_matrix_leaves_the_ratios_undefined(threads: int, torch_threads) -> None:  # noqa: ANN001
    X, y, K, W, b = _case("imbalanced")
    X = X.copy()
    X[y == 2] = 0.0  # ‖X_2‖_F = 0: the nuclear-norm ratio of class 2 is undefined
    torch_threads(threads)
    out = nc_metrics(X, y, W, b, num_classes=K)
    for key in ("nuclear_frobenius", "numerical_rank"):
        assert math.isnan(out[key]) and "class feature matrix is zero" in out.reasons[key], key
    assert not math.isnan(out["nc1"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_one_block_and_separate_batches_sort_alike(dtype: torch.dtype, one_torch_thread) -> None:  # noqa: ANN001
    X, y, K, W, b = _case("imbalanced")
    x, yy = torch.as_tensor(X).to(dtype), torch.as_tensor(y)
    block = [(x[i:i + 16], yy[i:i + 16]) for i in range(0, len(yy), 16)]  # consecutive rows of x
    separate = [(f.clone(), t) for f, t in block]
    assert resident._one_block(block, dtype).data_ptr() == x.data_ptr()
    assert resident._one_block(separate, dtype) is None
    assert resident._one_block(block, torch.float64 if dtype != torch.float64 else torch.float32) is None
    assert resident._one_block(block[:2] + block[3:], dtype) is None  # a gap
    with_empty = block[:1] + [(x[:0], yy[:0])] + block[1:]
    assert resident._one_block(with_empty, dtype).shape == x.shape  # empty batches do not break a block
    W, b = torch.as_tensor(W), torch.as_tensor(b)
    gathered, s1 = resident.resident_pass(list(block), K, x.shape[1], W, b)
    placed, s2 = resident.resident_pass(list(separate), K, x.shape[1], W, b)
    assert torch.equal(gathered.means, placed.means) and torch.equal(gathered.class_scatter, placed.class_scatter)
    assert torch.equal(s1.margins, s2.margins) and s1.ncc_match == s2.ncc_match
