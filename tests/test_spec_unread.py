"""Fields a run never reads: a lone spec refuses them, a sweep where they would merge runs or none reads them."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from nc_core.cli import app
from nc_core.spec import RunSpec, field_paths
from nc_core.spec_rules import _READ_ONLY_WITH, unread_fields
from nc_core.sweep import SpecError, SweepSpec, expand

BASE = {"epochs": 3, "data": {"name": "digits"}}


@pytest.mark.parametrize("tree, field, says", [
    ({"loss": {"gamma": 1.0}}, "loss.gamma", "has no effect with loss.name='ce'; it is read only with loss.name='focal'"),
    ({"schedule": {"milestones": [2]}}, "schedule.milestones", "schedule.name='constant'; it is read only with "
                                                               "schedule.name='multistep'"),
    ({"loss": {"name": "rescaled_mse", "alpha": 1.0}}, "loss.alpha", "for rescaled MSE's α use loss.k"),
    ({"optim": {"name": "adam", "momentum": 0.5}}, "optim.momentum", "optim.name='adam'"),
    ({"optim": {"feature_decay": 0.01}}, "optim.feature_decay", "optim.sep_decay=False"),
    ({"head": {"hidden": 64}}, "head.hidden", "head.depth_linear=1"),
    ({"model": {"name": "resnet18", "depth": 2}}, "model.depth", "model.name='resnet18'"),
    ({"data": {"gaussian_dim": 4}}, "data.gaussian_dim", "data.name='digits'"),
    ({"schedule": {"name": "multistep", "milestones": [2], "step_size": 1}}, "schedule.step_size", "'multistep'"),
])
def test_unread_fields_are_named_with_the_choice_that_reads_them(tree, field, says):
    unread = unread_fields(RunSpec(**{**BASE, **tree}))
    assert list(unread) == [field] and says in unread[field] and "expected its default" in unread[field]


def test_read_fields_and_defaults_pass():
    for tree in ({"loss": {"name": "focal", "gamma": 1.0}}, {"schedule": {"name": "multistep", "milestones": [2]}},
                 {"optim": {"sep_decay": True, "feature_decay": 0.01}}, {"head": {"depth_linear": 2, "hidden": 64}},
                 {"loss": {"name": "rescaled_mse", "k": 5.0, "M": 2.0}}, {}):
        assert unread_fields(RunSpec(**{**BASE, **tree})) == {}
    assert set(_READ_ONLY_WITH) <= set(field_paths())  # every entry names a real field


def test_the_single_run_cli_refuses_an_unread_field(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "schedule": {"milestones": [2]}}))
    res = CliRunner().invoke(app, ["run", str(path), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2 and "schedule.milestones: has no effect with schedule.name='constant'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "w").exists()


def _errors(**sweep) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as err:
        expand(SweepSpec(name="x", **sweep))
    return err.value.errors


def test_a_sweep_refuses_an_axis_that_some_runs_do_not_read():
    [(field, msg)] = _errors(base=BASE, grid={"loss.name": ["ce", "focal"], "loss.gamma": [1.0, 2.0, 3.0]})
    assert field == "grid.loss.gamma" and "loss.name='ce'" in msg and "would be one run" in msg
    [(field, _)] = _errors(base={**BASE, "optim": {"name": "adam"}}, zip={"optim.momentum": [0.5, 0.8]})
    assert field == "zip.optim.momentum"


def test_a_zip_row_whose_value_is_ignored_but_repeats_no_run_is_kept():
    runs = expand(SweepSpec(name="x", base=BASE, zip={"optim.name": ["sgd", "adam"], "optim.momentum": [0.9, 0.0]}))
    assert [(r.spec.optim.name, r.spec.optim.momentum) for r in runs] == [("sgd", 0.9), ("adam", 0.0)]
    runs = expand(SweepSpec(name="x", base=BASE, grid={"loss.name": ["ce", "focal"], "loss.gamma": [1.0]}))
    assert len(runs) == 2  # one CE run: nothing repeats


def test_extending_a_sweep_stored_before_the_rule_still_works():
    from service.routers.sweeps import merge_spec
    from service.schemas import ExtendRequest

    old = SweepSpec(name="x", base=BASE, grid={"loss.name": ["ce", "focal"], "loss.gamma": [1.0, 2.0]})
    merged = merge_spec(old, ExtendRequest(seeds=[1]))
    assert len(expand(merged, refuse_unread=False)) == 8
    with pytest.raises(SpecError):
        expand(merged)


def test_a_sweep_refuses_a_base_value_no_run_reads_and_keeps_one_some_runs_read():
    [(field, msg)] = _errors(base={**BASE, "schedule": {"milestones": [2]}}, grid={"loss.name": ["ce", "focal"]})
    assert field == "base.schedule.milestones" and "schedule.name='constant'" in msg
    runs = expand(SweepSpec(name="x", base={**BASE, "loss": {"gamma": 2.0}}, grid={"loss.name": ["ce", "focal"]}))
    assert [r.spec.loss.name for r in runs] == ["ce", "focal"]  # gamma is the focal run's
    runs = expand(SweepSpec(name="x", base={**BASE, "model": {"depth": 2}}, grid={"model.name": ["mlp", "resnet18"]}))
    assert len(runs) == 2


def test_every_commented_field_of_the_example_spec_is_a_real_field():
    from nc_core.cli_examples import EXAMPLE_SPEC

    paths, section = set(field_paths()), None
    named = []
    for line in EXAMPLE_SPEC.splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.split(":")[0]
        elif line.startswith("  # ") and ":" in line:
            named.append(f"{section}.{line[4:].split(':')[0]}")
    assert len(named) >= 25 and [p for p in named if p not in paths] == []
    for path in ("loss.k", "loss.M", "loss.gamma", "loss.alpha", "data.label_noise", "model.temperature", "head.delta"):
        assert path in named


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_api_extends_a_sweep_stored_before_the_rule(app_client, monkeypatch):
    import nc_core.sweep_unread as unread_module

    body = {"name": "old", "base": BASE, "grid": {"loss.name": ["ce", "focal"], "loss.gamma": [1.0, 2.0]}}
    assert app_client.post("/sweeps", json=body).status_code == 422  # refused today
    with monkeypatch.context() as m:  # as it was stored before the rule
        m.setattr(unread_module, "unread_problems", lambda sweep, runs: [])
        sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"seeds": [1]})
    assert resp.status_code == 200 and resp.json()["added"] == 4, resp.text


def test_a_workdir_started_with_an_unread_field_still_resumes(tmp_path, monkeypatch):
    import nc_core.spec_rules as rules

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "epochs": 1, "device": "cpu", "loss": {"gamma": 2.0},
                                    "model": {"width": 16, "depth": 1}}))
    work = tmp_path / "w"
    with monkeypatch.context() as m:  # trained before the rule
        m.setattr(rules, "unread_fields", lambda spec, tree=None: {})
        assert CliRunner().invoke(app, ["run", str(path), "--workdir", str(work)]).exit_code == 0
    res = CliRunner().invoke(app, ["run", str(path), "--workdir", str(work)])
    assert res.exit_code == 0, res.output
    assert "warning: loss.gamma: has no effect with loss.name='ce'" in res.output and "nothing to train" in res.output
    res = CliRunner().invoke(app, ["run", str(path), "--workdir", str(work), "--no-resume"])
    assert res.exit_code == 2 and "error: loss.gamma" in res.output  # training it anew: refused


def test_the_fields_named_are_the_ones_that_merge_runs():
    # the CE runs differ in gamma (unread) and share an unread base alpha: gamma is named, without a KeyError
    [(field, msg)] = _errors(base={**BASE, "loss": {"alpha": 0.2}}, grid={"loss.name": ["ce", "label_smoothing"],
                                                                          "loss.gamma": [1.0, 3.0]})
    assert field == "grid.loss.gamma" and "loss.gamma: " not in msg and "has no effect with loss.name='ce'" in msg
    # a zip row's ignored momentum does not tell the merged runs apart: only gamma is named
    [(field, _)] = _errors(base=BASE, grid={"loss.name": ["ce", "focal"], "loss.gamma": [1.0, 2.0]},
                           zip={"optim.name": ["sgd", "adam"], "optim.momentum": [0.9, 0.0]})
    assert field == "grid.loss.gamma"
    # one value no run reads, as an axis, is refused as it is in the base
    [(field, _)] = _errors(base=BASE, grid={"loss.gamma": [1.0], "optim.lr": [0.1, 0.2]})
    assert field == "grid.loss.gamma"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_extending_a_sweep_made_under_the_rule_keeps_to_it(app_client):
    body = {"name": "new", "base": BASE, "grid": {"loss.name": ["ce", "focal"], "loss.gamma": [1.0]}}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"loss.gamma": [2.0]}})
    assert resp.status_code == 422 and "would be one run" in resp.text, resp.text


def test_an_axis_no_run_reads_names_all_its_values():
    """Before: 'expected its default 3.0 there, got 1.0' named one value of the axis (README paste test)."""
    [(field, msg)] = _errors(base=BASE, grid={"loss.gamma": [1.0, 2.0]})
    assert field == "grid.loss.gamma" and "has no effect with loss.name='ce'" in msg
    assert "so no run reads any of its values (1.0, 2.0); expected it swept only where it is read" in msg, msg
