"""Declarative, validated run specifications: RunSpec and its sections (pydantic v2, torch-free; sweeps in sweep.py)."""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nc_core.spec_types import Int, NonNegFloat, PositiveFloat, PositiveInt, Text, float_in, int_in
from nc_core.spec_types import NUL_MESSAGE  # noqa: F401 - re-exported

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "digits", "gaussian")
MODELS = ("mlp", "resnet18", "resnet34", "resnet50", "wide_resnet50", "vgg11", "vgg13", "vgg16", "vgg19")
HEADS = ("learned", "fixed_etf", "implicit_etf")
LOSSES = ("ce", "mse", "rescaled_mse", "focal", "label_smoothing")
OPTIMIZERS = ("sgd", "adam", "adamw", "lbfgs")
LR_SCHEDULES = ("constant", "step", "multistep", "cosine")
SPLITS = ("train", "test")

# Classes per dataset; gaussian takes `data.gaussian_classes`.
DATASET_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10, "digits": 10}
#: scikit-learn's bundled digits: its number of images (a test_size must leave 10 on either side of the split).
DIGITS_IMAGES = 1797

# Default model.width per architecture: MLP hidden units, WRN-50 bottleneck factor (2 = WRN-50-2),
# ResNet/VGG channel multiplier (1 = the standard 64…512 channels).
DEFAULT_WIDTH = {"mlp": 128, "wide_resnet50": 2}
MAX_MULTIPLIER = 16  # a 16× ResNet18 has ~2.9 G parameters; beyond that a width is an MLP habit, not a plan


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def imbalance_floor(n_max: int, factor: float, k: int) -> list[int]:
    """The exponentially imbalanced train counts n_c = floor(n_max · f^(c/(K−1))), c = 0..K−1 (Cao et al. 2019);
    a ValueError naming data.imbalance_factor when one of them is 0 (that class would have no sample)."""
    counts = [math.floor(n_max * factor ** (c / (k - 1))) for c in range(k)]
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(f"data.imbalance_factor: {factor} with n_max = {n_max} (data.per_class, else the smallest "
                         f"class) leaves class(es) {empty} with floor(n_max·f^(c/(K−1))) = 0 training samples; "
                         f"expected every class to keep one: raise it above {1 / n_max:.3g} (1/n_max) or raise n_max")
    return counts


class DataSpec(_Frozen):
    """Dataset and its modifiers (random labels, label noise, subsets, imbalance, augmentation)."""

    name: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    root: Text | None = None  # data root for torchvision datasets (default: settings.data_root)
    download: bool = False  # never download unless asked
    random_labels: bool = False  # train labels seededly permuted among the samples (class counts kept)
    label_noise: float_in(ge=0, le=1) = 0.0  # fraction of train labels replaced uniformly
    per_class: PositiveInt | None = None  # first n samples of each class (train split)
    class_counts: list[PositiveInt] | None = None  # explicit imbalanced train counts, one per class
    imbalance_factor: float_in(gt=0, le=1) = 1.0  # n_k = floor(n_max * f^(k/(K-1)))
    train_size: PositiveInt | None = None  # gaussian: train samples; others: cap on the train split
    test_size: PositiveInt | None = None  # gaussian / digits: test samples
    augment: Literal["none", "crop_flip"] = "none"
    gaussian_classes: int_in(ge=2) = 10  # gaussian: centres and both splits are drawn from the run's seed
    gaussian_dim: PositiveInt = 32
    gaussian_spread: NonNegFloat = 1.0  # within-class std relative to unit-norm class centres

    @model_validator(mode="after")
    def _check(self) -> "DataSpec":
        if self.class_counts is not None and self.imbalance_factor != 1.0:
            raise ValueError("data.class_counts and data.imbalance_factor are exclusive: give one of them")
        if self.class_counts is not None and self.per_class is not None:
            raise ValueError("data.class_counts and data.per_class are exclusive: give one of them")
        shaped = [f for f, on in (("per_class", self.per_class is not None), ("class_counts", self.class_counts is not None),
                                  ("imbalance_factor", self.imbalance_factor != 1.0)) if on]
        if self.train_size is not None and self.name != "gaussian" and shaped:
            raise ValueError(f"data.train_size: a random cap would undo the class counts data.{shaped[0]} asks for; "
                             f"give one of them (got train_size={self.train_size} and {shaped[0]})")
        k = self.num_classes
        if self.test_size is not None and self.name not in ("gaussian", "digits"):
            raise ValueError(f"data.test_size: {self.name} has a fixed test split; test_size applies to gaussian and "
                             f"digits only (got test_size={self.test_size})")
        for field in ("train_size", "test_size"):
            size = getattr(self, field)
            if self.name == "gaussian" and size is not None and size < k:
                raise ValueError(f"data.{field}: {size} gaussian samples cannot cover the {k} classes "
                                 f"(data.gaussian_classes); expected at least {k}")
        if self.name != "gaussian" and self.train_size is not None and self.train_size < k:
            raise ValueError(f"data.train_size: a random subset of {self.train_size} training samples cannot cover the "
                             f"{k} classes of {self.name}; expected at least {k}")
        if self.name == "digits" and self.test_size is not None and not 10 <= self.test_size <= DIGITS_IMAGES - 10:
            raise ValueError(f"data.test_size: digits has {DIGITS_IMAGES} images; expected 10..{DIGITS_IMAGES - 10} "
                             f"test images, got {self.test_size}")
        if self.name == "gaussian" and self.gaussian_dim == 1 and k > 2:
            raise ValueError(f"data.gaussian_dim: unit-norm centres in 1 dimension are ±1, so at most 2 of the {k} "
                             f"classes (data.gaussian_classes) would be told apart; expected gaussian_dim ≥ 2")
        if self.class_counts is not None and len(self.class_counts) != k:
            raise ValueError(f"data.class_counts: expected {k} counts (one per class of {self.name}), got {len(self.class_counts)}")
        if self.per_class is not None:  # n_max known here: an emptied class is refused before any run starts
            imbalance_floor(self.per_class, self.imbalance_factor, k)
        return self

    @property
    def num_classes(self) -> int:
        return self.gaussian_classes if self.name == "gaussian" else DATASET_CLASSES[self.name]


