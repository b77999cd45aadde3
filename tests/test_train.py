"""fit(): NC1 falls on digits, divergence, every optimizer/schedule, bf16 autocast, sep_decay penalty."""
from __future__ import annotations

import math

import pytest
import torch

from nc_core.spec import RunSpec
from nc_core.train import NullReporter, TrainingDiverged, fit, validate_checkpoints
from nc_core.training.report import DivergenceWatch
from nc_core.training.optim import build_optimizer, closure_weight_decay, feature_penalty, param_groups
from nc_core.training.schedule import lr_factor, milestone_epochs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**over) -> RunSpec:
    """A seconds-long digits MLP run on the CPU."""
    tree = {"seed": 0, "epochs": 2, "batch_size": 128, "device": "cpu",
            "data": {"name": "digits"}, "model": {"name": "mlp", "width": 32, "depth": 2},
            "optim": {"name": "sgd", "lr": 0.05}, "checkpoint": {"keep_last": None}}
    for path, value in over.items():
        node = tree
        *head, last = path.split("__")
        for p in head:
            node = node.setdefault(p, {})
        node[last] = value
    return RunSpec.model_validate(tree)


class Recorder(NullReporter):
    def __init__(self):
        self.metrics: dict[tuple[int, str], dict] = {}
        self.progress: list[tuple] = []
        self.started = None

    def on_start(self, total_epochs, steps_per_epoch):
        self.started = (total_epochs, steps_per_epoch)

    def on_progress(self, epoch, step, steps_per_epoch, samples_per_s):
        self.progress.append((epoch, step, steps_per_epoch))

    def on_metrics(self, epoch, split, metrics):
        self.metrics[(epoch, split)] = dict(metrics)


def test_nc1_falls_over_training_on_digits(tmp_path):
    spec = tiny(epochs=30, model__width=64, optim__lr=0.1, eval__epochs=[1, 30], eval__splits=["train"],
                checkpoint__every=30)
    rec = Recorder()
    out = fit(spec, rec, workdir=tmp_path)
    first, last = rec.metrics[(1, "train")], rec.metrics[(30, "train")]
    assert last["nc1"] < 0.5 * first["nc1"], (first["nc1"], last["nc1"])
    assert last["acc"] > 95.0
    assert out == {"epochs_done": 30, "stopped": False, "final": {"train": last}}


def test_reporter_calls_and_running_stats(tmp_path):
    rec = Recorder()
    fit(tiny(), rec, workdir=tmp_path)
    steps = rec.started[1]
    assert rec.started == (2, steps) and steps == math.ceil(1347 / 128)
    assert rec.progress[-1] == (2, steps, steps) and len(rec.progress) == 2 * steps
    m = rec.metrics[(2, "train")]
    assert {"acc", "loss", "nc1", "nc2_w", "nc3", "wh_b", "running_acc", "running_loss", "lr"} <= m.keys()
    assert {"acc", "loss", "nc1"} <= rec.metrics[(2, "test")].keys()
    assert 0 <= m["running_acc"] <= 100 and m["running_loss"] > 0


def test_sorted_margin_distributions_are_reported_per_eval_epoch_and_split(tmp_path):
    class Dists(Recorder):
        def __init__(self):
            super().__init__()
            self.dists: dict[tuple[int, str, str], list[float]] = {}

        def on_distribution(self, epoch, split, key, values):
            assert (epoch, split) in self.metrics  # right after on_metrics of the same (epoch, split)
            self.dists[(epoch, split, key)] = values

    rec = Dists()
    fit(tiny(epochs=3, eval__epochs=[1, 3]), rec, workdir=tmp_path)
    assert set(rec.dists) == {(e, s, "cos_margin") for e in (1, 3) for s in ("train", "test")}
    for (epoch, split, _), values in rec.dists.items():
        m = rec.metrics[(epoch, split)]
        assert len(values) == min(1001, 1347 if split == "train" else 450) and values == sorted(values)
        assert values[0] == pytest.approx(m["cos_margin_min"], rel=1e-12)
        assert all(math.isfinite(v) and -2.0 <= v <= 2.0 for v in values)
    again = Dists()
    validate_checkpoints(tiny(epochs=3, eval__epochs=[1, 3]), tmp_path, epochs=[3], reporter=again)
    assert again.dists == {k: v for k, v in rec.dists.items() if k[0] == 3}  # deterministic CPU recompute

    class Plain:  # a reporter without on_distribution (older test doubles) still works
        on_start = on_progress = on_checkpoint = lambda self, *a: None
        on_metrics = on_start

        def should_stop(self):
            return False

    assert fit(tiny(epochs=1), Plain(), workdir=tmp_path / "plain")["epochs_done"] == 1


