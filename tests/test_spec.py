"""RunSpec / SweepSpec validation, expansion, de-duplication and hashing."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from nc_core.spec import RunSpec, field_paths
from nc_core.spec_rules import checkpoint_epochs, eval_epochs, feature_dim
from nc_core.sweep import SpecError, SweepSpec, canonical_json, expand, get_path, set_path, spec_hash


def test_defaults_are_valid_and_frozen():
    spec = RunSpec()
    assert spec.data.name == "digits" and spec.num_classes == 10
    with pytest.raises(ValidationError):
        spec.epochs = 3  # frozen


def test_unknown_field_is_refused_with_its_path():
    with pytest.raises(ValidationError) as exc:
        RunSpec.model_validate({"loss": {"name": "ce", "gama": 2}})
    assert exc.value.errors()[0]["loc"] == ("loss", "gama")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValidationError) as exc:
        RunSpec.model_validate({"model": {"name": "resnet9"}})
    msg = str(exc.value)
    assert "model.name" in msg.replace("\n  ", ".") or ("model", "name") == exc.value.errors()[0]["loc"]
    assert "resnet18" in msg and "vgg16" in msg


@pytest.mark.parametrize("bad, field", [
    ({"head": {"name": "fixed_etf"}, "model": {"feature_dim": 5}}, "model.feature_dim"),
    ({"head": {"name": "implicit_etf"}, "optim": {"name": "lbfgs"}}, "optim.name"),
    ({"optim": {"name": "adam", "nesterov": True}}, "optim.nesterov"),
    ({"schedule": {"name": "multistep"}}, "schedule.milestones"),
    ({"epochs": 5, "eval": {"epochs": [7]}}, "eval.epochs"),
    ({"data": {"name": "digits", "class_counts": [5, 5]}}, "data.class_counts"),
    ({"kind": "ufm"}, "ufm"),
    ({"data": {"name": "gaussian"}, "model": {"name": "resnet18"}}, "model.name"),
    ({"optim": {"name": "lbfgs", "grad_clip": 1.0}}, "optim.grad_clip=1.0 with optim.name='lbfgs'"),
])
def test_impossible_combinations_name_the_field(bad, field):
    with pytest.raises(ValidationError) as exc:
        RunSpec.model_validate(bad)
    assert field in str(exc.value)


def test_feature_dim_and_schedules():
    assert feature_dim(RunSpec.model_validate({"model": {"name": "resnet18", "width": 1}})) == 512
    assert feature_dim(RunSpec.model_validate({"model": {"name": "resnet18", "width": 1, "feature_dim": 10}})) == 10
    assert feature_dim(RunSpec.model_validate({"model": {"name": "resnet50", "width": 0.3}})) == 616  # 4·round(512·0.3)
    spec = RunSpec.model_validate({"epochs": 10, "eval": {"every": 3}, "checkpoint": {"every": 4}})
    assert eval_epochs(spec) == [3, 6, 9, 10]
    assert checkpoint_epochs(spec) == [4, 8, 10]
    logs = eval_epochs(RunSpec.model_validate({"epochs": 100, "eval": {"log_points": 5}}))
    assert logs[0] == 1 and logs[-1] == 100 and logs == sorted(set(logs))


def test_field_paths_cover_nested_sections():
    paths = set(field_paths())
    assert {"loss.name", "model.width", "optim.lr", "head.depth_linear", "ufm.lambda_w", "seed"} <= paths


def test_expand_grid_zip_seeds_and_dedup():
    sweep = SweepSpec(name="s", base={"epochs": 2}, grid={"loss.name": ["ce", "mse"], "model.width": [16, 32]},
                      zip={"optim.lr": [0.1, 0.2], "optim.momentum": [0.9, 0.0]}, seeds=[0, 1])
    runs = expand(sweep)
    assert sweep.size == len(runs) == 2 * 2 * 2 * 2
    first = runs[0]
    assert first.grid == {"loss.name": "ce", "model.width": 16, "optim.lr": 0.1, "optim.momentum": 0.9}
    assert first.spec_hash == spec_hash(first.spec) and first.canonical == canonical_json(first.spec)
    assert len({r.spec_hash for r in runs}) == len(runs)
    # a grid value equal to the default and the default itself are the same run
    dup = SweepSpec(name="d", grid={"loss.name": ["ce", "ce"]}, seeds=[3])
    assert len(expand(dup)) == 1 and dup.size == 2


def test_hash_is_stable_and_includes_defaults():
    a = RunSpec.model_validate({"epochs": 3})
    b = RunSpec.model_validate({"epochs": 3, "loss": {"name": "ce"}})
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(a) != spec_hash(RunSpec.model_validate({"epochs": 4}))


@pytest.mark.parametrize("kwargs, field", [
    ({"grid": {"model.widht": [1]}}, "grid.model.widht"),
    ({"zip": {"optim.lr": [0.1], "optim.momentum": [0.9, 0.8]}}, "zip"),
    ({"grid": {"loss.name": []}}, "grid.loss.name"),
    ({"grid": {"seed": [1, 2]}}, "grid.seed"),
    ({"seeds": [1, 1]}, "seeds"),
])
def test_bad_sweeps_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as exc:
        SweepSpec(name="bad", **kwargs)
    assert field in str(exc.value)


def test_bad_grid_value_and_cap_raise_spec_error():
    with pytest.raises(SpecError) as exc:
        expand(SweepSpec(name="x", grid={"loss.name": ["ce", "hinge"]}))
    assert exc.value.field == "grid.loss.name[1]" and "hinge" in str(exc.value)
    with pytest.raises(SpecError) as exc:
        expand(SweepSpec(name="x", grid={"optim.lr": [0.1, 0.2, 0.3]}, seeds=[0, 1], max_runs=5))
    assert exc.value.field == "max_runs" and "6 runs" in str(exc.value)


def test_set_and_get_path():
    tree: dict = {}
    set_path(tree, "a.b.c", 1)
    assert tree == {"a": {"b": {"c": 1}}} and get_path(tree, "a.b.c") == 1 and get_path(tree, "a.x") is None


@pytest.mark.parametrize("name, width, d", [("mlp", 128, 128), ("resnet18", 1, 512), ("resnet50", 1, 2048),
                                            ("vgg11", 1, 512), ("wide_resnet50", 2, 2048)])
def test_width_defaults_per_architecture(name, width, d):
    spec = RunSpec(model={"name": name})
    assert spec.model.width == width and feature_dim(spec) == d
    assert RunSpec.model_validate(spec.model_dump(mode="json")) == spec  # round-trips with the width filled in


def test_a_grid_over_architectures_gives_each_its_default_width():
    runs = expand(SweepSpec(name="arch", base={"epochs": 1}, grid={"model.name": ["mlp", "resnet18"]}))
    assert {r.spec.model.name: r.spec.model.width for r in runs} == {"mlp": 128, "resnet18": 1}


@pytest.mark.parametrize("name, width", [("resnet18", 128), ("vgg16", 64), ("wide_resnet50", 17)])
def test_an_mlp_sized_width_on_a_conv_net_is_refused(name, width):
    with pytest.raises(ValidationError, match=rf"model.width: for {name} .*expected at most 16, got {width}"):
        RunSpec(model={"name": name, "width": width})
    assert RunSpec(model={"name": name, "width": 16}).model.width == 16


@pytest.mark.parametrize("path", ["epochs", "seed", "optim.lr", "data.label_noise", "model.width",
                                  "data.gaussian_classes", "ufm.iterations"])
def test_booleans_are_not_numbers(path):
    tree = {"kind": "ufm", "ufm": {}} if path.startswith("ufm.") else {}
    set_path(tree, path, True)
    with pytest.raises(ValidationError, match="expected a number, got the boolean true") as exc:
        RunSpec.model_validate(tree)
    assert ".".join(map(str, exc.value.errors()[0]["loc"])) == path
    with pytest.raises(ValidationError, match="seeds"):
        SweepSpec(name="s", seeds=[True, 2])


@pytest.mark.parametrize("name", ["fixed_etf", "implicit_etf"])
def test_an_etf_head_in_k_minus_1_dims_needs_a_bias(name):
    # ReLU features reach one orthant of the K-1 dims: without a bias some class never scores highest there
    etf = {"name": name, "bias": False}
    with pytest.raises(ValidationError, match=rf"head.name='{name}' with model.feature_dim = K-1 = 9 and "
                                              r"head.bias=false cannot learn every class.*head.bias=true"):
        RunSpec(model={"feature_dim": 9}, head=etf)
    assert RunSpec(model={"feature_dim": 9}, head={**etf, "bias": True}).head.bias
    assert RunSpec(model={"feature_dim": 10}, head=etf).model.feature_dim == 10


@pytest.mark.parametrize("milestones, epochs, says", [([0.05], 10, "the fraction 0.05 of 10 epochs is epoch 0"),
                                                      ([1.5], 10, "expected whole epochs"),
                                                      ([100], 10, "epoch 100 is not before the last epoch 10"),
                                                      ([10], 10, "epoch 10 is not before the last epoch 10"),
                                                      ([0.333], 3, "at least 1/3 or a whole epoch")])
def test_milestones_that_never_apply_are_refused(milestones, epochs, says):
    with pytest.raises(ValidationError, match=says):
        RunSpec(epochs=epochs, schedule={"name": "multistep", "milestones": milestones})
    for ok, e in (([0.1, 9], 10), ([1 / 3], 3), ([0.5], 1)):  # a 1-epoch run has nothing to decay
        assert RunSpec(epochs=e, schedule={"name": "multistep", "milestones": ok}).schedule.milestones == ok


@pytest.mark.parametrize("milestones, epochs, says", [
    ([10, 10], 20, "10 and 10 both fall on epoch 10 of 20"),
    ([0.5, 10], 20, "0.5 and 10 both fall on epoch 10 of 20"),
    ([0.3, 0.33], 5, "0.3 and 0.33 both fall on epoch 1 of 5"),
])
def test_milestones_on_the_same_epoch_are_refused(milestones, epochs, says):
    # MultiStepLR decays once per milestone; merged into one epoch they would decay once
    with pytest.raises(ValidationError, match=rf"schedule.milestones: {says} .*expected milestones on distinct epochs"):
        RunSpec(epochs=epochs, schedule={"name": "multistep", "milestones": milestones})
    assert RunSpec(epochs=epochs, schedule={"name": "multistep", "milestones": [0.3, 0.6]}).schedule.milestones


@pytest.mark.parametrize("name", ["fixed_etf", "implicit_etf"])
def test_head_weight_decay_on_a_head_without_decayed_weights_is_refused(name):
    # sep_decay puts λ_W on the head's linear weights only; an ETF head has none, so λ_W would change nothing
    base = {"head": {"name": name}, "model": {"feature_dim": 10}}
    with pytest.raises(ValidationError, match=rf"optim.weight_decay: has no effect with optim.sep_decay=true and "
                                              rf"head.name='{name}'.*expected 0, got 0.001"):
        RunSpec.model_validate({**base, "optim": {"sep_decay": True, "weight_decay": 1e-3}})
    ok = RunSpec.model_validate({**base, "optim": {"sep_decay": True, "weight_decay": 0, "feature_decay": 1e-3}})
    assert ok.optim.feature_decay == 1e-3  # λ_H still acts on the features
    assert RunSpec.model_validate({**base, "optim": {"weight_decay": 1e-3}}).optim.weight_decay == 1e-3  # joint decay
    learned = {"model": {"feature_dim": 10}, "optim": {"sep_decay": True, "weight_decay": 1e-3}}
    assert RunSpec.model_validate(learned).optim.weight_decay == 1e-3


@pytest.mark.parametrize("tree, path, says", [
    ({"eval": {"epochs": []}}, "eval.epochs", "expected at least one epoch"),
    ({"optim": {"lr": float("inf")}}, "optim.lr", "finite number"),
    ({"loss": {"gamma": float("nan")}}, "loss.gamma", "finite number"),
    ({"seed": 2**31}, "seed", "less than or equal to 2147483647"),
    ({"epochs": 10**12}, "epochs", "less than or equal to 2147483647"),
    ({"data": {"root": "/data\x00"}}, "data.root", "NUL"),
])
def test_values_the_database_or_the_trainer_cannot_hold_are_refused(tree, path, says):
    with pytest.raises(ValidationError, match=says) as exc:
        RunSpec.model_validate(tree)
    err = exc.value.errors()[0]
    assert path.startswith(".".join(map(str, err["loc"]))) and "max() arg" not in str(exc.value)


@pytest.mark.parametrize("kwargs, field", [
    ({"grid": {"loss.name": ["ce"]}, "zip": {"loss.name": ["mse", "focal"]}}, "zip.loss.name"),
    ({"base": {"seed": 5}}, "base.seed"),
    ({"name": "a\x00b"}, "name"),
    ({"seeds": [2**40]}, "seeds"),
])
def test_sweep_level_mistakes_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as exc:
        SweepSpec(**{"name": "s", **kwargs})
    assert field in str(exc.value)
    with pytest.raises(SpecError) as err:
        expand(SweepSpec(name="s", grid={"optim.lr": [0.1, float("inf")]}))
    assert err.value.field == "grid.optim.lr[1]" and "finite number" in err.value.message


def test_expand_reports_every_bad_value_once_in_axis_order():
    sweep = SweepSpec(name="s", grid={"model.width": [0, 8, -1], "optim.lr": [-1.0, 0.1]}, seeds=[0, 1])
    with pytest.raises(SpecError) as exc:
        expand(sweep)
    assert [f for f, _ in exc.value.errors] == ["grid.model.width[0]", "grid.model.width[2]", "grid.optim.lr[0]"]
    assert exc.value.field == "grid.model.width[0]" and "greater than 0" in exc.value.message
    assert str(exc.value).count("\n") == 2 and "grid.optim.lr[0]: " in str(exc.value)


def test_a_step_schedule_that_would_never_decay_is_refused():
    with pytest.raises(ValidationError, match=r"schedule.step_size: 40 is not below the 8 epochs, so the LR would "
                                              r"never decay; expected a step size in 1..7"):
        RunSpec.model_validate({"epochs": 8, "schedule": {"name": "step"}})
    assert RunSpec.model_validate({"epochs": 8, "schedule": {"name": "step", "step_size": 7}}).schedule.step_size == 7
    assert RunSpec.model_validate({"epochs": 1, "schedule": {"name": "step"}}).epochs == 1  # one epoch: no decay to miss


def test_a_sweep_lists_every_problem_of_its_shape_at_once():
    with pytest.raises(ValidationError) as info:
        SweepSpec.model_validate({"name": "x", "grid": {"optim.lrr": [0.1], "model.width": []},
                                  "zip": {"model.width": [1]}, "seeds": [1, 1]})
    msg = info.value.errors()[0]["msg"]
    assert msg.startswith("Value error, grid.optim.lrr: unknown field; did you mean 'optim.lr'?"), msg
    for also in ("; also grid.model.width: expected a non-empty list of values",
                 "; also zip.model.width: model.width is also a grid axis", "; also seeds: duplicate seeds"):
        assert also in msg, (also, msg)