class ModelSpec(_Frozen):
    """Backbone: MLP, ResNet, WideResNet or VGG, with feature dimension and temperature."""

    name: Literal[MODELS] = "mlp"  # type: ignore[valid-type]
    width: PositiveFloat = 128  # MLP hidden units; ResNet/VGG channel multiplier; WRN-50 factor (DEFAULT_WIDTH)
    depth: PositiveInt = 3  # MLP: number of Linear-BN-ReLU blocks
    batch_norm: bool = True
    stem: Literal["cifar", "imagenet"] = "cifar"  # ResNet stem: 3x3 stride 1 (cifar) or 7x7 + maxpool
    feature_dim: PositiveInt | None = None  # d; None = the architecture's natural width
    temperature: PositiveFloat | None = None  # features = tau * h / ||h|| when set

    @model_validator(mode="before")
    @classmethod
    def _default_width(cls, data: Any) -> Any:
        """An absent width takes its architecture's default: 128 hidden units for an MLP, 1 for ResNet/VGG."""
        if isinstance(data, dict) and "width" not in data:
            name = data.get("name", "mlp")
            data = {**data, "width": DEFAULT_WIDTH.get(name, 1) if isinstance(name, str) else 1}
        return data

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.name == "mlp" and self.width != int(self.width):
            raise ValueError(f"model.width: an MLP needs an integer number of hidden units, got {self.width}")
        if self.name != "mlp" and self.width > MAX_MULTIPLIER:
            what = "bottleneck width factor (2 = WRN-50-2)" if self.name == "wide_resnet50" else \
                "channel multiplier (1 = the standard network)"
            raise ValueError(f"model.width: for {self.name} it is a {what}; expected at most {MAX_MULTIPLIER}, "
                             f"got {self.width:g} (hidden units are an MLP setting; omit width for the default "
                             f"{DEFAULT_WIDTH.get(self.name, 1)})")
        return self


class HeadSpec(_Frozen):
    """Classifier head: learned linear, fixed simplex ETF, or implicit nearest ETF; deep-linear depth."""

    name: Literal[HEADS] = "learned"  # type: ignore[valid-type]
    bias: bool = True
    depth_linear: PositiveInt = 1  # number of linear layers (bias-free ones before the classifier)
    delta: NonNegFloat = 1e-3  # implicit ETF proximal weight
    hidden: PositiveInt | None = None  # width of the extra linear layers (default d)


