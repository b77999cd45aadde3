"""Raw dataset sources (torchvision files, bundled digits, synthetic gaussian) -> CPU tensors in [0, 1]."""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nc_core.data_files import (CIFAR_FOLDERS, IDX_FILES, MNIST_FOLDERS, ROOT_FIX, SVHN_FILES, MissingDataError,
                                absent_files, expected_paths, idx_paths, missing)
from nc_core.registry import DATASETS
from nc_core.spec import RunSpec

__all__ = ["MissingDataError", "RawData", "missing", "unreadable"]


@dataclass
class RawData:
    """Un-normalised splits on the CPU: x (N, C, H, W) or (N, D) with x/scale in [0, 1] — image files stay uint8
    (scale 255) until the train-split modifiers have dropped what they drop, so a subset never sits beside a
    float copy of the whole split; y int64 (N,)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: tuple[float, ...]  # per channel of x/scale (images) / per input (gaussian: zeros)
    std: tuple[float, ...]
    scale: float = 1.0


def rng(seed: int, stream: int) -> np.random.Generator:
    """Independent numpy stream ``stream`` of run seed ``seed`` (one per random decision)."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, stream]))


_READ_ERRORS = (RuntimeError, AssertionError, ValueError, EOFError, OSError, KeyError, IndexError, TypeError)


_TORCHVISION_HINT = re.compile(r"\s*You can use download=True to download it\.?")


def unreadable(name: str, root: Path, err: BaseException, files: str | None = None) -> MissingDataError:
    """The error for files that are there but corrupt or truncated (a torchvision assert has no message);
    ``files``: which ones, when known."""
    text = " ".join(_TORCHVISION_HINT.sub("", str(err)).split())  # one line, without torchvision's download=True
    why = f"{type(err).__name__}: {text}" if text else f"{type(err).__name__} in the file reader"
    why = f"{files}: {why}" if files else why
    return MissingDataError(
        f"dataset {name!r}: the files under data root {root} are there but could not be read ({why}); they are "
        f"corrupt, incomplete, truncated or of another format. Fix: replace them with intact {name} files (or "
        f"delete them and set data.download=true to fetch them again), {ROOT_FIX}")


