"""Checkpoints: kill-and-resume equals an uninterrupted run bitwise (CPU), cooperative stop, validate job."""
from __future__ import annotations

import math

import pytest
import torch

from nc_core.spec import RunSpec
from nc_core.train import NullReporter, fit, validate_checkpoints
from nc_core.training import checkpoint as ck


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded CPU spinning threads cost 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec4(**over) -> RunSpec:
    """4 digits-MLP epochs exercising augmentation, momentum, a schedule and both eval splits."""
    tree = {"seed": 3, "epochs": 4, "batch_size": 128, "device": "cpu", "deterministic": True,
            "data": {"name": "digits", "augment": "crop_flip"}, "model": {"name": "mlp", "width": 32, "depth": 2},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "schedule": {"name": "multistep", "milestones": [0.5]},
            "checkpoint": {"every": 1, "keep_last": None}, **over}
    return RunSpec.model_validate(tree)


class Recorder(NullReporter):
    """Records metrics/checkpoints; optionally raises after a checkpoint or stops at (epoch, step)."""

    def __init__(self, kill_after_ckpt: int | None = None, stop_at: tuple[int, int] | None = None):
        self.metrics: dict[tuple[int, str], dict] = {}
        self.ckpts: list[tuple[int, str, int, str]] = []
        self.kill_after_ckpt, self.stop_at, self.pos = kill_after_ckpt, stop_at, (1, 0)

    def on_progress(self, epoch, step, steps_per_epoch, samples_per_s):
        self.pos = (epoch, step) if step < steps_per_epoch else (epoch + 1, 0)

    def on_metrics(self, epoch, split, metrics):
        self.metrics[(epoch, split)] = dict(metrics)

    def on_checkpoint(self, epoch, path, nbytes, sha256):
        self.ckpts.append((epoch, path, nbytes, sha256))
        if epoch == self.kill_after_ckpt:
            raise KeyboardInterrupt("simulated kill")

    def should_stop(self):
        return self.stop_at is not None and self.pos >= self.stop_at


def same(a: dict, b: dict) -> bool:
    """Exact equality of metric dicts (NaN equals NaN)."""
    if a.keys() != b.keys():
        return False
    return all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def assert_bitwise(resumed: dict, straight: dict) -> None:
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert same(resumed[key], straight[key]), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    rec = Recorder()
    out = fit(spec4(), rec, workdir=tmp_path_factory.mktemp("straight"))
    assert out["epochs_done"] == 4 and len(rec.metrics) == 8
    return rec.metrics, out


def test_stop_then_resume_equals_uninterrupted_bitwise(tmp_path, straight):
    first = Recorder(stop_at=(3, 0))
    out = fit(spec4(), first, workdir=tmp_path)
    assert out == {"epochs_done": 2, "stopped": True, "final": out["final"]} and set(out["final"]) == {"train", "test"}
    second = Recorder()
    done = fit(spec4(), second, workdir=tmp_path)
    assert done["epochs_done"] == 4 and not done["stopped"]
    assert min(e for e, _ in second.metrics) == 3  # resumed at the next epoch
    assert_bitwise({**first.metrics, **second.metrics}, straight[0])
    assert same(done["final"]["test"], straight[1]["final"]["test"])


def test_kill_after_checkpoint_then_resume_equals_uninterrupted(tmp_path, straight):
    first = Recorder(kill_after_ckpt=2)
    with pytest.raises(KeyboardInterrupt):
        fit(spec4(), first, workdir=tmp_path)
    second = Recorder()
    fit(spec4(), second, workdir=tmp_path)
    assert_bitwise({**first.metrics, **second.metrics}, straight[0])


def test_stop_mid_epoch_saves_last_completed_epoch(tmp_path, straight):
    spec = spec4(checkpoint={"every": 3, "keep_last": None})  # epoch 1 is not a checkpoint epoch
    first = Recorder(stop_at=(2, 4))  # stop inside epoch 2
    out = fit(spec, first, workdir=tmp_path)
    assert out["stopped"] and out["epochs_done"] == 1
    assert [c[0] for c in first.ckpts] == [1] and list(ck.list_checkpoints(tmp_path)) == [1]
    second = Recorder()
    fit(spec, second, workdir=tmp_path)  # redoes epoch 2 from the start with the same data order
    assert_bitwise({**first.metrics, **second.metrics}, straight[0])