def test_diverging_lr_raises_with_epoch_and_step(tmp_path):
    spec = tiny(loss__name="mse", optim__lr=1e6, optim__momentum=0.0)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+: non-finite loss .*; lower optim.lr or add "
                                               r"optim.grad_clip$") as info:
        fit(spec, workdir=tmp_path)
    assert info.value.epoch == 1 and info.value.step >= 0


@pytest.mark.parametrize("optim, precision, remedy", [
    ({"name": "sgd"}, "fp32", "lower optim.lr or add optim.grad_clip"),
    ({"name": "sgd", "grad_clip": 1.0}, "fp32", "lower optim.lr"),  # clipped already
    ({"name": "lbfgs"}, "fp32", "lower optim.lr"),  # LBFGS refuses grad_clip
    ({"name": "adam"}, "bf16", "lower optim.lr or add optim.grad_clip (under bf16, also try precision='fp32')")])
def test_a_divergence_suggests_only_what_the_spec_can_change(optim, precision, remedy):
    from nc_core.training.report import divergence_remedy

    assert divergence_remedy(tiny(optim=optim, precision=precision)) == remedy


@pytest.mark.parametrize("on_host", [True, False])
def test_divergence_watch_names_the_first_bad_step(on_host):
    """CPU mode raises at the bad step itself; device mode (run here on CPU tensors) keeps the first bad step
    and raises at the next 32-step boundary or the epoch's last step, never earlier."""
    losses = [1.0, 0.5, float("nan"), 2.0, float("inf")] + [1.0] * 40
    watch = DivergenceWatch(torch.device("cpu"), steps=len(losses), on_host=on_host)
    with pytest.raises(TrainingDiverged) as info:
        for step, value in enumerate(losses):
            seen = step
            watch.see(torch.tensor(value), 3, step)
    assert (info.value.epoch, info.value.step, seen) == (3, 2, 2 if on_host else 31)
    short = DivergenceWatch(torch.device("cpu"), steps=5, on_host=on_host)  # raised by the epoch's last step
    with pytest.raises(TrainingDiverged, match="step 4"):
        for step, value in enumerate([1.0, 1.0, 1.0, 1.0, float("-inf")]):
            short.see(torch.tensor(value), 1, step)
    fine = DivergenceWatch(torch.device("cpu"), steps=40, on_host=on_host)
    for step in range(40):
        fine.see(torch.tensor(0.25), 1, step)


def test_penalties_add_no_autograd_node_when_off(tmp_path, monkeypatch):
    """Without separate decay or LBFGS the step back-propagates the data loss itself (no `+ 0.0` nodes)."""
    import nc_core.losses as losses_mod

    losses, backwards = [], []
    build = losses_mod.build_loss

    def recording_loss(*args):
        fn = build(*args)
        return lambda logits, y: losses.append(fn(logits, y)) or losses[-1]

    monkeypatch.setattr(losses_mod, "build_loss", recording_loss)
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **k: backwards.append(self))
    fit(tiny(epochs=1, eval__splits=["test"]), workdir=tmp_path)
    train_losses = [t for t in losses if t.requires_grad]
    assert backwards and len(backwards) == len(train_losses)
    assert all(b is t for b, t in zip(backwards, train_losses))


@pytest.mark.parametrize("optim", [{"name": "sgd"}, {"name": "sgd", "nesterov": True}, {"name": "adam", "lr": 1e-3},
                                   {"name": "adamw", "lr": 1e-3}, {"name": "lbfgs", "lr": 0.1}])
def test_every_optimizer_trains(tmp_path, optim):
    spec = tiny(epochs=1, optim=optim, batch_size=512, eval__splits=["train"])
    out = fit(spec, workdir=tmp_path)
    assert out["epochs_done"] == 1 and math.isfinite(out["final"]["train"]["loss"])


@pytest.mark.parametrize("schedule", [{"name": "constant"}, {"name": "step", "step_size": 1},
                                      {"name": "multistep", "milestones": [1]},
                                      {"name": "multistep", "milestones": [0.5]}, {"name": "cosine"}])
