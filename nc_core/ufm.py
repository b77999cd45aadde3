"""Unconstrained-feature-model direct optimisation (nc-spec §5.1): free features H and a deep linear classifier."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from nc_core.spec import RunSpec
from nc_core.sweep import spec_hash
from nc_core.training import checkpoint as ck
from nc_core.training.optim import fused_kwargs
from nc_core.training.report import (NullReporter, Reporter, TrainingDiverged, report_metrics, resumable_epochs,
                                     workdir_wait_s)
from nc_core.training.runtime import determinism, resolve_device, seed_everything


class UFM(torch.nn.Module):
    """H (N, d) free features, W_1..W_{L-1} (d, d) bias-free, W_L (K, d) with optional bias b (K,)."""

    def __init__(self, counts: list[int], dim: int, depth: int, bias: bool, generator: torch.Generator):
        super().__init__()
        K, N = len(counts), sum(counts)
        g = generator
        self.H = torch.nn.Parameter(0.1 * torch.randn(N, dim, generator=g))  # (N, d), N(0, 0.1²)
        shapes = [(dim, dim)] * (depth - 1) + [(K, dim)]
        # W_1..W_{L-1} (d, d), W_L (K, d), N(0, 0.1²)
        self.Ws = torch.nn.ParameterList([torch.nn.Parameter(0.1 * torch.randn(s, generator=g)) for s in shapes])
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default bias init
        self.b = torch.nn.Parameter((torch.rand(K, generator=g) * 2 - 1) * bound) if bias else None  # (K,)
        labels = torch.repeat_interleave(torch.arange(K), torch.tensor(counts))  # (N,)
        self.register_buffer("labels", labels[torch.randperm(N, generator=g)])  # shuffled, as the seed does

    def weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Product W_L ⋯ W_1 (K, d), formed in ``dtype`` when given (float64 for the metrics)."""
        W = self.Ws[0].to(dtype)  # (d, d), or (K, d) when L = 1
        for layer in self.Ws[1:]:
            W = layer.to(dtype) @ W  # (d, d), the last product (K, d)
        return W

    def objective(self, lambda_w: float, lambda_h: float) -> torch.Tensor:
        """(1/2N)‖W Hᵀ + b1ᵀ − Yᵀ‖² + λ_W/2 Σ_l‖W_l‖² + λ_H/2 ‖H‖² (bias not decayed)."""
        N, K = self.H.shape[0], self.Ws[-1].shape[0]
        logits = self.H @ self.weight().T  # (N, K)
        if self.b is not None:
            logits = logits + self.b
        Y = torch.nn.functional.one_hot(self.labels, K).to(logits.dtype)  # (N, K)
        data = (logits - Y).pow(2).sum() / (2 * N)
        decay = sum(W.pow(2).sum() for W in self.Ws)
        return data + 0.5 * lambda_w * decay + 0.5 * lambda_h * self.H.pow(2).sum()


def _metrics(model: UFM, spec: RunSpec, objective: float) -> dict[str, float]:
    from nc_core.metrics import nc_metrics

    u = spec.ufm
    W = model.weight(torch.float64).detach()  # (K, d) the product unrounded
    b = None if model.b is None else model.b.detach()
    gof = None if u.bias else {"weight_decay": u.lambda_w, "feature_decay": u.lambda_h, "depth_linear": u.depth_linear}
    m = nc_metrics(model.H.detach(), model.labels, W, b, num_classes=len(u.class_counts), gof=gof)
    m["loss"] = objective  # the full UFM objective (data + both decays)
    if "acc" not in m:
        logits = model.H.detach().to(W.dtype) @ W.T + (0 if b is None else b)  # (N, K)
        m["acc"] = 100.0 * (logits.argmax(1) == model.labels).double().mean().item()
    return m


