"""Datasets as normalised float32 tensors on the device: load_data(spec, device) -> DataBundle, batches()."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nc_core.data.augment import batches, crop_flip
from nc_core.data.modifiers import modify_train
from nc_core.data.sources import MissingDataError, RawData
from nc_core.registry import DATASETS
from nc_core.spec import RunSpec


@dataclass
class DataBundle:
    """Both splits resident on one device; x normalised float32 (N, C, H, W) or (N, D), y int64 (N,)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    input_shape: tuple[int, ...]  # per sample, e.g. (1, 28, 28) or (32,)
    mean: tuple[float, ...]  # already applied: x = (raw − mean) / std per channel
    std: tuple[float, ...]

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """(x, y) of split ``"train"`` or ``"test"``."""
        if name not in ("train", "test"):
            raise ValueError(f"DataBundle.split: expected 'train' or 'test', got {name!r}")
        return (self.train_x, self.train_y) if name == "train" else (self.test_x, self.test_y)


def data_root(spec: RunSpec, settings=None) -> Path:
    """spec.data.root, else settings.data_root (NCSWEEP_DATA_ROOT), user-expanded; a '~user' that names no
    user is a ValueError naming the field."""
    if spec.data.root:
        field, root = "data.root", spec.data.root
    else:
        if settings is None:
            from nc_core.settings import get_settings

            settings = get_settings()
        field, root = "NCSWEEP_DATA_ROOT (settings.data_root)", str(settings.data_root)
    try:
        return Path(root).expanduser()
    except RuntimeError as exc:  # Path.expanduser: "Could not determine home directory"
        raise ValueError(f"{field}: cannot expand {root!r} ({exc}); expected an existing user's ~ or a full "
                         "path") from None


def _normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...], scale: float = 1.0) -> Tensor:
    """(x/scale − mean)/std per channel as float32: one float copy of uint8 images (scale 255), worked on in place;
    (N, D) features are used as drawn."""
    if x.ndim != 4:
        return x.float()  # (N, D): synthetic features are used as drawn
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
    if x.dtype == torch.uint8:
        return x.float().div_(scale).sub_(m).div_(s)  # (N, C, H, W): the new float copy, in place
    return x.float().contiguous().sub_(m).div_(s)  # (N, C, H, W), in place on the loader's own copy


def load_data(spec: RunSpec, device: torch.device | str = "cpu", *, settings=None) -> DataBundle:
    """Load ``spec.data`` (one read of the raw files), apply the train-split modifiers, normalise, move."""
    root = data_root(spec, settings)
    raw: RawData = DATASETS.build(spec.data.name, spec, root)
    k = spec.data.num_classes
    train_x, train_y = modify_train(spec.data, spec.seed, raw.train_x, raw.train_y, k)
    to = dict(device=device)
    return DataBundle(
        train_x=_normalise(train_x, raw.mean, raw.std, raw.scale).to(**to), train_y=train_y.to(**to),
        test_x=_normalise(raw.test_x, raw.mean, raw.std, raw.scale).to(**to), test_y=raw.test_y.long().to(**to),
        num_classes=k, input_shape=tuple(raw.train_x.shape[1:]), mean=raw.mean, std=raw.std)


__all__ = ["DataBundle", "MissingDataError", "batches", "crop_flip", "data_root", "load_data"]