def test_every_schedule_trains(tmp_path, schedule):
    rec = Recorder()
    fit(tiny(schedule=schedule, eval__splits=["train"]), rec, workdir=tmp_path)
    lrs = [rec.metrics[(e, "train")]["lr"] for e in (1, 2)]
    assert lrs[0] == pytest.approx(0.05)
    expected = {"constant": 0.05, "step": 0.005, "multistep": 0.005, "cosine": 0.025}[schedule["name"]]
    assert lrs[1] == pytest.approx(expected)


def test_schedule_factors():
    spec = tiny(epochs=7, schedule={"name": "multistep", "milestones": [3 / 7, 5 / 7], "gamma": 0.1})
    assert milestone_epochs(spec) == [3, 5]
    for epochs, fractions, expected in ((100, [0.29, 0.57, 0.58], [29, 57, 58]), (300, [0.41, 0.69, 0.82], [123, 207, 246]),
                                        (800, [3 / 7, 5 / 7], [342, 571])):  # ⌊f·E⌋ of the fraction as written
        run = tiny(epochs=epochs, schedule={"name": "multistep", "milestones": fractions})
        assert milestone_epochs(run) == expected
    assert [round(lr_factor(spec, e), 6) for e in range(7)] == [1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    cos = tiny(epochs=4, schedule={"name": "cosine"})
    assert [lr_factor(cos, e) for e in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])


def test_bf16_autocast_on_cpu_runs(tmp_path):
    out = fit(tiny(epochs=1, precision="bf16", eval__splits=["train"]), workdir=tmp_path)
    assert math.isfinite(out["final"]["train"]["loss"]) and out["final"]["train"]["acc"] > 10


def test_bf16_without_native_kernels_warns_and_keeps_bf16(monkeypatch, caplog):
    from nc_core.training import runtime

    cpu = torch.device("cpu")
    assert isinstance(runtime.bf16_is_fast(cpu), bool)
    monkeypatch.setattr(runtime, "bf16_is_fast", lambda device: False)
    with caplog.at_level("WARNING", logger="nc_core.training"):
        msg = runtime.warn_if_slow_bf16(tiny(precision="bf16"), cpu)
    assert msg and "precision: bf16" in msg and "fp32" in msg and msg in caplog.text
    assert runtime.warn_if_slow_bf16(tiny(), cpu) is None  # fp32: nothing to say
    with runtime.autocast(tiny(precision="bf16"), cpu):  # still bf16, as the spec asks
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(runtime, "bf16_is_fast", lambda device: True)
    assert runtime.warn_if_slow_bf16(tiny(precision="bf16"), cpu) is None


def test_sep_decay_penalty_and_groups():
    from nc_core.models import build_model

    spec = tiny(optim={"name": "sgd", "sep_decay": True, "weight_decay": 0.3, "feature_decay": 0.2},
                head={"depth_linear": 2})
    model = build_model(spec, (1, 8, 8), 10)
    groups = param_groups(spec, model)
    head_w = {id(p) for p in model.head.decayed_parameters()}
    assert len(head_w) == 2  # the two head weights; the head bias is not decayed
    by_wd = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    assert by_wd[0.3] == head_w
    assert not by_wd[0.0] & head_w and len(by_wd[0.0]) == sum(1 for p in model.parameters()) - 2
    h = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # Σ‖h_i‖² = 5 + 10
    assert float(feature_penalty(spec, h)) == pytest.approx(0.5 * 0.2 * 15)
    assert feature_penalty(tiny(), h) == 0.0
    lb = spec.model_copy(update={"optim": spec.optim.model_copy(update={"name": "lbfgs"})})
    expect = 0.5 * 0.3 * sum(float(p.detach().pow(2).sum()) for p in model.head.decayed_parameters())
    assert float(closure_weight_decay(lb, model).detach()) == pytest.approx(expect, rel=1e-6)
    assert all(g["weight_decay"] == 0 for g in param_groups(lb, model))


def test_joint_decay_is_on_every_parameter():
    from nc_core.models import build_model

    spec = tiny(optim={"name": "adamw", "weight_decay": 0.01})
    model = build_model(spec, (1, 8, 8), 10)
    opt = build_optimizer(spec, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01]
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_sep_decay_run_reports_gof_metrics(tmp_path):
    spec = tiny(epochs=1, head={"bias": False}, loss__name="mse",
                optim={"name": "sgd", "sep_decay": True, "weight_decay": 1e-3, "feature_decay": 1e-3})
    out = fit(spec, workdir=tmp_path)
    assert "nc2_w_gof" in out["final"]["train"]


