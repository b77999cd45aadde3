"""UFM direct optimisation (nc-spec §5.1): balanced → simplex ETF, imbalanced bias-free → GOF."""
from __future__ import annotations

import math

import pytest

from nc_core.spec import RunSpec
from nc_core.train import NullReporter, TrainingDiverged, run_spec
from nc_core.ufm import fit_ufm


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ufm_spec(**ufm) -> RunSpec:
    base = {"class_counts": [100, 100, 100, 100], "dim": 64, "lambda_w": 5e-4, "lambda_h": 5e-4,
            "lr": 0.1, "momentum": 0.9, "iterations": 2000, "eval_every": 500}
    return RunSpec.model_validate({"kind": "ufm", "seed": 2, "device": "cpu", "ufm": {**base, **ufm}})


class Recorder(NullReporter):
    def __init__(self, stop_after: int | None = None):
        self.metrics: list[tuple[int, str, dict]] = []
        self.calls = 0
        self.stop_after = stop_after

    def on_metrics(self, epoch, split, metrics):
        self.metrics.append((epoch, split, dict(metrics)))

    def should_stop(self):
        self.calls += 1
        return self.stop_after is not None and self.calls > self.stop_after


def test_balanced_with_bias_reaches_simplex_etf(tmp_path):
    rec = Recorder()
    out = run_spec(ufm_spec(bias=True), rec, workdir=tmp_path)
    assert out["epochs_done"] == 2000 and not out["stopped"]
    assert [e for e, _, _ in rec.metrics] == [500, 1000, 1500, 2000]
    assert {s for _, s, _ in rec.metrics} == {"train"}
    m = out["final"]["train"]
    assert m["nc1"] < 1e-3
    assert m["nc2_w"] < 1e-2
    assert m["acc"] == 100.0
    assert rec.metrics[0][2]["loss"] > m["loss"]  # the objective falls
    assert (tmp_path / "ckpt" / "epoch_2000.pt").exists()


def gof_x(counts, lw, lh):
    """x_k = √(n_k/(N²λ_Wλ_H)) − 1 for L = 1 (nc-spec §5.1); > 0 means class k survives."""
    n = sum(counts)
    return [math.sqrt(c / (n * n * lw * lh)) - 1 for c in counts]


def test_imbalanced_bias_free_reaches_general_orthogonal_frame(tmp_path):
    counts = [200, 100, 50, 50]
    assert min(gof_x(counts, 5e-4, 5e-4)) > 0  # the λ's are small enough that every class survives
    out = fit_ufm(ufm_spec(class_counts=counts, bias=False, iterations=3000, eval_every=1000), workdir=tmp_path)
    m = out["final"]["train"]
    for key in ("nc2_w_gof", "nc3_wh_gof"):
        assert m[key] < 1e-2, (key, m[key])
    assert m["nc1"] < 1e-3


def test_ufm_is_seeded(tmp_path):
    spec = ufm_spec(iterations=50, eval_every=50)
    a = fit_ufm(spec, workdir=tmp_path / "a")["final"]["train"]
    b = fit_ufm(spec, workdir=tmp_path / "b")["final"]["train"]
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_ufm_cooperative_stop(tmp_path):
    out = fit_ufm(ufm_spec(), Recorder(stop_after=10), workdir=tmp_path)
    assert out["stopped"] and out["epochs_done"] == 10


def test_ufm_divergence_raises(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"at iteration \d+: .*lower ufm\.lr") as info:
        fit_ufm(ufm_spec(lr=1e4, iterations=200), workdir=tmp_path)
    assert "optim.lr" not in str(info.value) and 1 <= info.value.epoch <= 200


def _checkpoints(workdir) -> list[str]:
    return sorted(p.name for p in (workdir / "ckpt").glob("epoch_*.pt"))


