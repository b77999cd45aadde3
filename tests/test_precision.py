"""`precision`: fp32 is IEEE float32 on CUDA too, tf32 asks for TF32 tensor cores, bf16 keeps torch's defaults;
every run restores the process's flags (they are process-wide)."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from nc_core.spec import RunSpec
from nc_core.train import NullReporter, fit
from nc_core.training.runtime import determinism


def _flags() -> tuple[str, str, str]:
    b = torch.backends
    return b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision


@pytest.mark.parametrize("precision, inside", [("fp32", ("ieee",) * 3), ("tf32", ("tf32",) * 3), ("bf16", None)])
def test_a_run_sets_its_float32_math_and_restores_the_process_flags(precision: str, inside) -> None:  # noqa: ANN001
    before = _flags()
    seen = []
    with determinism(True, torch.device("cuda"), precision):  # flags only: no CUDA needed, none initialised
        seen.append(_flags())
    assert seen == [inside or before] and _flags() == before and not torch.cuda.is_initialized()


def test_fit_runs_under_its_precisions_flags(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    seen = []
    import nc_core.train as train

    real = train._train_epoch
    monkeypatch.setattr(train, "_train_epoch", lambda r, epoch: (seen.append(_flags()), real(r, epoch))[1])
    spec = RunSpec.model_validate({"epochs": 1, "device": "cpu", "precision": "tf32", "data": {"name": "digits"},
                                   "model": {"name": "mlp", "width": 16, "depth": 1}})
    before = _flags()
    fit(spec, NullReporter(), workdir=tmp_path)
    assert seen == [("tf32",) * 3] and _flags() == before


def test_an_unknown_precision_lists_the_choices() -> None:
    with pytest.raises(ValidationError) as exc:
        RunSpec.model_validate({"precision": "fp16"})
    assert "'fp32', 'tf32' or 'bf16'" in str(exc.value)
