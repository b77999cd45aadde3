"""Checkpoint integrity: sha256 sidecars verified on resume and validate, full-disk saves, stale temp files."""
from __future__ import annotations

import builtins
import errno
import math
import zipfile
from pathlib import Path

import pytest
import torch

from nc_core.spec import RunSpec
from nc_core.train import NullReporter, fit, validate_checkpoints
from nc_core.training import checkpoint as ck

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CHECKSUM = "does not match the checksum recorded when it was written"


def tiny(**over) -> RunSpec:
    """A seconds-long digits MLP run on the CPU, a checkpoint every epoch, all kept."""
    tree = {"seed": 0, "epochs": 2, "batch_size": 128, "device": "cpu", "deterministic": True,
            "data": {"name": "digits"}, "model": {"name": "mlp", "width": 16, "depth": 2},
            "optim": {"name": "sgd", "lr": 0.05}, "checkpoint": {"every": 1, "keep_last": None}, **over}
    return RunSpec.model_validate(tree)


class Recorder(NullReporter):
    """Records metrics and checkpoints; stops (cooperatively) once epoch ``stop_after`` is checkpointed."""

    def __init__(self, stop_after: int | None = None):
        self.metrics: dict[tuple[int, str], dict] = {}
        self.ckpts: list[tuple[int, str, int, str]] = []
        self.stop_after = stop_after

    def should_stop(self):
        return self.stop_after is not None and any(c[0] >= self.stop_after for c in self.ckpts)

    def on_metrics(self, epoch, split, metrics):
        self.metrics[(epoch, split)] = dict(metrics)

    def on_checkpoint(self, epoch, path, nbytes, sha256):
        self.ckpts.append((epoch, path, nbytes, sha256))


