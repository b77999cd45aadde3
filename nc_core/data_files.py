"""Where the file-backed datasets must lie under a data root, and the error when they do not (torch-free)."""
from __future__ import annotations

from pathlib import Path

#: MNIST-like datasets: spec name → torchvision class, also its folder: idx files in <root>/<folder>/raw, plain or .gz.
MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
#: CIFAR: spec name → the folder torchvision extracts under the root, and the files it reads there.
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {"cifar10": (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
               "cifar100": ("train", "test", "meta")}
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")

ROOT_FIX = "or point data.root (or the NCSWEEP_DATA_ROOT environment variable) at a directory that holds them."


class MissingDataError(FileNotFoundError):
    """Dataset files are not where the spec says; the message names the paths and the fixes."""


def idx_paths(root: Path, name: str) -> list[Path]:
    """The four raw idx files of an MNIST-like dataset."""
    raw = root / MNIST_FOLDERS[name] / "raw"
    return [raw / n for pair in IDX_FILES.values() for n in pair]


def expected_paths(name: str, root: Path) -> list[Path]:
    """The paths a file-backed dataset needs under ``root`` ([] for bundled or synthetic data). An MNIST-like
    dataset is also complete with every idx file gzipped (<file>.gz beside it)."""
    if name in MNIST_FOLDERS:
        return idx_paths(root, name)
    if name in CIFAR_FOLDERS:
        return [root / CIFAR_FOLDERS[name] / f for f in CIFAR_FILES[name]]
    if name == "svhn":
        return [root / f for f in SVHN_FILES]
    return []


def absent_files(name: str, root: Path) -> list[Path]:
    """The looked-for paths that are not under ``root`` when dataset ``name`` is not complete there, else []
    (nothing is read: a check that the files are there, before a run is queued). An MNIST-like dataset's idx
    files may each be plain or gzipped (<file>.gz)."""
    paths = expected_paths(name, root)
    if name in MNIST_FOLDERS:  # each idx file plain or gzipped
        absent = [p for p in paths if not (p.exists() or p.with_name(p.name + ".gz").is_file())]
        return absent + [absent[0].with_name("<same>.gz")] if absent else []
    return [p for p in paths if not p.exists()]


def missing(name: str, root: Path, looked_for: list[Path], extra: str = "", *,
            download: bool = False) -> MissingDataError:
    """The error for absent files of dataset ``name``: where it looked and the three fixes."""
    paths = ", ".join(str(p) for p in looked_for)
    if download:  # asked for a download and it failed: advising data.download=true would go round in circles
        fix = (f"data.download=true is set, so torchvision tried to fetch them and could not (is this machine "
               f"offline?). Fix: download them where there is network and copy them there in the torchvision "
               f"layout, {ROOT_FIX}")
    else:
        fix = (f"Fix: put the {name} files there in the torchvision layout, or set data.download=true in the "
               f"spec to let torchvision fetch them, {ROOT_FIX}")
    what = " (it is a file, not a directory)" if root.is_file() else ""
    return MissingDataError(f"dataset {name!r}: files not found under data root {root}{what} (looked for {paths})"
                            f"{extra}. {fix}")
