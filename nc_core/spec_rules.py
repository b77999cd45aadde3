"""Cross-field validation of a RunSpec: combinations the trainer cannot run, named by field."""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from nc_core.spec import RunSpec

# Last stage of each conv backbone: (channels at width 1, block expansion); its output is expansion × channels.
_LAST_STAGE = {"resnet18": (512, 1), "resnet34": (512, 1), "resnet50": (512, 4),
               "vgg11": (512, 1), "vgg13": (512, 1), "vgg16": (512, 1), "vgg19": (512, 1)}


def scaled_channels(base: int, width: float) -> int:
    """Channels of a layer of ``base`` channels at width multiplier ``width`` (ResNet stages, VGG convs)."""
    return max(1, round(base * width))


def feature_dim(spec: "RunSpec") -> int:
    """Dimension d of the features the classifier head sees: model.feature_dim, else what the backbone
    produces by itself (MLP: its hidden width; WRN-50: 2048 whatever the bottleneck factor; ResNet/VGG:
    expansion × the scaled last-stage channels, e.g. ResNet-50 at width 0.3 is 4·round(512·0.3) = 616)."""
    m = spec.model
    if m.feature_dim is not None:
        return m.feature_dim
    if m.name == "mlp":
        return int(m.width)
    if m.name == "wide_resnet50":
        return 2048
    base, expansion = _LAST_STAGE[m.name]
    return expansion * scaled_channels(base, m.width)


#: Heads with no parameter that separate decay's λ_W acts on (Head.decayed_parameters() is empty): why.
UNDECAYED_HEADS = {"fixed_etf": "a frozen buffer", "implicit_etf": "solved in closed form each step, not trained"}

#: The fields a UFM run reads besides its ``ufm`` section; every other one must keep its default.
UFM_FIELDS = ("kind", "seed", "device", "deterministic", "checkpoint.keep_last")
#: Where a training field's role lives in a UFM spec.
_UFM_COUNTERPART = {"epochs": "ufm.iterations", "optim.lr": "ufm.lr", "optim.momentum": "ufm.momentum",
                    "optim.weight_decay": "ufm.lambda_w and ufm.lambda_h", "eval.every": "ufm.eval_every",
                    "model.width": "ufm.dim", "model.feature_dim": "ufm.dim", "head.bias": "ufm.bias",
                    "head.depth_linear": "ufm.depth_linear", "data.name": "ufm.class_counts",
                    "data.imbalance": "ufm.class_counts", "checkpoint.every": "ufm.eval_every",
                    "loss.name": "its objective, always MSE: leave the loss section out"}


@functools.cache
def training_defaults() -> dict:
    from nc_core.spec import RunSpec

    return RunSpec.model_construct().model_dump(mode="json")  # unvalidated: validating it would call check_run


def _check_ufm_fields(spec: "RunSpec") -> None:
    """A UFM run (free features, MSE objective, full-batch SGD with ufm.lr/ufm.momentum) ignores the
    training fields: one set away from its default is refused, so that a sweep over it cannot silently
    repeat the same run."""
    from nc_core.spec import field_paths
    from nc_core.sweep import get_path

    tree, default = spec.model_dump(mode="json"), training_defaults()
    off = [path for path in field_paths() if not (path.startswith("ufm.") or path in UFM_FIELDS)
           and get_path(tree, path) != get_path(default, path)]
    if not off:
        return
    path, *more = off  # the first names the error's field; every other one is listed in the same message
    hint = f"; the UFM's own is {_UFM_COUNTERPART[path]}" if path in _UFM_COUNTERPART else ""
    also = "; ".join(f"{p} (default {get_path(default, p)!r}, got {get_path(tree, p)!r}"
                     + (f"; the UFM's own is {_UFM_COUNTERPART[p]})" if p in _UFM_COUNTERPART else ")") for p in more)
    raise ValueError(f"{path}: has no effect with kind='ufm' (a UFM run uses only {', '.join(UFM_FIELDS[1:])} "
                     f"and the ufm section{hint}); expected its default {get_path(default, path)!r}, "
                     f"got {get_path(tree, path)!r}" + (f". Also without effect here: {also}" if more else ""))


