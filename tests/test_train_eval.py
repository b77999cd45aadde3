"""What fit reports at evaluation: GOF targets from the training counts, eval-time divergence, emptied classes."""
from __future__ import annotations

import pytest
import torch

import nc_core.metrics as metrics
from nc_core.data import load_data
from nc_core.spec import RunSpec
from nc_core.train import TrainingDiverged, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec(**data) -> RunSpec:
    return RunSpec.model_validate({
        "seed": 0, "epochs": 1, "batch_size": 64, "device": "cpu", "checkpoint": {"keep_last": None},
        "data": {"name": "digits", **data}, "model": {"name": "mlp", "width": 16, "depth": 2},
        "head": {"bias": False}, "loss": {"name": "mse"},
        "optim": {"name": "sgd", "lr": 0.05, "sep_decay": True, "weight_decay": 1e-3, "feature_decay": 1e-3}})


def test_every_split_gets_the_gof_targets_of_the_training_counts(tmp_path, monkeypatch):
    # the test split is balanced, the training split is not: its GOF targets are the trained model's
    seen: list[list[int]] = []
    real = metrics.evaluate_split

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(list(kwargs["gof"]["class_counts"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "evaluate_split", spy)
    run = spec(per_class=40, imbalance_factor=0.25)
    out = fit(run, workdir=tmp_path)
    train_counts = torch.bincount(load_data(run).train_y, minlength=10).tolist()
    assert train_counts[0] == 40 and train_counts[-1] == 10
    assert seen == [train_counts, train_counts]  # one evaluation of each split
    assert {"nc2_w_gof", "nc2_h_gof"} <= set(out["final"]["test"])


def test_an_imbalance_that_empties_a_class_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"data.imbalance_factor: 0.01 with n_max = 50 .* class\(es\) \[8, 9\]"):
        spec(per_class=50, imbalance_factor=0.01)
    with pytest.raises(ValueError, match=r"data.imbalance_factor: 0.001 .* class\(es\) \[.*9\]"):
        load_data(RunSpec.model_validate({"data": {"name": "digits", "imbalance_factor": 0.001}}))  # n_max: when loaded
    assert spec(per_class=50, imbalance_factor=0.021).data.per_class == 50


def test_features_that_blow_up_at_evaluation_are_a_divergence(tmp_path, monkeypatch):
    # a finite training loss but NaN features when evaluated (e.g. a batch-norm-free net past its stable lr)
    real = metrics.evaluate_split

    def poisoned(forward, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        def bad(x):  # noqa: ANN001, ANN202
            feats, logits = forward(x)
            return feats.clone().fill_(float("nan")), logits
        return real(bad, *args, **kwargs)

    monkeypatch.setattr(metrics, "evaluate_split", poisoned)
    with pytest.raises(TrainingDiverged, match=r"diverged by epoch 1: the train split's features have \d+ NaN/inf"
                                               r" entries at evaluation .* lower optim.lr") as info:
        fit(spec(), workdir=tmp_path)
    assert info.value.epoch == 1 and info.value.step == -1


@pytest.mark.parametrize("head", ["fixed_etf", "implicit_etf"])
def test_an_etf_head_gets_no_gof_metrics(tmp_path, head):
    # λ_W never acts on a fixed or implicit ETF head's W: targets that assume it would be scored against nothing
    run = RunSpec.model_validate({**spec().model_dump(mode="json"), "head": {"name": head, "bias": False},
                                  "model": {"name": "mlp", "width": 16, "depth": 2, "feature_dim": 10}})
    out = fit(run, workdir=tmp_path)
    assert not any(k.endswith("_gof") for k in out["final"]["train"]), sorted(out["final"]["train"])
    assert "nc2_w_gof" in fit(spec(), workdir=tmp_path / "learned")["final"]["train"]


def test_validate_checkpoints_refuses_a_ufm_spec_by_its_kind(tmp_path):
    from nc_core.train import validate_checkpoints

    ufm = RunSpec.model_validate({"kind": "ufm", "ufm": {"class_counts": [5, 5], "iterations": 10, "eval_every": 5}})
    with pytest.raises(ValueError, match=r"kind: validate_checkpoints re-evaluates kind='train' runs, got 'ufm'"):
        validate_checkpoints(ufm, tmp_path)