def _check_split(spec: RunSpec, root: Path, split: str, files: str, x: Tensor, y: Tensor, shape: tuple) -> None:
    """What a file set must hold, checked when it is read (torchvision checks no md5 of idx files, so any idx
    file passes it): as many labels as images, images of ``shape``, labels in 0..K−1."""
    k, problems = spec.data.num_classes, []
    if len(x) != len(y):
        problems.append(f"{len(x)} images but {len(y)} labels")
    if tuple(x.shape[1:]) != shape:
        problems.append(f"images of shape {tuple(x.shape[1:])}, expected {shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        problems.append(f"labels {int(y.min())}..{int(y.max())}, expected 0..{k - 1}")
    if problems:
        raise unreadable(spec.data.name, root, ValueError(f"the {split} split has " + "; ".join(problems)), files)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (idx files)


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx (SN3 'Pascal Vincent') uint8 file, gzip-compressed when its name ends in .gz."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    ndim, dtype_code = magic % 256, magic // 256
    if dtype_code != 0x08:
        raise ValueError(f"{path}: expected an idx uint8 file (type 0x08), got type {dtype_code:#x}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist_like(spec: RunSpec, root: Path, tv_name: str, mean: float, std: float) -> RawData:
    paths = idx_paths(root, spec.data.name)  # <root>/<folder>/raw/<idx file>
    raw = paths[0].parent
    have_raw = all(p.is_file() for p in paths)
    absent = absent_files(spec.data.name, root)  # each file plain or gzipped
    splits: dict[str, tuple[Tensor, Tensor]] = {}
    name, download = spec.data.name, spec.data.download
    if have_raw or (download and absent):
        import torchvision.datasets as tvd

        for split in ("train", "test"):
            try:
                ds = getattr(tvd, tv_name)(str(root), train=split == "train", download=download)
            except (RuntimeError, OSError) as err:  # not found, a truncated file, or the download failed
                if have_raw:
                    raise unreadable(name, root, err, ", ".join(str(raw / f) for f in IDX_FILES[split])) from err
                raise missing(name, root, paths, f" ({' '.join(str(err).split())})", download=download) from err
            except Exception as err:  # noqa: BLE001 - torchvision's idx reader asserts, reshapes, indexes
                raise unreadable(name, root, err, ", ".join(str(raw / f) for f in IDX_FILES[split])) from err
            splits[split] = (ds.data, ds.targets)
    elif not absent:  # some or all gzipped: each read as it is
        for split, (img, lab) in IDX_FILES.items():
            img_path, lab_path = (raw / f if (raw / f).is_file() else raw / f"{f}.gz" for f in (img, lab))
            try:
                x = torch.from_numpy(_read_idx(img_path).copy())
                y = torch.from_numpy(_read_idx(lab_path).astype(np.int64))
            except _READ_ERRORS as err:
                raise unreadable(name, root, err, f"{img_path}, {lab_path}") from err
            splits[split] = (x, y)
    else:
        raise missing(spec.data.name, root, absent)
    for split, (x, y) in splits.items():
        _check_split(spec, root, split, ", ".join(str(raw / f) for f in IDX_FILES[split]), x, y, (28, 28))
    (trx, try_), (tex, tey) = splits["train"], splits["test"]
    return RawData(trx[:, None], try_.long(), tex[:, None], tey.long(), (mean,), (std,), 255.0)  # (N, 1, 28, 28) uint8


@DATASETS.register("mnist")
def _mnist(spec: RunSpec, root: Path) -> RawData:
    return _mnist_like(spec, root, MNIST_FOLDERS["mnist"], 0.1307, 0.3081)


@DATASETS.register("fashion_mnist")
def _fashion_mnist(spec: RunSpec, root: Path) -> RawData:
    return _mnist_like(spec, root, MNIST_FOLDERS["fashion_mnist"], 0.2860, 0.3530)


# ---------------------------------------------------------------- CIFAR / SVHN (md5-checked by torchvision)
def _torchvision_split(spec: RunSpec, root: Path, expected: list[Path], make) -> tuple[np.ndarray, np.ndarray]:
    """``make()`` a torchvision dataset (data, labels as numpy); absent or corrupt files -> MissingDataError."""
    download, files = spec.data.download, ", ".join(str(p) for p in expected)
    absent = [p for p in expected if not p.exists()]
    if absent and not download:
        raise missing(spec.data.name, root, absent)
    try:
        ds = make()
    except (RuntimeError, OSError) as err:  # "Dataset not found or corrupted" (md5 mismatch), a failed download
        if all(p.exists() for p in expected):  # there, but incomplete or failing torchvision's md5 check
            raise unreadable(spec.data.name, root, err, files) from err
        said = " ".join(_TORCHVISION_HINT.sub("", str(err)).split())
        raise missing(spec.data.name, root, absent, f"; torchvision says: {said}", download=download) from err
    except Exception as err:  # noqa: BLE001 - a pickle or .mat reader's own error (UnpicklingError, MatReadError)
        raise unreadable(spec.data.name, root, err, files) from err
    labels = getattr(ds, "targets", None)
    return np.asarray(ds.data), np.asarray(labels if labels is not None else ds.labels)


def _cifar(spec: RunSpec, root: Path, cls: str, folder: str, mean, std) -> RawData:
    import torchvision.datasets as tvd

    out = []
    for train in (True, False):
        x, y = _torchvision_split(spec, root, expected_paths(spec.data.name, root), partial(
            getattr(tvd, cls), str(root), train=train, download=spec.data.download))
        x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8: one float copy later
        y = torch.from_numpy(y.astype(np.int64))
        _check_split(spec, root, "train" if train else "test", str(root / folder), x, y, (3, 32, 32))
        out += [x, y]
    return RawData(*out, mean, std, 255.0)


@DATASETS.register("cifar10")
def _cifar10(spec: RunSpec, root: Path) -> RawData:
    return _cifar(spec, root, "CIFAR10", CIFAR_FOLDERS["cifar10"], (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@DATASETS.register("cifar100")
def _cifar100(spec: RunSpec, root: Path) -> RawData:
    return _cifar(spec, root, "CIFAR100", CIFAR_FOLDERS["cifar100"], (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@DATASETS.register("svhn")
def _svhn(spec: RunSpec, root: Path) -> RawData:
    import torchvision.datasets as tvd

    absent = [root / f for f in SVHN_FILES if not (root / f).exists()]
    if absent and not spec.data.download:  # both named at once, as the service's check names them
        raise missing(spec.data.name, root, absent)
    out = []
    for split, file in zip(("train", "test"), SVHN_FILES):
        x, y = _torchvision_split(spec, root, [root / file], partial(
            tvd.SVHN, str(root), split=split, download=spec.data.download))
        x = torch.from_numpy(np.ascontiguousarray(x))  # (N, 3, 32, 32) uint8 (torchvision's is a transposed view)
        y = torch.from_numpy(y.astype(np.int64))
        _check_split(spec, root, split, str(root / file), x, y, (3, 32, 32))
        out += [x, y]
    return RawData(*out, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 255.0)


# ---------------------------------------------------------------- bundled and synthetic
@DATASETS.register("digits")
def _digits(spec: RunSpec, root: Path) -> RawData:
    """sklearn's bundled 8×8 digits (1797 images, 1×8×8), stratified split (test 25% by default).

    The split is drawn from ``spec.seed``, and the normalisation mean/std are those of its training part:
    runs with different seeds train and test on different images, with slightly different statistics.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    test_size = spec.data.test_size if spec.data.test_size is not None else 0.25
    trx, tex, try_, tey = train_test_split(x, y, test_size=test_size, stratify=y,
                                           random_state=spec.seed & 0xFFFFFFFF)
    mean, std = float(trx.mean()), float(trx.std())
    return RawData(torch.from_numpy(trx), torch.from_numpy(try_.astype(np.int64)),
                   torch.from_numpy(tex), torch.from_numpy(tey.astype(np.int64)), (mean,), (std,))


@DATASETS.register("gaussian")
def _gaussian(spec: RunSpec, root: Path) -> RawData:
    """K random unit-norm centres in R^D; x = centre + spread·z/√D (so E‖x − centre‖² = spread²).

    Balanced labels; train_size / test_size default to 100·K each. The centres and both splits are drawn from
    spec.seed (streams 0, 1, 2): each seed is another problem, so a spread over seeds includes the data's.
    """
    d = spec.data
    k, dim = d.gaussian_classes, d.gaussian_dim
    centres = rng(spec.seed, 0).standard_normal((k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # (K, D)

    def draw(n: int, stream: int) -> tuple[Tensor, Tensor]:
        g = rng(spec.seed, stream)
        y = g.permutation(np.arange(n) % k)  # (n,) balanced
        x = centres[y] + d.gaussian_spread * g.standard_normal((n, dim)) / np.sqrt(dim)  # (n, D)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    trx, try_ = draw(d.train_size or 100 * k, 1)
    tex, tey = draw(d.test_size or 100 * k, 2)
    return RawData(trx, try_, tex, tey, (0.0,), (1.0,))