#: Training fields read only under one choice: path → (whether this run reads it, the choice that does,
#: the field whose value decides); see unread_fields.
_READ_ONLY_WITH: dict[str, tuple[Callable[["RunSpec"], bool], str, str]] = {
    "loss.target_scale": (lambda s: s.loss.name == "mse", "loss.name='mse'", "loss.name"),
    "loss.M": (lambda s: s.loss.name == "rescaled_mse", "loss.name='rescaled_mse'", "loss.name"),
    "loss.k": (lambda s: s.loss.name == "rescaled_mse", "loss.name='rescaled_mse' (the MSE paper's α)", "loss.name"),
    "loss.gamma": (lambda s: s.loss.name == "focal", "loss.name='focal'", "loss.name"),
    "loss.alpha": (lambda s: s.loss.name == "label_smoothing", "loss.name='label_smoothing' (for rescaled MSE's α "
                   "use loss.k)", "loss.name"),
    "schedule.milestones": (lambda s: s.schedule.name == "multistep", "schedule.name='multistep'", "schedule.name"),
    "schedule.step_size": (lambda s: s.schedule.name == "step", "schedule.name='step'", "schedule.name"),
    "schedule.gamma": (lambda s: s.schedule.name in ("step", "multistep"), "schedule.name='step' or 'multistep'",
                       "schedule.name"),
    "optim.momentum": (lambda s: s.optim.name == "sgd", "optim.name='sgd' (adam/adamw use betas (0.9, 0.999))",
                       "optim.name"),
    "optim.history_size": (lambda s: s.optim.name == "lbfgs", "optim.name='lbfgs'", "optim.name"),
    "optim.feature_decay": (lambda s: s.optim.sep_decay, "optim.sep_decay=true", "optim.sep_decay"),
    "head.delta": (lambda s: s.head.name == "implicit_etf", "head.name='implicit_etf'", "head.name"),
    "head.hidden": (lambda s: s.head.depth_linear > 1, "head.depth_linear > 1", "head.depth_linear"),
    "model.depth": (lambda s: s.model.name == "mlp", "model.name='mlp'", "model.name"),
    "model.stem": (lambda s: s.model.name.startswith(("resnet", "wide_resnet")), "a ResNet or WideResNet model",
                   "model.name"),
    **{f"data.gaussian_{f}": (lambda s: s.data.name == "gaussian", "data.name='gaussian'", "data.name")
       for f in ("classes", "dim", "spread")},
}


def unread_fields(spec: "RunSpec", tree: dict | None = None) -> dict[str, str]:
    """{path: why} of the fields set away from their defaults that this training run never reads (loss.gamma
    with CE, schedule.milestones with a constant schedule …): they would be silently ignored. A lone spec (the
    single-run CLI) refuses them (warns, resuming a workdir started with them); a sweep refuses an axis where
    they would make two runs one (nc_core.sweep_unread) and a value no run reads. ``tree``: the spec's JSON
    dump, if at hand."""
    from nc_core.sweep import get_path

    if spec.kind != "train":
        return {}
    tree, default = tree or spec.model_dump(mode="json"), training_defaults()
    out = {}
    for path, (reads, needs, decider) in _READ_ONLY_WITH.items():
        value = get_path(tree, path)
        if value != get_path(default, path) and not reads(spec):
            out[path] = (f"has no effect with {decider}={get_path(tree, decider)!r}; it is read only with {needs}, "
                         f"so it would be ignored; expected its default {get_path(default, path)!r} there, got {value!r}")
    return out