def test_ufm_stopped_or_killed_then_resumed_equals_uninterrupted(tmp_path):
    spec = ufm_spec(iterations=300, eval_every=100)
    whole = Recorder()
    reference = fit_ufm(spec, whole, workdir=tmp_path / "whole")["final"]["train"]
    assert _checkpoints(tmp_path / "whole") == ["epoch_0200.pt", "epoch_0300.pt"]  # checkpoint.keep_last = 2

    # a cooperative stop inside iteration 151 saves iteration 150; the resume redoes nothing before it
    stopped = fit_ufm(spec, Recorder(stop_after=150), workdir=tmp_path / "stop")
    assert stopped["stopped"] and stopped["epochs_done"] == 150
    assert _checkpoints(tmp_path / "stop") == ["epoch_0100.pt", "epoch_0150.pt"]
    # a kill after iteration 150: only the evaluated iteration 100 is on disk
    (tmp_path / "stop" / "ckpt" / "epoch_0150.pt").rename(tmp_path / "epoch_0150.pt")
    for label, workdir in (("killed", tmp_path / "stop"), ("stopped", None)):
        if workdir is None:  # put the stop checkpoint back and resume from it instead
            (tmp_path / "stop" / "ckpt" / "epoch_0200.pt").unlink()
            (tmp_path / "stop" / "ckpt" / "epoch_0300.pt").unlink()
            (tmp_path / "epoch_0150.pt").rename(tmp_path / "stop" / "ckpt" / "epoch_0150.pt")
            workdir = tmp_path / "stop"
        again = Recorder()
        out = fit_ufm(spec, again, workdir=workdir)
        assert out["epochs_done"] == 300 and not out["stopped"], label
        assert [e for e, _, _ in again.metrics] == [200, 300], label
        assert again.metrics == whole.metrics[1:], label  # bitwise: full-batch steps, momentum restored
        assert out["final"]["train"] == reference, label


def test_ufm_resume_of_a_finished_run_trains_nothing(tmp_path):
    spec = ufm_spec(iterations=60, eval_every=30)
    first = fit_ufm(spec, workdir=tmp_path)
    rec = Recorder()
    again = fit_ufm(spec, rec, workdir=tmp_path)
    assert again == first and rec.metrics == []


def test_ufm_workdir_of_another_spec_is_refused_unless_no_resume(tmp_path):
    fit_ufm(ufm_spec(iterations=40, eval_every=20), workdir=tmp_path)
    other = ufm_spec(iterations=40, eval_every=20, lr=0.05)
    with pytest.raises(ValueError, match=r"ckpt holds checkpoints of a different spec \(ufm.lr 0.1 → 0.05\); "
                                         r".*--no-resume"):
        fit_ufm(other, workdir=tmp_path)
    out = fit_ufm(other, workdir=tmp_path, resume=False)
    assert out["epochs_done"] == 40 and _checkpoints(tmp_path) == ["epoch_0020.pt", "epoch_0040.pt"]


@pytest.mark.parametrize(("extra", "field", "counterpart"), [
    ({"optim": {"lr": 0.01}}, "optim.lr", "ufm.lr"),
    ({"epochs": 5}, "epochs", "ufm.iterations"),
    ({"loss": {"name": "mse"}}, "loss.name", None),
    ({"precision": "bf16"}, "precision", None),
    ({"data": {"name": "gaussian"}}, "data.name", "ufm.class_counts"),
])
def test_ufm_refuses_training_fields_it_would_ignore(extra, field, counterpart):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=rf"{field}: has no effect with kind='ufm'") as info:
        RunSpec.model_validate({"kind": "ufm", "ufm": {"class_counts": [5, 5]}, **extra})
    assert counterpart is None or counterpart in str(info.value)


def test_ufm_lists_every_training_field_it_would_ignore_at_once():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate({"kind": "ufm", "ufm": {"dim": 8}, "epochs": 8, "model": {"width": 16},
                                "optim": {"lr": 0.5}})
    msg = info.value.errors()[0]["msg"]
    assert msg.startswith("Value error, epochs: has no effect with kind='ufm'") and "ufm.iterations" in msg
    assert "Also without effect here: model.width (default 128.0, got 16.0; the UFM's own is ufm.dim); " \
           "optim.lr (default 0.05, got 0.5; the UFM's own is ufm.lr)" in msg


def test_ufm_accepts_the_fields_it_reads_and_defaults_spelled_out():
    spec = RunSpec.model_validate({"kind": "ufm", "seed": 4, "device": "cpu", "deterministic": False,
                                   "checkpoint": {"keep_last": None}, "loss": {"name": "ce"},
                                   "ufm": {"class_counts": [5, 5]}})
    assert RunSpec.model_validate(spec.model_dump(mode="json")) == spec  # a stored spec re-validates


def test_a_ufm_workdir_is_held_by_one_run_at_a_time(tmp_path):
    from nc_core.training import checkpoint as ck

    with ck.workdir_lock(tmp_path), pytest.raises(ValueError, match=r"is in use by another run \(pid \d+\)"):
        fit_ufm(ufm_spec(iterations=20, eval_every=10), workdir=tmp_path)
    assert fit_ufm(ufm_spec(iterations=20, eval_every=10), workdir=tmp_path)["epochs_done"] == 20
