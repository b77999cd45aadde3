"""Datasets: real-format MNIST idx files through torchvision, missing-data errors, digits/gaussian, modifiers, batches."""
from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nc_core.data import DataBundle, MissingDataError, batches, crop_flip, load_data
from nc_core.settings import Settings
from nc_core.spec import RunSpec


def _write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    header = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", n) for n in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _fake_mnist(root: Path, folder: str, compress: bool, n_train: int = 40, n_test: int = 20):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rs = np.random.RandomState(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rs.randint(0, 256, size=(n, 28, 28))
        y = np.arange(n) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x, compress)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, compress)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("name, folder, mean, std", [("mnist", "MNIST", 0.1307, 0.3081),
                                                     ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530)])
def test_mnist_idx_files_load(tmp_path, compress, name, folder, mean, std):
    files = _fake_mnist(tmp_path, folder, compress)
    bundle = load_data(RunSpec(data={"name": name, "root": str(tmp_path)}), "cpu")
    assert isinstance(bundle, DataBundle) and bundle.num_classes == 10
    assert bundle.train_x.shape == (40, 1, 28, 28) and bundle.test_x.shape == (20, 1, 28, 28)
    assert bundle.input_shape == (1, 28, 28) and bundle.train_x.dtype == torch.float32
    x, y = files["train"]
    np.testing.assert_allclose((bundle.train_x[:, 0] * std + mean).numpy(), x / 255.0, atol=1e-5)
    assert bundle.train_y.tolist() == y.tolist() and bundle.test_y.tolist() == files["t10k"][1].tolist()


@pytest.mark.parametrize("name, expected", [("mnist", "MNIST/raw/train-images-idx3-ubyte"),
                                            ("fashion_mnist", "FashionMNIST/raw"),
                                            ("cifar10", "cifar-10-batches-py"),
                                            ("cifar100", "cifar-100-python"),
                                            ("svhn", "train_32x32.mat")])
def test_missing_data_names_the_path_and_the_fix(tmp_path, name, expected):
    with pytest.raises(MissingDataError) as err:
        load_data(RunSpec(data={"name": name, "root": str(tmp_path)}), "cpu")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / expected) in msg and "data.download=true" in msg and "NCSWEEP_DATA_ROOT" in msg


def test_data_root_from_settings(tmp_path):
    _fake_mnist(tmp_path, "MNIST", compress=False)
    bundle = load_data(RunSpec(data={"name": "mnist"}), "cpu", settings=Settings(data_root=tmp_path))
    assert len(bundle.train_y) == 40
    with pytest.raises(MissingDataError, match=str(tmp_path / "elsewhere")):
        load_data(RunSpec(data={"name": "mnist"}), "cpu", settings=Settings(data_root=tmp_path / "elsewhere"))


def test_an_incomplete_cifar_folder_names_the_missing_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(MissingDataError) as err:
        load_data(RunSpec(data={"name": "cifar10", "root": str(tmp_path)}), "cpu")
    msg = str(err.value)  # was: "are there but could not be read", naming no file
    assert "files not found" in msg and str(folder / "data_batch_3") in msg and str(folder / "batches.meta") in msg
    assert str(folder / "data_batch_1") not in msg
    from nc_core.data_files import absent_files  # the API's check before a sweep is queued sees it too

    assert folder / "data_batch_3" in absent_files("cifar10", tmp_path)


def test_corrupt_cifar_files_are_unreadable_data_named_in_one_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(MissingDataError) as err:
        load_data(RunSpec(data={"name": "cifar10", "root": str(tmp_path)}), "cpu")
    msg = str(err.value)  # all there: corrupt, with torchvision's reason but not its download=True advice
    assert "could not be read (" in msg and "Dataset not found or corrupted" in msg and "incomplete" in msg
    assert str(folder / "test_batch") in msg and "download=True" not in msg and "\n" not in msg


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_corrupt_mnist_files_say_unreadable_not_empty(tmp_path, compress):
    _fake_mnist(tmp_path, "MNIST", compress)
    victim = tmp_path / "MNIST" / "raw" / ("train-images-idx3-ubyte" + (".gz" if compress else ""))
    if compress:
        with gzip.open(victim, "wb") as fh:  # a valid gzip of a truncated idx file
            fh.write(struct.pack(">IIII", 0x0803, 40, 28, 28) + b"\x00" * 100)
    else:
        victim.write_bytes(victim.read_bytes()[:-5000])
    with pytest.raises(MissingDataError) as err:
        load_data(RunSpec(data={"name": "mnist", "root": str(tmp_path)}), "cpu")
    msg = str(err.value)
    assert "could not be read (" in msg and str(tmp_path) in msg and "()" not in msg and "replace them" in msg


