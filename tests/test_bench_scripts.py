"""The bench scripts stay runnable: gpu_checks on the CPU (its smoke mode), train_bench on tiny sizes."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_checks  # noqa: E402


def test_gpu_checks_pass_on_the_cpu(tmp_path, capsys):
    report = tmp_path / "checks.json"
    assert gpu_checks.main(["--device", "cpu", "--quick", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "PASS  metrics equal the CPU's" in out and "PASS  resume equals uninterrupted" in out
    assert '"ok": true' in report.read_text() and '"ok": false' not in report.read_text()


def test_gpu_checks_report_a_failing_check_and_exit_1(monkeypatch, capsys):
    def broken(device, precision):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(gpu_checks, "check_fit", broken)
    monkeypatch.setattr(gpu_checks, "check_resume", lambda device: (True, "skipped here"))
    assert gpu_checks.main(["--device", "cpu", "--quick"]) == 1
    assert "FAIL  fit fp32: RuntimeError: CUDA error: an illegal memory access" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA device")
def test_gpu_checks_ask_for_the_deterministic_cublas_workspace_before_any_gpu_work(monkeypatch):
    # torch reads CUBLAS_WORKSPACE_CONFIG once, at the process's first GPU matrix product: check_metrics' come
    # before the deterministic fit() checks, whose own setdefault would be too late
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "placeholder")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    assert gpu_checks.main(["--device", "cuda"]) == 2  # no GPU here: it stops before any CUDA work
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a deterministic setting of the user's is kept
    assert gpu_checks.main(["--device", "cuda"]) == 2 and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_metric_differences_beyond_the_tolerance_are_named():
    want = {"nc1": 0.5, "nc2_w": 2.0e3, "cdnv": math.nan, "acc": 90.0}
    close = {"nc1": 0.5 + 1e-12, "nc2_w": 2.0e3 * (1 + 1e-11), "cdnv": math.nan, "acc": 90.0}
    assert gpu_checks._differences(close, want) == []
    off = {**close, "nc1": 0.5 + 1e-6, "cdnv": 0.1}
    off.pop("acc")
    assert gpu_checks._differences(off, want) == ["acc: missing", "nc1: 0.500001 vs 0.5", "cdnv: 0.1 vs nan"]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "train_bench.py"), *args], capture_output=True, text=True,
                          timeout=600)


def test_train_bench_prints_both_ratios_on_tiny_sizes():
    run = _bench("--n", "2048", "--epochs", "1", "--repeats", "1", "--eval-n", "2048", "--threads", "1")
    assert run.returncode == 0, run.stderr
    assert "speed-up" in run.stdout and "ratio" in run.stdout and "Traceback" not in run.stderr


def test_train_bench_runs_without_dataloader_workers():
    run = _bench("--n", "512", "--epochs", "1", "--threads", "1", "--workers", "0", "--skip-eval")
    assert run.returncode == 0, run.stderr
    assert "DataLoader(num_workers=0)" in run.stdout and "Traceback" not in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA device")
def test_train_bench_on_cuda_without_a_gpu_says_so():
    run = _bench("--device", "cuda")
    assert run.returncode == 2 and "torch sees no CUDA device" in run.stderr and "Traceback" not in run.stderr