def flip_bytes(path: Path) -> None:
    """Flip 4 bytes in the middle of the largest tensor record (``archive/data/N``): torch.load still reads it."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[at:at + 4] = bytes(b ^ 0xFF for b in raw[at:at + 4])
    path.write_bytes(bytes(raw))


def nan_weight(path: Path) -> None:
    """Rewrite the checkpoint with one weight set to NaN (a well-formed file whose bytes changed)."""
    state = torch.load(path, weights_only=False)
    next(iter(state["model"].values())).view(-1)[0] = float("nan")
    torch.save(state, path)


@pytest.mark.parametrize("tamper", [flip_bytes, nan_weight])
def test_validate_refuses_a_checkpoint_whose_bytes_changed(tmp_path, tamper):
    fit(tiny(), workdir=tmp_path)
    tamper(ck.ckpt_path(tmp_path, 2))
    with pytest.raises(ValueError) as info:
        validate_checkpoints(tiny(), tmp_path, epochs=[1, 2], splits=["test"])
    text = str(info.value)
    assert "epoch 2" in text and str(ck.ckpt_path(tmp_path, 2)) in text and CHECKSUM in text, text
    assert validate_checkpoints(tiny(), tmp_path, epochs=[1], splits=["test"])["epochs"] == [1]  # intact one


@pytest.mark.parametrize("tamper", [flip_bytes, nan_weight])
def test_resume_moves_a_changed_newest_checkpoint_aside_and_falls_back(tmp_path, caplog, tamper):
    first = Recorder()
    fit(tiny(), first, workdir=tmp_path)
    newest = ck.ckpt_path(tmp_path, 2)
    tamper(newest)
    with caplog.at_level("WARNING", logger=ck.__name__):
        again = Recorder()
        out = fit(tiny(), again, workdir=tmp_path)  # resumes from epoch 1, trains epoch 2 again
    assert f"{newest} is unreadable (it {CHECKSUM}" in caplog.text
    assert "moved aside to epoch_0002.pt.corrupt" in caplog.text
    assert out["epochs_done"] == 2 and [c[0] for c in again.ckpts] == [2]
    redone, original = again.metrics[(2, "test")], first.metrics[(2, "test")]  # the run's epoch 2, bitwise
    assert redone.keys() == original.keys()
    assert all(redone[k] == original[k] or math.isnan(redone[k]) and math.isnan(original[k]) for k in redone)
    assert newest.with_name("epoch_0002.pt.corrupt").exists()  # kept as evidence (with its sidecar), not listed
    assert newest.with_name("epoch_0002.pt.corrupt.sha256").exists()
    assert list(ck.list_checkpoints(tmp_path)) == [1, 2] and ck.sha256_file(newest) == again.ckpts[0][3]


def test_save_writes_a_sidecar_and_files_without_one_still_load(tmp_path, caplog):
    rec = Recorder()
    fit(tiny(epochs=3, checkpoint={"every": 1, "keep_last": 2}), rec, workdir=tmp_path)
    names = sorted(p.name for p in ck.ckpt_dir(tmp_path).iterdir())
    assert names == ["epoch_0002.pt", "epoch_0002.pt.sha256", "epoch_0003.pt", "epoch_0003.pt.sha256"]  # pruned too
    epoch, path, nbytes, sha = rec.ckpts[-1]
    assert ck.sha256_file(path) == sha and Path(path).with_name("epoch_0003.pt.sha256").read_text() == (
        f"{sha}  epoch_0003.pt\n")  # the sha the worker records, in `sha256sum -c` form
    for side in ck.ckpt_dir(tmp_path).glob("*.sha256"):  # as an older ncsweep wrote them
        side.unlink()
    with caplog.at_level("WARNING", logger=ck.__name__):
        assert ck.start_state(tmp_path, True)["epoch"] == 3
        assert validate_checkpoints(tiny(epochs=3), tmp_path, splits=["test"])["epochs"] == [2, 3]
    assert not caplog.text and list(ck.list_checkpoints(tmp_path)) == [2, 3]


@pytest.mark.parametrize("sidecar", [True, False])
def test_validate_names_the_file_and_epoch_of_a_truncated_checkpoint(tmp_path, sidecar):
    fit(tiny(), workdir=tmp_path)
    path = ck.ckpt_path(tmp_path, 1)
    path.write_bytes(path.read_bytes()[:1000])
    if not sidecar:
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    with pytest.raises(ValueError) as info:
        validate_checkpoints(tiny(), tmp_path, splits=["test"])
    text = str(info.value)
    assert f"epoch 1, {path}" in text and (CHECKSUM if sidecar else "is unreadable") in text, text


def test_validate_says_when_the_checkpoint_directory_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        validate_checkpoints(tiny(), tmp_path / "run_1", splits=["test"])
    text = str(info.value)
    assert f"checkpoint directory {tmp_path / 'run_1' / 'ckpt'} does not exist" in text and "keep_last" not in text


class FullDisk:
    """builtins.open whose files named like ``match`` accept ``room`` bytes, then raise ENOSPC."""

    def __init__(self, match: str, room: int = 4096):
        self.match, self.room, self.real = match, room, builtins.open

    def __call__(self, file, mode="r", *args, **kwargs):
        f = self.real(file, mode, *args, **kwargs)
        if "w" not in mode or self.match not in Path(str(file)).name:
            return f
        room, real_write = [self.room], f.write

        def write(data):
            if len(data) > room[0]:
                raise OSError(errno.ENOSPC, "No space left on device")
            room[0] -= len(data)
            return real_write(data)

        f.write = write
        return f


@pytest.mark.parametrize("match", [".pt.", ".sha256."])  # the checkpoint's temp file, then its sidecar's
def test_a_full_disk_save_leaves_no_temp_file_and_names_the_checkpoint(tmp_path, monkeypatch, match):
    spec = tiny(epochs=3)
    fit(spec, Recorder(stop_after=2), workdir=tmp_path)
    before = {e: ck.sha256_file(p) for e, p in ck.list_checkpoints(tmp_path).items()}
    monkeypatch.setattr(builtins, "open", FullDisk(match, room=0 if match == ".sha256." else 4096))
    with pytest.raises(OSError) as info:
        fit(spec, workdir=tmp_path)
    path = ck.ckpt_path(tmp_path, 3)
    assert str(info.value) == f"could not write checkpoint epoch 3 to {path}: [Errno 28] No space left on device"
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in ck.ckpt_dir(tmp_path).iterdir() if p.name.startswith(".")) == []
    assert {e: ck.sha256_file(p) for e, p in ck.list_checkpoints(tmp_path).items()} == before  # nothing replaced
    monkeypatch.undo()
    assert fit(spec, workdir=tmp_path)["epochs_done"] == 3  # the retry has its space back


@pytest.mark.parametrize("resume", [True, False])
def test_stale_temp_files_of_earlier_processes_are_removed_when_a_run_starts(tmp_path, caplog, resume):
    fit(tiny(), Recorder(stop_after=1), workdir=tmp_path)
    d = ck.ckpt_dir(tmp_path)
    stale = [d / ".epoch_0002.pt.4242.tmp", d / ".epoch_0002.pt.sha256.4242.tmp"]
    stale[0].write_bytes(b"x" * 5000)  # a killed save, or one that failed on a full disk
    stale[1].write_text("half")
    kept = [d / "epoch_0007.pt.corrupt", d / "notes.tmp", d / ".hidden"]  # evidence and files that are not ours
    for p in kept:
        p.write_bytes(b"keep")
    with caplog.at_level("WARNING", logger=ck.__name__):
        assert fit(tiny(), workdir=tmp_path, resume=resume)["epochs_done"] == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert ".epoch_0002.pt.4242.tmp (5000 bytes)" in caplog.text
    assert list(ck.list_checkpoints(tmp_path)) == [1, 2] and ck.prune(tmp_path, 1) == [1]  # .corrupt not counted
    assert (d / "epoch_0007.pt.corrupt").exists() and list(ck.list_checkpoints(tmp_path)) == [2]


def test_validate_names_a_checkpoint_deleted_after_it_was_listed(tmp_path):
    from nc_core.training import checkpoint as ck

    with pytest.raises(FileNotFoundError, match=r"checkpoint of epoch 3, .*epoch_0003\.pt, is gone"):
        ck.load_for_validation(tmp_path / "ckpt" / "epoch_0003.pt", 3)


class Pruner(NullReporter):
    """Deletes the named epochs' checkpoints (sidecar first, as prune does) once validation has listed them."""

    def __init__(self, workdir: Path, doomed: list[int]):
        self.workdir, self.doomed = workdir, doomed

    def on_start(self, total_epochs, steps_per_epoch):
        for e in self.doomed:
            for name in (f"epoch_{e:04d}.pt.sha256", f"epoch_{e:04d}.pt"):
                (ck.ckpt_dir(self.workdir) / name).unlink()