@pytest.mark.parametrize("name, cls, exc", [("mnist", "MNIST", RuntimeError("Error downloading train-images")),
                                            ("cifar10", "CIFAR10", OSError("[Errno -3] name resolution failed"))])
def test_failed_download_does_not_advise_download(tmp_path, monkeypatch, name, cls, exc):
    import torchvision.datasets as tvd

    def offline(self):  # noqa: ANN001 - what an offline machine does inside torchvision's download()
        raise exc

    monkeypatch.setattr(getattr(tvd, cls), "download", offline)
    with pytest.raises(MissingDataError) as err:
        load_data(RunSpec(data={"name": name, "root": str(tmp_path), "download": True}), "cpu")
    msg = str(err.value)
    assert "data.download=true is set" in msg and str(exc) in msg and "set data.download=true in" not in msg


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("prefix, images, labels, says", [
    ("t10k", None, np.arange(20) % 10 + 5, "the test split has labels 5..14, expected 0..9"),
    ("train", None, np.arange(30) % 10, "the train split has 40 images but 30 labels"),
    ("train", np.zeros((40, 32, 32)), None, "the train split has images of shape (32, 32), expected (28, 28)")])
def test_idx_files_that_do_not_fit_together_are_refused_naming_them(tmp_path, compress, prefix, images, labels, says):
    # torchvision checks no md5 of idx files: another dataset's files (or a truncated label file) used to load,
    # and fail an epoch later, or train silently on a prefix of the images
    _fake_mnist(tmp_path, "MNIST", compress)
    raw = tmp_path / "MNIST" / "raw"
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        if arr is not None:
            path = raw / f"{prefix}-{kind}-ubyte"
            for old in (path, Path(f"{path}.gz")):
                old.unlink(missing_ok=True)
            _write_idx(path, arr, compress)
    with pytest.raises(MissingDataError) as err:
        load_data(RunSpec(data={"name": "mnist", "root": str(tmp_path)}), "cpu")
    msg = " ".join(str(err.value).split())
    assert says in msg and f"{raw / prefix}-labels-idx1-ubyte" in msg and "replace them" in msg, msg


def test_size_fields_that_would_be_ignored_or_empty_a_class_are_refused():
    with pytest.raises(ValueError, match=r"data.test_size: mnist has a fixed test split; .* \(got test_size=10\)"):
        RunSpec(data={"name": "mnist", "test_size": 10})
    with pytest.raises(ValueError, match=r"data.train_size: 5 gaussian samples cannot cover the 10 classes"):
        RunSpec(data={"name": "gaussian", "train_size": 5})
    assert RunSpec(data={"name": "digits", "test_size": 100}).data.test_size == 100


def test_a_data_root_that_is_a_file_or_an_unknown_users_home_says_so(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MissingDataError, match=r"under data root .*afile \(it is a file, not a directory\)"):
        load_data(RunSpec(data={"name": "mnist", "root": str(tmp_path / "afile")}), "cpu")
    with pytest.raises(ValueError, match=r"data.root: cannot expand '~no-such-user-xyz/d' .* expected an existing"):
        load_data(RunSpec(data={"name": "mnist", "root": "~no-such-user-xyz/d"}), "cpu")


def test_digits_shapes_split_and_seed():
    a = load_data(RunSpec(data={"name": "digits"}, seed=0), "cpu")
    assert a.train_x.shape == (1347, 1, 8, 8) and a.test_x.shape == (450, 1, 8, 8) and a.input_shape == (1, 8, 8)
    assert abs(a.train_x.mean().item()) < 1e-4 and abs(a.train_x.std().item() - 1) < 1e-3
    assert torch.bincount(a.test_y).min() >= 43  # stratified: 17-18 % of ~180 per class
    b = load_data(RunSpec(data={"name": "digits"}, seed=0), "cpu")
    c = load_data(RunSpec(data={"name": "digits"}, seed=1), "cpu")
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    assert len(load_data(RunSpec(data={"name": "digits", "test_size": 300}), "cpu").test_y) == 300


