"""`precision`: fp32 is IEEE float32 on CUDA too, tf32 asks for TF32 tensor cores, bf16 keeps torch's defaults;
every run restores the process's flags (they are process-wide), and every torch getter of them stays readable."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from nc_core.spec import RunSpec
from nc_core.train import NullReporter, fit
from nc_core.training.runtime import determinism

B = torch.backends
DEFAULTS = (B.cudnn.allow_tf32, B.cuda.matmul.allow_tf32)  # this process's, at import


def _flags() -> tuple[bool, bool, str]:
    """What the run's convolutions and matmuls would do, through the getters a library may call."""
    return B.cudnn.allow_tf32, B.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()


@pytest.fixture(autouse=True)
def _process_state(monkeypatch):  # noqa: ANN001, ANN202
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # determinism(cuda) sets it: put back after
    yield
    B.cudnn.allow_tf32, B.cuda.matmul.allow_tf32 = DEFAULTS  # the older flags again, whatever a test set


@pytest.mark.parametrize("precision, inside", [("fp32", (False, False, "highest")), ("tf32", (True, True, "high")),
                                               ("bf16", None)])
def test_a_run_sets_its_float32_math_and_restores_the_process_flags(precision: str, inside) -> None:  # noqa: ANN001
    before = _flags()
    seen = []
    with determinism(True, torch.device("cuda"), precision):  # flags only: no CUDA needed, none initialised
        seen.append(_flags())
    assert seen == [inside or before] and _flags() == before and not torch.cuda.is_initialized()


def test_a_process_that_set_torchs_newer_flags_gets_them_set_and_restored(monkeypatch) -> None:  # noqa: ANN001
    backends = B.cudnn.conv, B.cudnn.rnn, B.cuda.matmul
    for backend in backends:
        backend.fp32_precision = "ieee"  # the newer API, against the older flags: their getters refuse to answer
    with pytest.raises(RuntimeError):
        B.cudnn.allow_tf32  # noqa: B018 - torch's refusal is what this path is for
    with determinism(True, torch.device("cuda"), "tf32"):
        assert [b.fp32_precision for b in backends] == ["tf32"] * 3
    assert [b.fp32_precision for b in backends] == ["ieee"] * 3


def test_fit_runs_under_its_precisions_flags(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    seen = []
    import nc_core.train as train

    real = train._train_epoch
    monkeypatch.setattr(train, "_train_epoch", lambda r, epoch: (seen.append(_flags()), real(r, epoch))[1])
    spec = RunSpec.model_validate({"epochs": 1, "device": "cpu", "precision": "tf32", "data": {"name": "digits"},
                                   "model": {"name": "mlp", "width": 16, "depth": 1}})
    before = _flags()
    fit(spec, NullReporter(), workdir=tmp_path)
    assert seen == [(True, True, "high")] and _flags() == before


def test_an_unknown_precision_lists_the_choices() -> None:
    with pytest.raises(ValidationError) as exc:
        RunSpec.model_validate({"precision": "fp16"})
    assert "'fp32', 'tf32' or 'bf16'" in str(exc.value)