def _state(model: UFM, opt: torch.optim.Optimizer, spec: RunSpec, it: int, final: dict) -> dict:
    """Checkpoint payload after ``it`` iterations: H, W_l, b, labels, the momentum buffers, the last metrics."""
    return {"format": 1, "epoch": it, "spec_hash": spec_hash(spec), "spec": spec.model_dump(mode="json"),
            "model": model.state_dict(), "optimizer": opt.state_dict(), "final": final}


def _restore(model: UFM, opt: torch.optim.Optimizer, spec: RunSpec, state: dict, workdir: str | Path) -> None:
    if "spec_hash" not in state or "optimizer" not in state:
        raise ValueError(f"{ck.ckpt_dir(workdir)} holds a UFM checkpoint of an older ncsweep that cannot be "
                         "resumed; use another --workdir, or --no-resume to DELETE it and start afresh there")
    ck.check_spec(state, spec, workdir)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])


def fit_ufm(spec: RunSpec, reporter: Reporter | None = None, *, workdir: str | Path, resume: bool = True) -> dict:
    """Full-batch SGD with momentum on the UFM objective; metrics every ``ufm.eval_every`` iterations.

    ``epoch`` in reporter calls is the iteration count; the split is "train". The state (H, W_l, b, labels,
    momentum buffers) is saved as ``ckpt/epoch_<iteration>.pt`` at every evaluated iteration (the last
    ``checkpoint.keep_last`` kept) and, on a cooperative stop, after the last completed iteration; a run
    resumes from the newest one (refused when it holds another spec; ``resume=False`` starts afresh) and
    then reproduces an uninterrupted run (bitwise on the CPU with ``deterministic``: the iterations are
    full-batch, no randomness after the start).
    """
    if spec.kind != "ufm" or spec.ufm is None:
        raise ValueError(f"kind: fit_ufm() needs kind='ufm' with a ufm section, got kind={spec.kind!r}")
    reporter, u = reporter or NullReporter(), spec.ufm
    device = resolve_device(spec)
    keep_last = spec.checkpoint.keep_last
    with ck.workdir_lock(workdir, workdir_wait_s(reporter), reporter.should_stop), \
            determinism(spec.deterministic, device, spec.precision):
        seed_everything(spec.seed)
        g = torch.Generator().manual_seed(spec.seed)
        model = UFM(u.class_counts, u.dim, u.depth_linear, u.bias, g).to(device)
        params = list(model.parameters())
        opt = torch.optim.SGD(params, lr=u.lr, momentum=u.momentum, **fused_kwargs(params))
        start, final = 0, {}
        if (state := ck.start_state(workdir, resume, resumable=resumable_epochs(reporter))) is not None:
            _restore(model, opt, spec, state, workdir)
            start, final = state["epoch"], state["final"]
            if (on_resume := getattr(reporter, "on_resume", None)) is not None:
                on_resume(start)
        reporter.on_start(u.iterations, 1)
        t0, saved = time.perf_counter(), start
        for it in range(start + 1, u.iterations + 1):
            if reporter.should_stop():
                if saved < it - 1:  # the last completed iteration, so that a resume continues from it
                    ck.save_pruned(workdir, it - 1, _state(model, opt, spec, it - 1, final), keep_last, reporter)
                return {"epochs_done": it - 1, "stopped": True, "final": final}
            opt.zero_grad(set_to_none=True)
            loss = model.objective(u.lambda_w, u.lambda_h)
            loss.backward()
            opt.step()
            check = it % u.eval_every == 0 or it == u.iterations
            if (device.type == "cpu" or check) and not math.isfinite(value := loss.item()):
                raise TrainingDiverged(it, 0, value, ufm=True)
            reporter.on_progress(it, 1, 1, (it - start) / max(time.perf_counter() - t0, 1e-9))
            if check:
                with torch.no_grad():
                    final = {"train": _metrics(model, spec, model.objective(u.lambda_w, u.lambda_h).item())}
                report_metrics(reporter, it, "train", final["train"])
                ck.save_pruned(workdir, it, _state(model, opt, spec, it, final), keep_last, reporter)
                saved = it
    return {"epochs_done": u.iterations, "stopped": False, "final": final}
