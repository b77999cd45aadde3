"""One readable training loop: fit(spec) → summary, resumable from atomic checkpoints, NC metrics at eval epochs."""
from __future__ import annotations

import copy
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nc_core.spec import RunSpec
from nc_core.spec_rules import schedule_tests
from nc_core.sweep import spec_hash
from nc_core.training import checkpoint as ck
from nc_core.training.evaluation import evaluate, gof_params, model_forward
from nc_core.training.optim import build_optimizer, closure_weight_decay, feature_penalty
from nc_core.training.report import (DivergenceWatch, NullReporter, Reporter, TrainingDiverged, divergence_remedy,
                                     report_metrics, resumable_epochs, workdir_wait_s)
from nc_core.training.runtime import (autocast, determinism, epoch_seed, resolve_device, seed_everything,
                                     wants_channels_last, warn_if_slow_bf16)
from nc_core.training.schedule import build_scheduler

log = logging.getLogger(__name__)

__all__ = ["Reporter", "NullReporter", "TrainingDiverged", "fit", "validate_checkpoints", "run_spec"]


class _Stopped(Exception):
    """Raised inside an epoch when the reporter asks to stop."""


@dataclass
class _Run:
    """Everything one training run holds (built once, restored from a checkpoint on resume)."""

    spec: RunSpec
    device: torch.device
    reporter: Any
    workdir: Path
    data: Any
    x: dict[str, torch.Tensor]  # split -> (N, C, H, W) or (N, D) on device
    y: dict[str, torch.Tensor]  # split -> (N,)
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    loss_fn: Any
    gen: torch.Generator
    takes_y: bool
    raw: dict[str, torch.Tensor] = field(default_factory=dict)  # backbone output of the last forward
    gof: dict | None = None  # the GOF parameters every evaluation scores against (gof_params), fixed for the run

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.y["train"].shape[0] // self.spec.batch_size)


def _check_batch_norm_batches(spec: RunSpec, model: torch.nn.Module, n: int) -> None:
    """Batch norm cannot train on a batch of one sample: refuse a batch_size that makes one (the last batch of
    an epoch when N mod B = 1, or every batch when B = 1) before the first step, naming the fields."""
    bs = spec.batch_size
    if not (bs == 1 or n % bs == 1) or not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    near = ", ".join(str(b) for b in sorted({bs + d for d in range(-3, 4)}) if b >= 2 and n % b != 1)
    raise ValueError(f"batch_size: {bs} leaves a batch of 1 sample of the {n} training samples, and the model's "
                     f"batch norm cannot train on one sample; expected a batch_size with N mod batch_size ≠ 1 "
                     f"(e.g. {near}), or model.batch_norm: false for an MLP")


def _build(spec: RunSpec, device: torch.device, reporter: Any, workdir: str | Path) -> _Run:
    from nc_core.data import load_data
    from nc_core.losses import build_loss
    from nc_core.models import build_model

    warn_if_slow_bf16(spec, device)
    seed_everything(spec.seed)
    data = load_data(spec, device)
    model = build_model(spec, data.input_shape, data.num_classes).to(device)
    _check_batch_norm_batches(spec, model, data.train_y.shape[0])
    x = {"train": data.train_x, "test": data.test_x}
    if wants_channels_last(device, model, data.train_x):  # conv nets on CUDA: NHWC kernels
        model = model.to(memory_format=torch.channels_last)
        x = {k: v.contiguous(memory_format=torch.channels_last) for k, v in x.items()}
        data.train_x, data.test_x = x["train"], x["test"]  # the NCHW copies go: one copy of the data on the GPU
    opt = build_optimizer(spec, model)
    r = _Run(spec, device, reporter, Path(workdir), data, x, {"train": data.train_y, "test": data.test_y}, model,
             opt, build_scheduler(spec, opt), build_loss(spec.loss, data.num_classes),
             torch.Generator(device=device), "y" in inspect.signature(model.forward).parameters)
    if spec.optim.sep_decay:  # λ_H acts on the un-normalised backbone output, before any temperature scaling
        model.backbone.register_forward_hook(lambda m, i, out: r.raw.__setitem__("h", out))
    r.gof = gof_params(spec, data.train_y, data.num_classes)  # the training labels never change: counted once
    return r