def test_gaussian_shapes_and_structure():
    spec = RunSpec(data={"name": "gaussian", "gaussian_classes": 4, "gaussian_dim": 6, "train_size": 40,
                         "test_size": 12, "gaussian_spread": 0.0})
    bundle = load_data(spec, "cpu")
    assert bundle.train_x.shape == (40, 6) and bundle.test_x.shape == (12, 6) and bundle.input_shape == (6,)
    assert bundle.num_classes == 4 and torch.bincount(bundle.train_y).tolist() == [10] * 4
    for c in range(4):  # zero spread: every sample is its unit-norm class centre, same in both splits
        rows = torch.cat([bundle.train_x[bundle.train_y == c], bundle.test_x[bundle.test_y == c]])
        assert torch.allclose(rows, rows[:1].expand_as(rows)) and rows[0].norm().item() == pytest.approx(1, abs=1e-5)
    again = load_data(spec, "cpu")
    assert torch.equal(again.train_x, bundle.train_x)


def test_imbalance_factor_counts():
    base = load_data(RunSpec(data={"name": "digits"}), "cpu")
    n_max = int(torch.bincount(base.train_y).min())
    bundle = load_data(RunSpec(data={"name": "digits", "imbalance_factor": 0.1}), "cpu")
    want = [math.floor(n_max * 0.1 ** (k / 9)) for k in range(10)]
    assert torch.bincount(bundle.train_y).tolist() == want
    assert torch.equal(bundle.test_y, base.test_y)  # modifiers touch the train split only
    per = load_data(RunSpec(data={"name": "digits", "per_class": 50, "imbalance_factor": 0.5}), "cpu")
    assert torch.bincount(per.train_y).tolist() == [math.floor(50 * 0.5 ** (k / 9)) for k in range(10)]


def test_class_counts_per_class_and_train_size():
    counts = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    bundle = load_data(RunSpec(data={"name": "digits", "class_counts": counts}), "cpu")
    assert torch.bincount(bundle.train_y).tolist() == counts
    base = load_data(RunSpec(data={"name": "digits"}), "cpu")
    first = base.train_x[base.train_y == 3][:8]
    assert torch.equal(bundle.train_x[bundle.train_y == 3], first)  # the first n of each class
    per = load_data(RunSpec(data={"name": "digits", "per_class": 20}), "cpu")
    assert torch.bincount(per.train_y).tolist() == [20] * 10
    capped = load_data(RunSpec(data={"name": "digits", "train_size": 100}), "cpu")
    assert len(capped.train_y) == 100
    with pytest.raises(ValueError, match="expected at least 1000"):
        load_data(RunSpec(data={"name": "digits", "per_class": 1000}), "cpu")


def _gauss(seed: int = 0, **data) -> RunSpec:
    return RunSpec(data={"name": "gaussian", "gaussian_dim": 4, "train_size": 5000, "test_size": 10, **data},
                   seed=seed)


def test_label_noise_fraction_and_determinism():
    clean = load_data(_gauss(), "cpu").train_y
    noisy = load_data(_gauss(label_noise=0.4), "cpu").train_y
    changed = (noisy != clean).float().mean().item()
    assert changed == pytest.approx(0.4 * 9 / 10, abs=0.02)  # replaced uniformly: 1/K keep their label
    assert torch.equal(noisy, load_data(_gauss(label_noise=0.4), "cpu").train_y)
    other_clean = load_data(_gauss(seed=1), "cpu").train_y
    other_noisy = load_data(_gauss(seed=1, label_noise=0.4), "cpu").train_y
    assert not torch.equal((other_noisy != other_clean), (noisy != clean))  # another seed, other samples


def test_random_labels_are_a_seeded_permutation_that_keeps_the_class_counts():
    clean = load_data(_gauss(), "cpu").train_y
    rand = load_data(_gauss(random_labels=True), "cpu").train_y
    assert (rand == clean).float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert torch.equal(torch.bincount(rand, minlength=10), torch.bincount(clean, minlength=10))
    assert torch.equal(rand, load_data(_gauss(random_labels=True), "cpu").train_y)
    assert not torch.equal(rand, load_data(_gauss(seed=1, random_labels=True), "cpu").train_y)
    for seed in range(5):  # tiny balanced subsets stay balanced: no class emptied by chance (tding1's permutation)
        few = RunSpec(data={"name": "digits", "per_class": 2, "random_labels": True}, seed=seed)
        assert torch.bincount(load_data(few, "cpu").train_y, minlength=10).tolist() == [2] * 10


@pytest.mark.parametrize("shape", [{"per_class": 50}, {"class_counts": [30] * 10}, {"imbalance_factor": 0.5}])
def test_a_train_size_cap_beside_class_counts_is_refused_naming_both(shape):
    with pytest.raises(ValueError, match=rf"data.train_size: a random cap would undo the class counts "
                                         rf"data.{next(iter(shape))} asks for"):
        RunSpec(data={"name": "digits", "train_size": 300, **shape})
    RunSpec(data={"name": "gaussian", "train_size": 300, **shape})  # gaussian: train_size is how many to draw


