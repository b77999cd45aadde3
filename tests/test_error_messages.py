"""Refusals that say what was expected and what was got: spec combinations and the CLI's SWEEP-or---run choice."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from nc_core.spec import RunSpec
from service import cli


@pytest.mark.parametrize("tree, says", [
    ({"optim": {"name": "adam", "nesterov": True}}, "got optim.name='adam', optim.momentum=0.9"),
    ({"optim": {"name": "sgd", "momentum": 0.0, "nesterov": True}}, "got optim.name='sgd', optim.momentum=0"),
    ({"ufm": {}}, "only allowed with kind='ufm', got kind='train'"),
    ({"epochs": 5, "eval": {"epochs": [2, 7]}}, "7 is past the last epoch 5; expected epochs in 1..5"),
])
def test_an_impossible_combination_says_what_it_got(tree, says):  # noqa: ANN001
    with pytest.raises(ValidationError) as exc:
        RunSpec.model_validate(tree)
    assert says in str(exc.value)


@pytest.mark.parametrize("args, given", [
    (["cancel"], "neither"),
    (["retry"], "neither"),
    (["cancel", "3", "--run", "4"], "both"),
    (["retry", "3", "--run", "4"], "both"),
])
def test_cancel_and_retry_say_whether_they_got_both_a_sweep_and_a_run_or_neither(args, given, capsys):  # noqa: ANN001
    assert cli.main(args) == 2  # refused before any request: no API needed
    err = " ".join(capsys.readouterr().err.split())  # click may wrap the message
    assert f"expected a SWEEP id or --run ID (one of them), got {given}" in err