def _step(r: _Run, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns (data loss, logits), both detached."""
    spec, out = r.spec, {}

    def closure() -> torch.Tensor:
        r.opt.zero_grad(set_to_none=True)
        with autocast(spec, r.device):
            feats, logits = model_forward(r, xb, yb)  # (B, d), (B, K)
            loss = r.loss_fn(logits, yb)
            total = loss
            for penalty in (feature_penalty(spec, r.raw.get("h", feats)), closure_weight_decay(spec, r.model)):
                if isinstance(penalty, torch.Tensor):  # 0.0 when off: no op, no autograd node
                    total = total + penalty
        total.backward()
        if spec.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(r.model.parameters(), spec.optim.grad_clip)
        out.setdefault("loss", (loss.detach(), logits.detach()))  # LBFGS: the first evaluation
        return total

    if spec.optim.name == "lbfgs":
        r.opt.step(closure)
    else:
        closure()
        r.opt.step()
    return out["loss"]


def _train_epoch(r: _Run, epoch: int) -> dict[str, float]:
    """One pass over the shuffled, augmented train split; returns running loss/acc from the same forwards."""
    from nc_core.data import batches

    spec, S = r.spec, r.steps_per_epoch
    r.model.train()
    r.gen.manual_seed(epoch_seed(spec.seed, epoch))  # the order depends on (seed, epoch) only: resumable
    loss_sum = torch.zeros((), dtype=torch.float64, device=r.device)  # ()
    correct = torch.zeros((), dtype=torch.long, device=r.device)  # ()
    watch = DivergenceWatch(r.device, S, remedy=divergence_remedy(spec))
    n, t0 = 0, time.perf_counter()
    black = None  # (C,) crop_flip's padding, a black pixel normalised, on the device once (no copy per batch)
    if spec.data.augment == "crop_flip":
        black = (-torch.tensor(r.data.mean) / torch.tensor(r.data.std)).to(r.device)
    it = batches(r.x["train"], r.y["train"], spec.batch_size, shuffle=True, generator=r.gen,
                 augment=spec.data.augment, fill=black)
    for step, (xb, yb) in enumerate(it):
        if r.reporter.should_stop():
            raise _Stopped
        loss, logits = _step(r, xb, yb)
        loss_sum.add_(loss, alpha=yb.shape[0])  # float64 Σ batch mean × batch size
        correct += (logits.argmax(1) == yb).sum()
        n += yb.shape[0]
        watch.see(loss, epoch, step)
        r.reporter.on_progress(epoch, step + 1, S, n / max(time.perf_counter() - t0, 1e-9))
    return {"running_loss": float(loss_sum) / max(n, 1), "running_acc": 100.0 * int(correct) / max(n, 1),
            "lr": r.opt.param_groups[0]["lr"]}


def _state(r: _Run, epoch: int, final: dict) -> dict[str, Any]:
    """Checkpoint payload: model (incl. head buffers), optimizer, scheduler, all RNG states, epoch."""
    return {"format": 1, "epoch": epoch, "spec_hash": spec_hash(r.spec), "spec": r.spec.model_dump(mode="json"),
            "model": r.model.state_dict(), "optimizer": r.opt.state_dict(), "scheduler": r.sched.state_dict(),
            "rng": ck.rng_state(), "data_generator": r.gen.get_state(), "final": final}


def _restore(r: _Run, state: dict[str, Any]) -> None:
    ck.check_spec(state, r.spec, r.workdir)
    r.model.load_state_dict(state["model"])
    r.opt.load_state_dict(state["optimizer"])
    r.sched.load_state_dict(state["scheduler"])
    ck.set_rng_state(state["rng"])
    # state["data_generator"] is not restored: each epoch re-seeds the generator from (seed, epoch) before it
    # draws, and a CUDA generator's state does not fit a CPU one (a run resumed by a worker of the other kind)


def _save(r: _Run, epoch: int, state: dict[str, Any]) -> None:
    ck.save_pruned(r.workdir, epoch, state, r.spec.checkpoint.keep_last, r.reporter)


def fit(spec: RunSpec, reporter: Reporter | None = None, *, workdir: str | Path, resume: bool = True) -> dict:
    """Train ``spec`` (kind 'train'); checkpoints in ``workdir/ckpt``; resumes from the newest one the reporter
    accepts (``resumable_epochs``; any without). The workdir is held for the run: a second run on it waits
    ``reporter.workdir_wait_s`` (0: refused at once) and then raises WorkdirBusy.

    A cooperative stop (``reporter.should_stop()``) saves the last *completed* epoch (if not saved yet)
    and returns ``stopped=True``; the partial epoch is redone on resume, with the same data order.
    Returns {"epochs_done", "stopped", "final": {split: metrics of the last evaluated epoch}}.
    """
    if spec.kind != "train":
        raise ValueError(f"kind: fit() trains kind='train' specs, got {spec.kind!r}; use run_spec()")
    reporter = reporter or NullReporter()
    device = resolve_device(spec)
    with ck.workdir_lock(workdir, workdir_wait_s(reporter), reporter.should_stop), \
            determinism(spec.deterministic, device, spec.precision):
        r = _build(spec, device, reporter, workdir)
        start, final = 0, {}
        # on the CPU: RNG states must stay CPU tensors; only checkpoints the reporter's record vouches for
        if (state := ck.start_state(workdir, resume, resumable=resumable_epochs(reporter))) is not None:
            _restore(r, state)
            start, final = state["epoch"], state["final"]
        if start and (on_resume := getattr(reporter, "on_resume", None)) is not None:
            on_resume(start)
        reporter.on_start(spec.epochs, r.steps_per_epoch)
        return _loop(r, start, final)


def _loop(r: _Run, start: int, final: dict) -> dict:
    spec = r.spec
    is_eval, is_checkpoint = schedule_tests(spec)
    # pending: in-memory copy of the last completed epoch that has no checkpoint yet (0 = initial state)
    pending = None if start else (0, copy.deepcopy(_state(r, 0, final)))
    for epoch in range(start + 1, spec.epochs + 1):
        try:
            running = _train_epoch(r, epoch)
        except _Stopped:
            if pending is not None and pending[0] == epoch - 1:
                _save(r, *pending)
            return {"epochs_done": epoch - 1, "stopped": True, "final": final}
        r.sched.step()
        metrics = evaluate(r, spec.eval.splits, epoch) if is_eval(epoch) else {}
        metrics.setdefault("train", {}).update(running)
        for split, m in metrics.items():
            report_metrics(r.reporter, epoch, split, m)  # + on_distribution (sorted cosine margins)
        final = {**final, **{s: dict(m) for s, m in metrics.items() if is_eval(epoch)}}
        if is_checkpoint(epoch):
            _save(r, epoch, _state(r, epoch, final))
            pending = None
        else:
            pending = (epoch, copy.deepcopy(_state(r, epoch, final)))
    return {"epochs_done": spec.epochs, "stopped": False, "final": final}


def validate_checkpoints(spec: RunSpec, workdir: str | Path, *, epochs: list[int] | None = None,
                         splits: list[str] | None = None, reporter: Reporter | None = None) -> dict:
    """Recompute metrics from stored checkpoints (the validate job): {"epochs", "metrics": {epoch: {split: m}},
    "stopped"}. Progress counts checkpoints (``reporter.on_progress`` after each one); a cooperative stop
    (``reporter.should_stop()``) is honoured between checkpoints, "epochs" then listing those done. With
    ``epochs=None`` (all stored) a checkpoint deleted after it was listed (a prune, keep_last) is skipped with a
    warning; an epoch asked for that is gone, or every listed one gone, is a FileNotFoundError."""
    reporter = reporter or NullReporter()
    splits = list(splits or spec.eval.splits)
    if spec.kind != "train":
        raise ValueError(f"kind: validate_checkpoints re-evaluates kind='train' runs, got {spec.kind!r} (a UFM "
                         "run's metrics are measured as it optimises)")
    available, want = _validation_epochs(spec, workdir, epochs)
    device = resolve_device(spec)
    results: dict[int, dict[str, dict[str, float]]] = {}
    with determinism(spec.deterministic, device, spec.precision):
        r = _build(spec, device, reporter, workdir)
        reporter.on_start(len(want), 1)
        t0 = time.perf_counter()
        for i, e in enumerate(want, 1):
            if reporter.should_stop():
                return {"epochs": list(results), "metrics": results, "stopped": True}
            try:
                state = ck.load_for_validation(available[e], e)  # verified, errors name it
            except FileNotFoundError as exc:
                if epochs is not None or (not results and i == len(want)):  # asked for, or none was left
                    raise
                log.warning("%s; validating the other checkpoints", exc)  # all stored: pruned since listed
                reporter.on_progress(i, 1, 1, i / max(time.perf_counter() - t0, 1e-9))
                continue
            r.model.load_state_dict(state["model"])
            results[e] = evaluate(r, splits, e)
            for split, m in results[e].items():
                report_metrics(reporter, e, split, m)
            reporter.on_progress(i, 1, 1, i / max(time.perf_counter() - t0, 1e-9))  # checkpoints per second
    return {"epochs": list(results), "metrics": results, "stopped": False}


def _validation_epochs(spec: RunSpec, workdir: str | Path,
                       epochs: list[int] | None) -> tuple[dict[int, Path], list[int]]:
    """({epoch: path} stored, the epochs to validate); FileNotFoundError naming what is missing."""
    directory = ck.ckpt_dir(workdir)
    if not directory.is_dir():
        raise FileNotFoundError(f"validate: checkpoint directory {directory} does not exist (expected the "
                                "checkpoints the run wrote there: it saved none, or its workdir is elsewhere)")
    available = ck.list_checkpoints(workdir)
    want = sorted(available) if epochs is None else sorted(set(epochs))
    missing = [e for e in want if e not in available]
    if missing or not want:
        hint = (f" (checkpoint.keep_last={spec.checkpoint.keep_last}; set it to null to keep all)" if available
                else " (the directory holds no checkpoint)")
        raise FileNotFoundError(f"validate: no checkpoint for epoch(s) {missing or 'any'} in {directory}; available "
                                f"epochs: {list(available)}{hint}")
    return available, want


def run_spec(spec: RunSpec, reporter: Reporter | None = None, *, workdir: str | Path, resume: bool = True) -> dict:
    """Dispatch on spec.kind: 'train' → fit(), 'ufm' → nc_core.ufm.fit_ufm() (both resume from ``workdir``)."""
    if spec.kind == "ufm":
        from nc_core.ufm import fit_ufm

        return fit_ufm(spec, reporter, workdir=workdir, resume=resume)
    return fit(spec, reporter, workdir=workdir, resume=resume)