def check_run(spec: "RunSpec") -> None:
    """Raise ValueError naming the fields of an impossible combination."""
    if spec.kind == "ufm":
        if spec.ufm is None:
            raise ValueError("ufm: kind='ufm' needs a 'ufm' section (class_counts, dim, lambda_w, …)")
        _check_ufm_fields(spec)
        return
    if spec.ufm is not None:
        raise ValueError(f"ufm: only allowed with kind='ufm', got kind={spec.kind!r}")
    k = spec.data.num_classes
    d = feature_dim(spec)
    head = spec.head
    if head.name in ("fixed_etf", "implicit_etf") and d < k - 1:
        source = "" if spec.model.feature_dim is not None else \
            f", the features of {spec.model.name} at model.width={spec.model.width:g} (model.feature_dim sets d)"
        raise ValueError(f"head.name={head.name!r} needs model.feature_dim >= K-1 = {k - 1} "
                         f"(a {k}-class simplex ETF spans K-1 dimensions), got d = {d}{source}")
    if head.name in ("fixed_etf", "implicit_etf") and d == k - 1 and not head.bias:
        why = ("some class never scores highest" if head.name == "fixed_etf" else
               "the nearest ETF, with no bias b = -W f̄ to centre its logits, leaves a class that never scores "
               "highest (3 gaussian classes train to 66.7 % accuracy, the 10 digits classes to about 90 %)")
        raise ValueError(f"head.name={head.name!r} with model.feature_dim = K-1 = {d} and head.bias=false cannot "
                         "learn every class: the backbone's features are non-negative (they come out of a ReLU) "
                         f"and reach only one orthant of the K-1 dimensions, where {why}; use "
                         f"model.feature_dim >= K = {k} or head.bias=true")
    if head.name in UNDECAYED_HEADS and spec.optim.sep_decay and spec.optim.weight_decay > 0:
        raise ValueError(f"optim.weight_decay: has no effect with optim.sep_decay=true and head.name={head.name!r}: "
                         "separate decay applies λ_W = optim.weight_decay only to the head's linear weights, and "
                         f"a {head.name} head has none (its W is {UNDECAYED_HEADS[head.name]}, its bias, if any, is "
                         "never decayed), so a sweep over it would repeat the same run; expected 0, got "
                         f"{spec.optim.weight_decay:g} (the feature decay optim.feature_decay = λ_H still applies)")
    if head.name == "implicit_etf" and head.depth_linear != 1:
        raise ValueError("head.depth_linear: the implicit ETF head is a single layer; expected 1, "
                         f"got {head.depth_linear}")
    if head.name == "implicit_etf" and spec.optim.name == "lbfgs":
        raise ValueError("optim.name='lbfgs' with head.name='implicit_etf' is not supported: the implicit "
                         "ETF's moving averages change inside the LBFGS closure; use sgd, adam or adamw")
    if head.name == "fixed_etf" and head.depth_linear != 1:
        raise ValueError(f"head.depth_linear: a fixed ETF head has no hidden linear layers; expected 1, got {head.depth_linear}")
    if spec.loss.name in ("focal", "label_smoothing", "ce") and spec.model.temperature is not None and spec.model.temperature <= 0:
        raise ValueError("model.temperature: expected > 0")
    if spec.data.name == "gaussian" and spec.model.name != "mlp":
        raise ValueError(f"model.name={spec.model.name!r}: the gaussian dataset is a flat vector; use model.name='mlp'")
    if spec.data.name == "digits" and spec.model.name not in ("mlp",) and spec.model.stem == "imagenet":
        raise ValueError("model.stem='imagenet' downsamples 8x8 digits images to nothing; use stem='cifar'")
    if spec.data.augment == "crop_flip" and spec.data.name == "gaussian":
        raise ValueError("data.augment='crop_flip' needs image data; gaussian features cannot be cropped")
    if spec.schedule.name == "multistep":
        _check_milestones(spec.schedule.milestones, spec.epochs)
    if spec.schedule.name == "step" and spec.epochs > 1 and spec.schedule.step_size >= spec.epochs:
        raise ValueError(f"schedule.step_size: {spec.schedule.step_size} is not below the {spec.epochs} epochs, so the "
                         f"LR would never decay; expected a step size in 1..{spec.epochs - 1} (or schedule.name="
                         "'constant')")
    ev = spec.eval
    if ev.epochs is not None and not ev.epochs:
        raise ValueError("eval.epochs: expected at least one epoch (or leave it out to use eval.every)")
    if ev.epochs is not None and max(ev.epochs) > spec.epochs:
        raise ValueError(f"eval.epochs: {max(ev.epochs)} is past the last epoch {spec.epochs}; expected epochs in "
                         f"1..{spec.epochs}")
    if spec.precision == "bf16" and spec.optim.name == "lbfgs":
        raise ValueError("precision='bf16' with optim.name='lbfgs': LBFGS line search needs fp32")
    if spec.optim.grad_clip is not None and spec.optim.name == "lbfgs":
        raise ValueError(f"optim.grad_clip={spec.optim.grad_clip} with optim.name='lbfgs': the strong-Wolfe line search "
                         "pairs the closure's loss with its gradient, and a clipped gradient is not that loss's; "
                         "expected no grad_clip (null) with lbfgs")


