"""The Reporter protocol fit() talks to, a no-op reporter, the divergence error and the per-step divergence watch."""
from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Reporter(Protocol):
    """Callbacks from fit()/fit_ufm(); the worker writes DB rows, the CLI draws a progress bar.

    Optional members, read with getattr (a reporter without them gets the default; they are not protocol
    members, so that ``isinstance(x, Reporter)`` does not ask for them):

    - ``workdir_wait_s: float`` (default 0): how long fit() waits for another process that holds the workdir
      to let go before it refuses the run (:func:`workdir_wait_s`). 0 refuses at once (the CLI). The worker
      waits one lease: a previous attempt of the run, fenced out when its lease moved, stops within a
      heartbeat once it notices.
    - ``resumable_epochs() -> set[int] | None`` (default None: any checkpoint file): the epochs whose
      checkpoints the run may resume from (:func:`resumable_epochs`). The worker answers from the run's
      checkpoint rows; a newer file without one was written by a fenced-out attempt and is deleted.
    - ``lease_lost: bool`` (default False): this process no longer holds the run; checkpoints are then neither
      saved nor pruned (checkpoint.save_pruned), the workdir being the new holder's.
    - ``on_pruned(epochs: list[int])``: keep_last deleted these epochs' files, after the newer checkpoint's
      on_checkpoint (the worker drops their rows).
    """

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None: ...

    def on_resume(self, epoch: int) -> None:
        """Before on_start, when the run resumes after ``epoch`` completed epochs (reporters without it
        are not told)."""

    def on_progress(self, epoch: int, step: int, steps_per_epoch: int, samples_per_s: float) -> None:
        """Called after every optimizer step (``step`` = steps done in ``epoch``); the reporter throttles."""

    def on_metrics(self, epoch: int, split: str, metrics: dict[str, float]) -> None: ...

    def on_distribution(self, epoch: int, split: str, key: str, values: list[float]) -> None:
        """A sorted per-sample distribution (quantiles, ascending) measured with the metrics of (epoch, split)."""

    def on_checkpoint(self, epoch: int, path: str, nbytes: int, sha256: str) -> None: ...

    def should_stop(self) -> bool:
        """Cooperative cancel, polled at every step boundary."""


class NullReporter:
    """Implements every Reporter callback as a no-op."""

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        pass

    def on_resume(self, epoch: int) -> None:
        pass

    def on_progress(self, epoch: int, step: int, steps_per_epoch: int, samples_per_s: float) -> None:
        pass

    def on_metrics(self, epoch: int, split: str, metrics: dict[str, float]) -> None:
        pass

    def on_distribution(self, epoch: int, split: str, key: str, values: list[float]) -> None:
        pass

    def on_checkpoint(self, epoch: int, path: str, nbytes: int, sha256: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def workdir_wait_s(reporter: object) -> float:
    """The reporter's ``workdir_wait_s`` (seconds to wait for a busy workdir), 0.0 when it has none."""
    return float(getattr(reporter, "workdir_wait_s", 0.0) or 0.0)


def resumable_epochs(reporter: object) -> set[int] | None:
    """The reporter's ``resumable_epochs()`` (epochs a run may resume from), None (any) when it has none."""
    ask = getattr(reporter, "resumable_epochs", None)
    epochs = ask() if ask is not None else None
    return None if epochs is None else {int(e) for e in epochs}


def report_metrics(reporter: object, epoch: int, split: str, metrics: dict[str, float]) -> None:
    """on_metrics, then on_distribution per entry of ``metrics.distributions`` (a MetricDict's; a plain
    dict has none); reporters without on_distribution (older test doubles) only get on_metrics."""
    reporter.on_metrics(epoch, split, metrics)  # type: ignore[attr-defined]
    send = getattr(reporter, "on_distribution", None)
    if send is not None:
        for key, values in (getattr(metrics, "distributions", None) or {}).items():
            send(epoch, split, key, list(values))


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite at (epoch, step) (1-based epoch, 0-based step); for a UFM run
    ``ufm=True`` and ``epoch`` is the 1-based iteration; ``evaluated`` says which split's features were not
    finite when the model was evaluated after epoch ``epoch`` (step −1). ``remedy``: what the message
    suggests (:func:`divergence_remedy` of the run's spec)."""

    def __init__(self, epoch: int, step: int, value: float | None = None, *, ufm: bool = False,
                 evaluated: str | None = None, remedy: str = "lower optim.lr or add optim.grad_clip"):
        what = f" (loss = {value})" if value is not None else ""
        if evaluated:  # the loss stayed finite, the features of an evaluated split did not (step = -1)
            msg = f"training diverged by epoch {epoch}: {evaluated}; {remedy}"
        elif ufm:
            msg = (f"UFM optimisation diverged at iteration {epoch}: non-finite objective{what}; lower ufm.lr "
                   "(or ufm.momentum)")
        else:
            msg = f"training diverged at epoch {epoch}, step {step}: non-finite loss{what}; {remedy}"
        super().__init__(msg)
        self.epoch = epoch
        self.step = step


def divergence_remedy(spec: Any) -> str:
    """What a diverged run of ``spec`` (a RunSpec) can change: a lower LR; gradient clipping where the
    optimizer takes it (not LBFGS); fp32 under bf16."""
    remedy = "lower optim.lr" + ("" if spec.optim.name == "lbfgs" or spec.optim.grad_clip is not None
                                 else " or add optim.grad_clip")
    return remedy + (" (under bf16, also try precision='fp32')" if spec.precision == "bf16" else "")


class DivergenceWatch:
    """Raises :class:`TrainingDiverged` for the first step of an epoch whose loss is not finite. On the CPU
    (``on_host``) the loss is read at every step, which costs no sync; on an accelerator the first bad step
    is kept on the device and read every 32 steps and at the epoch's last step (``steps`` steps)."""

    def __init__(self, device: torch.device, steps: int, *, on_host: bool | None = None,
                 remedy: str = "lower optim.lr or add optim.grad_clip"):
        self.steps, self.remedy = steps, remedy
        self.on_host = device.type == "cpu" if on_host is None else on_host
        self._first = None if self.on_host else torch.full((), -1, dtype=torch.long, device=device)  # ()

    def see(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Check the (detached, scalar) loss of ``step`` (0-based) of ``epoch``."""
        if self.on_host:
            if not math.isfinite(value := loss.item()):
                raise TrainingDiverged(epoch, step, value, remedy=self.remedy)
            return
        self._first = torch.where((self._first < 0) & ~torch.isfinite(loss), step, self._first)  # ()
        if (step % 32 == 31 or step == self.steps - 1) and (bad := int(self._first)) >= 0:
            raise TrainingDiverged(epoch, bad, remedy=self.remedy)