def test_batches_cover_everything_and_drop_last():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    g = torch.Generator().manual_seed(0)
    got = list(batches(x, y, 4, shuffle=True, generator=g))
    assert [len(b[1]) for b in got] == [4, 4, 2] and sorted(torch.cat([b[1] for b in got]).tolist()) == list(range(10))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in got)
    assert [len(b[1]) for b in batches(x, y, 4, shuffle=False, generator=None, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="unknown augment 'rotate'"):
        next(batches(x, y, 4, shuffle=False, generator=None, augment="rotate"))


def test_crop_flip_matches_loop_reference_and_replays():
    x = torch.randn(6, 2, 8, 8)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = crop_flip(x, g)
    g.set_state(state)
    assert torch.equal(crop_flip(x, g), out)  # same generator state -> same augmentation (resumable)
    g.set_state(state)
    pad = 1  # max(1, round(4 * 8 / 32))
    dy = torch.randint(0, 2 * pad + 1, (6,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(6):
        crop = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)


def test_crop_flip_pads_with_the_fill_colour_exactly():
    # the seeds pad PIL images black before Normalize: after normalisation that is −mean/std per channel
    x = torch.randn(64, 3, 32, 32)
    fill = torch.tensor([-1.9, -2.0, -1.7])
    out = crop_flip(x, torch.Generator().manual_seed(0), fill)
    g = torch.Generator().manual_seed(0)
    plain = crop_flip(x, g)  # the same draws, zero padding
    border = plain == 0  # the padded pixels (randn is never exactly 0)
    assert border.any()
    assert torch.equal(out[~border], plain[~border])  # the image itself: bit for bit
    assert torch.equal(out[border], fill[None, :, None, None].expand_as(out)[border])


def test_batches_with_augmentation_are_reproducible():
    bundle = load_data(RunSpec(data={"name": "digits", "per_class": 5}), "cpu")

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [xb for xb, _ in batches(bundle.train_x, bundle.train_y, 16, shuffle=True, generator=g,
                                        augment="crop_flip")]
    a, b = run(0), run(0)
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and a[0].shape == (16, 1, 8, 8)
    assert not torch.equal(torch.cat(a), torch.cat(run(1)))


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_channels_last_images_stay_channels_last_in_every_batch(augment):
    # CUDA convnet runs store the split channels_last; a row gather or crop_flip's gather returned NCHW batches
    x = torch.randn(40, 3, 8, 8)
    y = torch.arange(40) % 4
    nhwc = x.contiguous(memory_format=torch.channels_last)
    for shuffle in (True, False):
        plain = list(batches(x, y, 16, shuffle=shuffle, generator=torch.Generator().manual_seed(0), augment=augment))
        last = list(batches(nhwc, y, 16, shuffle=shuffle, generator=torch.Generator().manual_seed(0),
                            augment=augment))
        assert len(last) == 3  # 16 + 16 + 8: the loop below checks something
        for (xa, ya), (xb, yb) in zip(plain, last, strict=True):
            assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_train_subset_is_selected_from_the_uint8_images_before_the_float_copy(tmp_path, monkeypatch):
    # the modifiers' x[keep] beside a float copy of the whole split held both at once (+0.5 GB on CIFAR-10)
    import nc_core.data as data

    files = _fake_mnist(tmp_path, "MNIST", compress=False, n_train=60)
    seen = []
    modify = data.modify_train
    monkeypatch.setattr(data, "modify_train",
                        lambda spec, seed, x, y, k: seen.append(x.dtype) or modify(spec, seed, x, y, k))
    bundle = load_data(RunSpec(data={"name": "mnist", "root": str(tmp_path), "per_class": 3}), "cpu")
    assert seen == [torch.uint8] and bundle.train_x.dtype == torch.float32 and bundle.train_x.shape == (30, 1, 28, 28)
    x, y = files["train"]
    kept = np.sort(np.concatenate([np.flatnonzero(y == c)[:3] for c in range(10)]))  # the first 3 of each class
    full = load_data(RunSpec(data={"name": "mnist", "root": str(tmp_path)}), "cpu")
    assert torch.equal(bundle.train_x, full.train_x[torch.from_numpy(kept)])  # the same bits as before
    np.testing.assert_allclose((bundle.train_x[:, 0] * 0.3081 + 0.1307).numpy(), x[kept] / 255.0, atol=1e-5)