def milestone_epoch(m: float, epochs: int) -> int:
    """The epoch after which a multistep milestone decays the LR: a fraction f < 1 of training is ⌊f·E⌋
    (nc_loss style) of the fraction meant — the nearest with a denominator ≤ 10⁶, so 0.29 of 100 is 29 and
    3/7 of 7 is 3 (the float products 0.29·100 = 28.999999999999996 and repr(3/7)·7 fall short) — and a
    whole number is that epoch."""
    return math.floor(Fraction(m).limit_denominator(10**6) * epochs) if m < 1 else int(m)


def _check_milestones(milestones: list[float], epochs: int) -> None:
    """Each multistep milestone must decay the LR before the run ends, on an epoch of its own: a whole epoch in
    1..E-1, or a fraction f < 1 with ⌊f·E⌋ >= 1 (a one-epoch run has no later epoch, so its milestones go
    unchecked)."""
    if not milestones:
        raise ValueError("schedule.milestones: multistep needs at least one milestone (epochs, or fractions < 1)")
    if epochs == 1:
        return
    for m in milestones:
        if m >= 1 and m != int(m):
            raise ValueError(f"schedule.milestones: expected whole epochs (>= 1) or fractions of training (< 1), "
                             f"got {m:g}")
        if milestone_epoch(m, epochs) < 1:
            raise ValueError(f"schedule.milestones: the fraction {m:g} of {epochs} epochs is epoch 0, so it would "
                             f"never apply; expected a fraction of at least 1/{epochs} or a whole epoch")
        if milestone_epoch(m, epochs) >= epochs:
            raise ValueError(f"schedule.milestones: epoch {int(m)} is not before the last epoch {epochs}, so the LR "
                             "would never decay there; use an earlier epoch or a fraction of training (< 1)")
    seen: dict[int, float] = {}
    for m in milestones:
        e = milestone_epoch(m, epochs)
        if e in seen:
            raise ValueError(f"schedule.milestones: {seen[e]:g} and {m:g} both fall on epoch {e} of {epochs} (a "
                             "fraction f < 1 is epoch ⌊f·E⌋), where the LR would decay once, not once per milestone "
                             "as in torch's MultiStepLR; expected milestones on distinct epochs")
        seen[e] = m


def eval_epochs(spec: "RunSpec") -> list[int]:
    """Sorted 1-based epochs at which NC metrics are measured (the last epoch always is)."""
    e = spec.epochs
    ev = spec.eval
    if ev.epochs is not None:
        chosen = set(ev.epochs)
    elif ev.log_points is not None:
        n = ev.log_points
        chosen = {max(1, min(e, round(math.exp(i * math.log(e) / max(1, n - 1))))) for i in range(n)}
    else:
        chosen = set(range(ev.every or 1, e + 1, ev.every or 1))
    chosen.add(e)
    return sorted(chosen)


def checkpoint_epochs(spec: "RunSpec") -> list[int]:
    """Sorted 1-based epochs after which a checkpoint is written (the last epoch always is)."""
    every = spec.checkpoint.every
    return sorted(set(range(every, spec.epochs + 1, every)) | {spec.epochs})


def schedule_tests(spec: "RunSpec") -> tuple[Callable[[int], bool], Callable[[int], bool]]:
    """(is an eval epoch, is a checkpoint epoch): :func:`eval_epochs` and :func:`checkpoint_epochs` as
    membership tests that never list every epoch (a run of 10⁸ epochs costs nothing to set up)."""
    last, ev, every = spec.epochs, spec.eval, spec.checkpoint.every
    if ev.epochs is not None or ev.log_points is not None:  # at most a listed or log-spaced handful
        chosen = set(eval_epochs(spec))
        is_eval = chosen.__contains__
    else:
        step = ev.every or 1
        is_eval = lambda e: e % step == 0 or e == last  # noqa: E731
    return is_eval, lambda e: e % every == 0 or e == last