def test_a_checkpoint_of_a_gpu_worker_resumes_on_a_cpu_one(tmp_path, straight):
    """A CUDA generator's 16-byte state did not fit the CPU generator: a run re-queued from a GPU worker to a
    CPU one (mixed hosts, device auto) failed to resume. The data order is re-seeded each epoch anyway."""
    first = Recorder(stop_at=(2, 4))
    fit(spec4(checkpoint={"every": 3, "keep_last": None}), first, workdir=tmp_path)
    state = ck.load_checkpoint(ck.ckpt_path(tmp_path, 1))
    state["data_generator"] = torch.zeros(16, dtype=torch.uint8)  # what torch.Generator("cuda").get_state() is
    ck.save_checkpoint(tmp_path, 1, state)
    second = Recorder()
    fit(spec4(checkpoint={"every": 3, "keep_last": None}), second, workdir=tmp_path)
    assert_bitwise({**first.metrics, **second.metrics}, straight[0])


def test_stop_before_first_epoch_checkpoints_initial_state(tmp_path):
    rec = Recorder(stop_at=(1, 0))
    out = fit(spec4(), rec, workdir=tmp_path)
    assert out == {"epochs_done": 0, "stopped": True, "final": {}}
    assert [c[0] for c in rec.ckpts] == [0]


def test_checkpoint_files_sha_and_pruning(tmp_path):
    rec = Recorder()
    fit(spec4(epochs=3, checkpoint={"every": 1, "keep_last": 2}), rec, workdir=tmp_path)
    assert [c[0] for c in rec.ckpts] == [1, 2, 3]
    assert list(ck.list_checkpoints(tmp_path)) == [2, 3]  # keep_last pruning
    epoch, path, nbytes, sha = rec.ckpts[-1]
    assert ck.sha256_file(path) == sha and nbytes == len(open(path, "rb").read())
    state = ck.load_checkpoint(path)
    assert state["epoch"] == 3 and {"model", "optimizer", "scheduler", "rng", "data_generator"} <= state.keys()
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_corrupt_newest_checkpoint_falls_back(tmp_path, caplog):
    fit(spec4(epochs=2), workdir=tmp_path)
    ck.ckpt_path(tmp_path, 2).write_bytes(b"truncated")
    with caplog.at_level("WARNING", logger=ck.__name__):
        assert ck.load_newest(tmp_path)["epoch"] == 1
    assert "epoch_0002.pt is unreadable" in caplog.text and "moved aside to epoch_0002.pt.corrupt" in caplog.text
    assert list(ck.list_checkpoints(tmp_path)) == [1]  # the junk no longer counts as a kept checkpoint
    assert ck.ckpt_path(tmp_path, 2).with_name("epoch_0002.pt.corrupt").read_bytes() == b"truncated"


def test_a_workdir_is_held_by_one_run_at_a_time(tmp_path):
    with ck.workdir_lock(tmp_path):  # another run holds it (flock: another open file, as another process)
        with pytest.raises(ValueError, match=rf"workdir: {tmp_path} is in use by another run \(pid \d+\)"):
            fit(spec4(epochs=1), workdir=tmp_path)
        assert not ck.list_checkpoints(tmp_path)
    assert fit(spec4(epochs=1), workdir=tmp_path)["epochs_done"] == 1  # released
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match=r"workdir: expected a directory for the checkpoints, got a file: .*afile"):
        fit(spec4(epochs=1), workdir=afile)


def test_finished_run_resumes_to_a_no_op(tmp_path):
    first = fit(spec4(epochs=2), workdir=tmp_path)
    rec = Recorder()
    again = fit(spec4(epochs=2), rec, workdir=tmp_path)
    assert again["epochs_done"] == 2 and not rec.metrics
    assert same(again["final"]["train"], first["final"]["train"])


def test_resume_with_another_spec_is_refused(tmp_path):
    fit(spec4(epochs=1), workdir=tmp_path)
    with pytest.raises(ValueError, match=r"different spec \(seed 3 → 4\).*--no-resume.* to DELETE them"):
        fit(spec4(epochs=1, seed=4), workdir=tmp_path)
    assert fit(spec4(epochs=1, seed=4), workdir=tmp_path, resume=False)["epochs_done"] == 1


def test_validate_checkpoints_reproduces_fit_metrics(tmp_path):
    rec = Recorder()
    fit(spec4(epochs=2), rec, workdir=tmp_path)
    seen = Recorder()
    out = validate_checkpoints(spec4(epochs=2), tmp_path, epochs=[1, 2], splits=["train", "test"], reporter=seen)
    assert out["epochs"] == [1, 2]
    for epoch in (1, 2):
        for split in ("train", "test"):
            fitted = {k: v for k, v in rec.metrics[(epoch, split)].items() if k in out["metrics"][epoch][split]}
            assert same(out["metrics"][epoch][split], fitted)
            assert seen.metrics[(epoch, split)] == dict(out["metrics"][epoch][split])


