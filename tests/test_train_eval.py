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
    # λ_W never acts on a fixed or implicit ETF head's W (a λ_W > 0 is refused): targets that assume it would be
    # scored against nothing
    base = spec().model_dump(mode="json")
    run = RunSpec.model_validate({**base, "head": {"name": head, "bias": False},
                                  "model": {"name": "mlp", "width": 16, "depth": 2, "feature_dim": 10},
                                  "optim": {**base["optim"], "weight_decay": 0.0}})
    out = fit(run, workdir=tmp_path)
    assert not any(k.endswith("_gof") for k in out["final"]["train"]), sorted(out["final"]["train"])
    assert "nc2_w_gof" in fit(spec(), workdir=tmp_path / "learned")["final"]["train"]


def test_validate_checkpoints_refuses_a_ufm_spec_by_its_kind(tmp_path):
    from nc_core.train import validate_checkpoints

    ufm = RunSpec.model_validate({"kind": "ufm", "ufm": {"class_counts": [5, 5], "iterations": 10, "eval_every": 5}})
    with pytest.raises(ValueError, match=r"kind: validate_checkpoints re-evaluates kind='train' runs, got 'ufm'"):
        validate_checkpoints(ufm, tmp_path)


def _ufm_objective(Ws: list, H: torch.Tensor, Y: torch.Tensor, lam_w: float, lam_h: float) -> torch.Tensor:
    """nc-spec §5.1: (1/2N)‖W_L⋯W_1 Hᵀ − Yᵀ‖² + (λ_W/2)Σ_l‖W_l‖² + (λ_H/2)‖H‖² (Ws first layer first)."""
    Z = H.T
    for W in Ws:
        Z = W @ Z  # (rows of W, N)
    return ((Z - Y.T).pow(2).sum() / (2 * H.shape[0]) + lam_w / 2 * sum(W.pow(2).sum() for W in Ws)
            + lam_h / 2 * H.pow(2).sum())


@pytest.mark.parametrize("scale,depth", [(1.0, 1), (15.0, 1), (1.0, 3), (4.0, 2)])
def test_gof_targets_take_the_lambdas_of_the_ufm_objective_the_run_minimises(scale, depth):
    # one epoch's mean step objective at (t·W, t·H), t^{L+1} = s, is (2s²/K) × the one-hot UFM objective at
    # (W, H) with the λ's gof_lambdas gives: the same minimisers, so the GOF targets of those λ's
    from nc_core.losses import build_loss
    from nc_core.training.optim import feature_penalty, gof_lambdas

    K, N, B, d, lam_w, lam_h = 4, 12, 4, 3, 1e-2, 3e-2
    run = RunSpec.model_validate({**spec().model_dump(mode="json"), "batch_size": B,
                                  "head": {"bias": False, "depth_linear": depth},
                                  "loss": {"name": "mse", "target_scale": scale},
                                  "optim": {"name": "sgd", "sep_decay": True, "weight_decay": lam_w,
                                            "feature_decay": lam_h}})
    g = torch.Generator().manual_seed(0)
    H = torch.randn(N, d, generator=g, dtype=torch.float64)  # (N, d)
    Ws = [torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(depth - 1)]
    Ws.append(torch.randn(K, d, generator=g, dtype=torch.float64))  # (K, d) the classifier
    y = torch.arange(N) % K  # (N,)
    t = scale ** (1.0 / (depth + 1))
    loss_fn, steps = build_loss(run.loss, K), N // B
    step_objectives = []
    for lo in range(0, N, B):
        Zb = (t * H[lo:lo + B]).T
        for W in Ws:
            Zb = (t * W) @ Zb  # (K, B) at the last layer
        step_objectives.append(float(loss_fn(Zb.T, y[lo:lo + B])) + float(feature_penalty(run, t * H[lo:lo + B]))
                               + lam_w / 2 * float(sum((t * W).pow(2).sum() for W in Ws)))
    lam_w_ufm, lam_h_ufm = gof_lambdas(run, N, K)
    ufm = float(_ufm_objective(Ws, H, torch.nn.functional.one_hot(y, K).double(), lam_w_ufm, lam_h_ufm))
    assert sum(step_objectives) / steps == pytest.approx(2 * scale**2 / K * ufm, rel=1e-5)


@pytest.mark.parametrize("change", [{"loss": {"name": "ce"}}, {"optim": {"name": "adamw", "sep_decay": True}},
                                    {"model": {"name": "mlp", "width": 16, "depth": 2, "temperature": 5.0}},
                                    {"head": {"bias": True}}, {"optim": {"name": "sgd", "sep_decay": False}}])
def test_runs_no_ufm_objective_matches_get_no_gof_targets(change):
    from nc_core.training.optim import gof_lambdas

    assert gof_lambdas(spec(), 1000, 10) is not None
    assert gof_lambdas(RunSpec.model_validate({**spec().model_dump(mode="json"), **change}), 1000, 10) is None


@pytest.mark.parametrize("batch_size", [1, 2, 673])
def test_a_batch_of_one_sample_under_batch_norm_is_refused_before_training(tmp_path, batch_size):
    # digits has 1347 training samples: 1347 mod 2 = 1347 mod 673 = 1; batch norm raises on a batch of one
    run = RunSpec.model_validate({**spec().model_dump(mode="json"), "batch_size": batch_size, "epochs": 1})
    with pytest.raises(ValueError, match=rf"batch_size: {batch_size} leaves a batch of 1 sample of the 1347 "
                                         r"training samples, .*\(e.g. \d+.*\), or model.batch_norm: false"):
        fit(run, workdir=tmp_path)
    assert not list(tmp_path.glob("**/*.pt"))  # refused before any step or checkpoint
    no_bn = RunSpec.model_validate({**run.model_dump(mode="json"),
                                    "model": {"name": "mlp", "width": 16, "depth": 2, "batch_norm": False}})
    if batch_size > 1:
        assert fit(no_bn, workdir=tmp_path / "no_bn")["epochs_done"] == 1