def test_sep_decay_step_is_the_gradient_of_the_penalised_loss(tmp_path):
    """One SGD step (lr 1, no momentum) moves every parameter by −∇(loss + λ_H/2 Σ‖h‖²) − λ_W·W_head,
    with h the un-normalised backbone output even when the head sees τ·h/‖h‖."""
    import copy

    from nc_core.train import _build, _step

    spec = tiny(model__temperature=2.0, optim={"name": "sgd", "lr": 1.0, "momentum": 0.0, "sep_decay": True,
                                         "weight_decay": 0.3, "feature_decay": 0.2})
    r = _build(spec, torch.device("cpu"), NullReporter(), tmp_path)
    xb, yb = r.x["train"][:16], r.y["train"][:16]
    ref = copy.deepcopy(r.model).train()
    h = ref.backbone(xb)  # (16, d) un-normalised features
    logits = ref.head(2.0 * torch.nn.functional.normalize(h, dim=1))  # (16, K)
    loss = r.loss_fn(logits, yb) + 0.5 * 0.2 * h.pow(2).sum()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    decayed = {id(p) for p in ref.head.decayed_parameters()}
    expect = [p - g - (0.3 * p if id(p) in decayed else 0) for p, g in zip(ref.parameters(), grads)]
    r.model.train()
    _step(r, xb, yb)
    for got, want in zip(r.model.parameters(), expect):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_step_equals_the_textbook_step(name, monkeypatch):
    """The optimizers take torch's fused step on the CPU; it must move the parameters as the for-loop
    implementation does (momentum/Nesterov for SGD, bias-corrected moments for Adam/AdamW, decay)."""
    from nc_core.models import build_model
    from nc_core.training import optim
    from nc_core.training.optim import fused_kwargs

    spec = tiny(optim={"name": name, "lr": 0.05, "weight_decay": 0.01, "momentum": 0.9, "nesterov": name == "sgd"},
                model__batch_norm=False)  # a bias before batch norm has a ~0 gradient that Adam blows up to noise
    torch.manual_seed(0)
    model = build_model(spec, (1, 8, 8), 10)
    twin = build_model(spec, (1, 8, 8), 10)
    twin.load_state_dict(model.state_dict())
    opt = build_optimizer(spec, model)
    assert all(g["fused"] for g in opt.param_groups)
    monkeypatch.setattr(optim, "fused_kwargs", lambda params: {"foreach": False})
    ref = build_optimizer(spec, twin)
    assert not any(g["fused"] for g in ref.param_groups)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        for net, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(net(x)[1], y).backward()
            o.step()
    for (k, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=k)
    assert fused_kwargs([torch.zeros(2, device="meta")]) == {}  # no fused kernel there: the default step
    assert fused_kwargs([{"params": [torch.zeros(2)]}]) == {"fused": True}


@pytest.mark.parametrize("eval_, every, epochs", [({"every": 1}, 1, 7), ({"every": 3}, 2, 10), ({"epochs": [2, 5]}, 4, 9),
                                                   ({"log_points": 5}, 3, 100), ({"every": 10}, 7, 7)])
def test_schedule_tests_agree_with_the_listed_schedules(eval_, every, epochs):
    from nc_core.spec_rules import checkpoint_epochs, eval_epochs, schedule_tests

    spec = tiny(epochs=epochs, eval=eval_, checkpoint__every=every)
    is_eval, is_checkpoint = schedule_tests(spec)
    assert [e for e in range(1, epochs + 1) if is_eval(e)] == eval_epochs(spec)
    assert [e for e in range(1, epochs + 1) if is_checkpoint(e)] == checkpoint_epochs(spec)


def test_a_run_of_a_hundred_million_epochs_starts_at_once_and_stops_when_asked(tmp_path):
    # its schedules were sets of every epoch: ~10 GB before the first step, and no cancel until then
    class StopAfterSomeSteps(Recorder):
        def should_stop(self) -> bool:
            return len(self.progress) >= 2 or len(self.metrics) > 0

    rec = StopAfterSomeSteps()
    out = fit(tiny(epochs=10**8), rec, workdir=tmp_path)
    assert out["stopped"] and out["epochs_done"] <= 1 and rec.started == (10**8, 11)