def test_validating_all_checkpoints_skips_one_pruned_after_it_was_listed(tmp_path, caplog):
    """A validate job of every stored checkpoint failed when a prune removed one between its listing and its load."""
    spec = tiny(epochs=3)
    fit(spec, workdir=tmp_path)
    with caplog.at_level("WARNING", logger="nc_core.train"):
        out = validate_checkpoints(spec, tmp_path, splits=["test"], reporter=Pruner(tmp_path, [2]))
    assert out["epochs"] == [1, 3] and sorted(out["metrics"]) == [1, 3] and not out["stopped"]
    assert "checkpoint of epoch 2" in caplog.text and "is gone" in caplog.text


def test_validating_gone_checkpoints_asked_for_or_all_of_them_is_an_error(tmp_path):
    spec = tiny(epochs=3)
    fit(spec, workdir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint of epoch 2, .* is gone"):  # asked for by epoch
        validate_checkpoints(spec, tmp_path, epochs=[1, 2], splits=["test"], reporter=Pruner(tmp_path, [2]))
    with pytest.raises(FileNotFoundError, match=r"checkpoint of epoch 3, .* is gone"):  # every listed one went
        validate_checkpoints(spec, tmp_path, splits=["test"], reporter=Pruner(tmp_path, [1, 3]))