def test_validate_missing_epochs_lists_available(tmp_path):
    spec = spec4(epochs=3, checkpoint={"every": 1, "keep_last": 1})
    fit(spec, workdir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"epoch\(s\) \[1\].*available epochs: \[3\]"):
        validate_checkpoints(spec, tmp_path, epochs=[1], splits=["test"], reporter=None)


def test_generator_state_is_a_function_of_seed_and_epoch():
    from nc_core.training.runtime import epoch_seed

    assert epoch_seed(3, 2) == epoch_seed(3, 2) != epoch_seed(3, 1) != epoch_seed(4, 1)
    g = torch.Generator().manual_seed(epoch_seed(3, 2))
    assert torch.equal(torch.randperm(10, generator=g), torch.randperm(10, generator=torch.Generator().manual_seed(epoch_seed(3, 2))))


class ValidateWatcher(NullReporter):
    """Records a validate job's progress; asks it to stop once ``stop_after`` checkpoints are done."""

    def __init__(self, stop_after: int | None = None):
        self.started, self.progress, self.epochs = None, [], []
        self.stop_after = stop_after

    def on_start(self, total_epochs, steps_per_epoch):
        self.started = (total_epochs, steps_per_epoch)

    def on_progress(self, epoch, step, steps_per_epoch, samples_per_s):
        assert samples_per_s > 0
        self.progress.append((epoch, step, steps_per_epoch))

    def on_metrics(self, epoch, split, metrics):
        self.epochs.append(epoch)

    def should_stop(self):
        return self.stop_after is not None and len(self.progress) >= self.stop_after


def test_validate_checkpoints_reports_progress_per_checkpoint_and_stops_between_them(tmp_path):
    spec = spec4(epochs=3, checkpoint={"every": 1, "keep_last": None})
    fit(spec, workdir=tmp_path)
    whole = ValidateWatcher()
    out = validate_checkpoints(spec, tmp_path, splits=["test"], reporter=whole)
    assert whole.started == (3, 1) and whole.progress == [(1, 1, 1), (2, 1, 1), (3, 1, 1)]
    assert out["epochs"] == [1, 2, 3] and not out["stopped"]
    cut = ValidateWatcher(stop_after=1)  # a cancel arriving while the first checkpoint is evaluated
    out = validate_checkpoints(spec, tmp_path, splits=["test"], reporter=cut)
    assert out["stopped"] and out["epochs"] == [1] and list(out["metrics"]) == [1] and cut.epochs == [1]


@pytest.mark.parametrize(("summary", "cancelled", "status"), [
    ({"epochs_done": 5, "stopped": False, "final": {}}, True, "succeeded"),  # the cancel came after the last step
    ({"epochs": [2, 3], "metrics": {}, "stopped": False}, True, "succeeded"),  # a validate job that finished
    ({"epochs_done": 2, "stopped": True, "final": {}}, True, "cancelled"),
    ({"epochs": [2], "metrics": {}, "stopped": True}, True, "cancelled"),
    ({"epochs_done": 5, "stopped": False, "final": {}}, False, "succeeded"),
    (None, True, "cancelled"),
])
def test_final_status_of_a_job(summary, cancelled, status):
    from worker.runner import final_status

    assert final_status(summary, cancelled=cancelled, lease_lost=False) == (status, None)
    assert final_status(summary, cancelled=cancelled, lease_lost=True) == ("failed", "lease lost")


def test_eta_units_per_job_kind():
    # the DB reporter's ETA is steps left × samples_per_step / rate: UFM and validate rates are per step
    from worker.runner import samples_per_step

    ufm = RunSpec.model_validate({"kind": "ufm", "ufm": {"class_counts": [5, 5]}})
    assert samples_per_step("ufm", ufm) == 1
    assert samples_per_step("validate", spec4(epochs=2)) == 1
    assert samples_per_step("train", spec4(epochs=2)) == spec4(epochs=2).batch_size


@pytest.mark.parametrize(("summary", "cancelled", "status"), [
    ({"epochs_done": 2, "stopped": True, "final": {}}, False, "interrupted"),  # back to the queue
    ({"epochs": [2], "metrics": {}, "stopped": True}, False, "interrupted"),  # a validate job too
    ({"epochs_done": 2, "stopped": True, "final": {}}, True, "cancelled"),  # a user's cancel wins
    ({"epochs_done": 5, "stopped": False, "final": {}}, False, "succeeded"),  # the stop came after the last step
])
def test_final_status_of_a_job_whose_worker_is_stopping(summary, cancelled, status):
    from worker.runner import final_status

    assert final_status(summary, cancelled=cancelled, lease_lost=False, interrupted=True) == (status, None)