class LossSpec(_Frozen):
    """Training loss and its hyper-parameters."""

    name: Literal[LOSSES] = "ce"  # type: ignore[valid-type]
    target_scale: PositiveFloat = 1.0  # mse: targets = scale * onehot
    M: PositiveFloat = 1.0  # rescaled mse target value
    k: PositiveFloat = 1.0  # rescaled mse true-class weight
    gamma: NonNegFloat = 3.0  # focal
    alpha: float_in(ge=0, le=1) = 0.05  # label smoothing


class OptimSpec(_Frozen):
    """Optimizer, weight decay (joint or separate λ_W / λ_H) and gradient clipping."""

    name: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    lr: PositiveFloat = 0.05
    momentum: float_in(ge=0, lt=1) = 0.9
    nesterov: bool = False
    weight_decay: NonNegFloat = 5e-4
    history_size: PositiveInt = 10  # lbfgs
    sep_decay: bool = False  # λ_W = weight_decay on the head only, λ_H = feature_decay on features
    feature_decay: NonNegFloat = 1e-4
    grad_clip: PositiveFloat | None = None  # max ‖∇‖₂ of the loss (+ λ_H penalty); weight decay acts after it

    @model_validator(mode="after")
    def _check(self) -> "OptimSpec":
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optim.nesterov: needs optim.name='sgd' with optim.momentum > 0, got "
                             f"optim.name={self.name!r}, optim.momentum={self.momentum:g}")
        return self


class LRScheduleSpec(_Frozen):
    """Learning-rate schedule; multistep milestones are epochs (int) or fractions of training (<1)."""

    name: Literal[LR_SCHEDULES] = "constant"  # type: ignore[valid-type]
    step_size: PositiveInt = 40
    gamma: PositiveFloat = 0.1
    milestones: list[PositiveFloat] = Field(default_factory=list)


class EvalSpec(_Frozen):
    """Which epochs to measure NC metrics on, and on which splits."""

    every: PositiveInt | None = 1
    epochs: list[PositiveInt] | None = None  # explicit list (overrides every/log_points)
    log_points: PositiveInt | None = None  # ~n log-spaced epochs in 1..E (overrides every)
    splits: list[Literal["train", "test"]] = Field(default_factory=lambda: ["train", "test"])

    @model_validator(mode="after")
    def _check(self) -> "EvalSpec":
        if not self.splits:
            raise ValueError("eval.splits: expected at least one of 'train', 'test'")
        return self


class CheckpointSpec(_Frozen):
    """Which epochs to checkpoint (the last epoch always is)."""

    every: PositiveInt = 1
    keep_last: PositiveInt | None = 2  # None keeps every checkpoint (needed by validate jobs)


class UFMSpec(_Frozen):
    """Unconstrained-feature-model direct optimisation (free features H + deep linear classifier)."""

    class_counts: list[PositiveInt] = Field(default_factory=lambda: [100, 100, 100, 100])
    dim: PositiveInt = 64
    depth_linear: PositiveInt = 1
    bias: bool = True
    lambda_w: NonNegFloat = 5e-4
    lambda_h: NonNegFloat = 5e-4
    lr: PositiveFloat = 0.1
    momentum: float_in(ge=0, lt=1) = 0.9
    iterations: PositiveInt = 30000
    eval_every: PositiveInt = 1000

    @model_validator(mode="after")
    def _check(self) -> "UFMSpec":
        if len(self.class_counts) < 2:
            raise ValueError(f"ufm.class_counts: expected at least 2 classes, got {len(self.class_counts)}")
        return self


class RunSpec(_Frozen):
    """One training (or UFM) run: everything a worker needs to execute, resume and report it."""

    kind: Literal["train", "ufm"] = "train"
    seed: Int = 0
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 128
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"  # tf32: float32 with TF32 tensor cores on CUDA
    deterministic: bool = True
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    head: HeadSpec = Field(default_factory=HeadSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    ufm: UFMSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> "RunSpec":
        from nc_core.spec_rules import check_run

        check_run(self)
        return self

    @property
    def num_classes(self) -> int:
        if self.kind == "ufm":
            return len(self.ufm.class_counts) if self.ufm else 4
        return self.data.num_classes


def field_annotations(model: type[BaseModel] = RunSpec, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf field path of a spec model → its annotation (sub-models are walked into)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is not None:
            out.update(field_annotations(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = info.annotation
    return out


def field_paths(model: type[BaseModel] = RunSpec, prefix: str = "") -> list[str]:
    """All dotted leaf field paths of a spec model, e.g. ``loss.name``, ``model.width``."""
    return list(field_annotations(model, prefix))


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
