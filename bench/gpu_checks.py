"""CUDA-path checks for a session lent a GPU: NC metrics on the GPU equal the CPU's, fit() runs and resumes there.

Usage: python bench/gpu_checks.py [--device cuda] [--quick] [--json out.json]
(bench/gpu_checks.sh runs it with every GPU benchmark in one device call). With ``--device cpu`` the same
checks run on the CPU against the CPU, a smoke test of this script that the test suite runs. Prints one line
per check and exits 1 when one fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nc_core.metrics import evaluate_split  # noqa: E402
from nc_core.spec import RunSpec  # noqa: E402
from nc_core.train import NullReporter, fit  # noqa: E402

#: GPU float64 kernels reduce in another order than the CPU's: agreement to this relative tolerance.
RTOL = 1e-9
#: acc (percent) comes from float32 logits, whose GEMM rounding differs between devices: a few argmaxes
#: of near-tied samples may flip (each moves acc by 100/N); every other key is float64 and held to RTOL
ACC_TOL_POINTS = 0.05


def _features(n: int, d: int, K: int, seed: int = 0):
    """Labelled clustered features (n, d), labels (n,), and a classifier W (K, d), b (K,), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)  # (n,)
    centres = 3.0 * torch.randn(K, d, generator=g)  # (K, d)
    x = torch.relu(centres[y] + torch.randn(n, d, generator=g))  # (n, d)
    W = centres + 0.3 * torch.randn(K, d, generator=g)  # (K, d)
    return x, y, W, 0.1 * torch.randn(K, generator=g)


def _split(x: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, device: torch.device,
           max_resident_bytes: int):
    """evaluate_split of features already computed, cut in batches of 1024 on ``device``."""
    x, y, W, b = (t.to(device) for t in (x, y, W, b))
    batches = [(x[i:i + 1024], y[i:i + 1024]) for i in range(0, x.shape[0], 1024)]
    return evaluate_split(lambda f: (f, f @ W.T + b), batches, num_classes=W.shape[0], weight=W, bias=b,
                          max_resident_bytes=max_resident_bytes)


def _differences(got: dict, want: dict) -> list[str]:
    """Keys whose values differ beyond RTOL (NaN equals NaN), as 'key: got vs want'."""
    bad = [f"{k}: missing" for k in want if k not in got]
    for k, v in want.items():
        g = got.get(k)
        if g is None or (math.isnan(v) and math.isnan(g)):
            continue
        tol = ACC_TOL_POINTS if k == "acc" else RTOL * max(1.0, abs(v))  # acc: float32 logits' argmax may flip
        if not abs(g - v) <= tol:
            bad.append(f"{k}: {g!r} vs {v!r}")
    return bad


def check_metrics(device: torch.device, quick: bool) -> tuple[bool, str]:
    """Every NC metric of evaluate_split on ``device`` — one resident pass, and the two-pass streaming path —
    equals the CPU resident pass to RTOL."""
    x, y, W, b = _features(3_000 if quick else 60_000, 64 if quick else 128, 10)
    want = _split(x, y, W, b, torch.device("cpu"), 2**31)
    problems, seconds = [], []
    for name, limit in (("resident", 2**31), ("streaming", 0)):
        t0 = time.perf_counter()
        got = _split(x, y, W, b, device, limit)
        if device.type == "cuda":
            torch.cuda.synchronize()
        problems += [f"{name} {p}" for p in _differences(got, want)]
        seconds.append(f"{name} {time.perf_counter() - t0:.3f} s")
    detail = f"{len(want)} keys, N = {x.shape[0]}, d = {x.shape[1]}; " + ", ".join(seconds)
    return not problems, "; ".join(problems[:5]) or detail


class _Metrics(NullReporter):
    """Keeps each (epoch, split)'s metrics and can stop at an epoch boundary."""

    def __init__(self, stop_after: int | None = None):
        self.rows: dict[tuple[int, str], dict] = {}
        self.stop_after, self.done = stop_after, 0

    def on_metrics(self, epoch, split, metrics):
        self.rows[(epoch, split)] = dict(metrics)
        self.done = max(self.done, epoch)

    def should_stop(self):
        return self.stop_after is not None and self.done >= self.stop_after


def _spec(device: torch.device, **over) -> RunSpec:
    tree = {"seed": 1, "epochs": 4, "batch_size": 128, "device": device.type, "deterministic": True,
            "data": {"name": "digits", "augment": "crop_flip"}, "model": {"name": "mlp", "width": 64, "depth": 2},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "checkpoint": {"keep_last": None}, **over}
    return RunSpec.model_validate(tree)


def check_fit(device: torch.device, precision: str) -> tuple[bool, str]:
    """fit() of a digits MLP on ``device`` in ``precision``: finite metrics, and train NC1 falls."""
    rec = _Metrics()
    with tempfile.TemporaryDirectory() as work:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fit(_spec(device, precision=precision), rec, workdir=work)
    nc1 = [rec.rows[(e, "train")]["nc1"] for e in (1, 4)]
    finite = all(math.isfinite(v) for m in rec.rows.values() for k, v in m.items() if k in ("acc", "loss", "nc1"))
    peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if device.type == "cuda" else ""
    return finite and nc1[1] < nc1[0], f"train nc1 {nc1[0]:.4f} -> {nc1[1]:.4f}{peak}"


def check_resume(device: torch.device) -> tuple[bool, str]:
    """Stopped after epoch 2 and resumed equals an uninterrupted run (deterministic mode; to 1e-6 on a GPU,
    where only warn-only determinism is asked for)."""
    straight, first, second = _Metrics(), _Metrics(stop_after=2), _Metrics()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        fit(_spec(device), straight, workdir=a)
        fit(_spec(device), first, workdir=b)
        fit(_spec(device), second, workdir=b)
    tol = 0.0 if device.type == "cpu" else 1e-6
    worst = max(abs(second.rows[key][k] - v) / max(1.0, abs(v)) for key, m in straight.rows.items()
                if key[0] > 2 for k, v in m.items() if math.isfinite(v))
    return worst <= tol, f"largest relative difference after resume {worst:.2e} (allowed {tol:g})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small metric check (the CPU smoke test)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.device == "cuda":  # before the first GPU matrix product: torch reads it once per process, and the
        # setdefault in fit()'s determinism(), after check_metrics' products, would come too late for the
        # deterministic fits (a worker's job process runs fit() first: there it is in time)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_checks: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_checks on {name}, torch {torch.__version__}")
    checks = {"metrics equal the CPU's": lambda: check_metrics(device, args.quick),
              "fit fp32": lambda: check_fit(device, "fp32"),
              "fit tf32": lambda: check_fit(device, "tf32"),
              "fit bf16": lambda: check_fit(device, "bf16"),
              "resume equals uninterrupted": lambda: check_resume(device)}
    if device.type == "cpu":
        del checks["fit bf16"]  # bf16 on a CPU without native kernels is a slowness, not a check
    results = {}
    for label, run in checks.items():
        t0 = time.perf_counter()
        try:
            ok, detail = run()
        except Exception as exc:  # noqa: BLE001 - a check that raises has failed; report it and go on
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results[label] = {"ok": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 2)}
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {detail} ({results[label]['seconds']} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "checks": results}, indent=1))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
