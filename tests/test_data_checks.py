"""Data checks: sizes refused at validation, fields named for short classes, SVHN and gzipped MNIST files."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from nc_core.data import MissingDataError, load_data
from nc_core.data.modifiers import modify_train
from nc_core.spec import RunSpec
from test_data import _fake_mnist, _write_idx


@pytest.mark.parametrize("data, says", [
    ({"name": "digits", "test_size": 5}, r"data.test_size: digits has 1797 images; expected 10..1787 test images, got 5"),
    ({"name": "digits", "test_size": 1790}, r"data.test_size: .* got 1790"),
    ({"name": "mnist", "train_size": 8}, r"data.train_size: a random subset of 8 training samples cannot cover the 10 "
                                         r"classes of mnist; expected at least 10"),
    ({"name": "cifar100", "train_size": 99}, r"data.train_size: .* the 100 classes of cifar100"),
    ({"name": "gaussian", "gaussian_dim": 1}, r"data.gaussian_dim: unit-norm centres in 1 dimension are ±1, so at most "
                                              r"2 of the 10 classes .* expected gaussian_dim ≥ 2"),
])
def test_sizes_known_at_validation_are_refused_there(data, says):
    with pytest.raises(ValueError, match=says):
        RunSpec(data=data)


def test_edge_sizes_stay_valid():
    assert RunSpec(data={"name": "digits", "test_size": 10}).data.test_size == 10
    assert RunSpec(data={"name": "digits", "test_size": 1787}).data.test_size == 1787
    assert RunSpec(data={"name": "mnist", "train_size": 10}).data.train_size == 10
    assert RunSpec(data={"name": "gaussian", "gaussian_dim": 1, "gaussian_classes": 2}).data.gaussian_dim == 1


def test_a_random_cap_that_leaves_out_a_class_is_refused_naming_train_size():
    spec = RunSpec(data={"name": "digits", "train_size": 10})
    y = torch.arange(1000) % 10  # (1000,) 100 of each class
    x = torch.zeros(1000, 1, 8, 8)
    with pytest.raises(ValueError, match=r"data.train_size: the seeded random subset of 10 training samples has no "
                                         r"sample of class\(es\) \[.*\]; expected every class"):
        for seed in range(20):  # ten draws of ten from ten classes: most seeds miss one (P(all) = 10!/10^10)
            modify_train(spec.data, seed, x, y, 10)
    _, labels = modify_train(RunSpec(data={"name": "digits", "train_size": 500}).data, 0, x, y, 10)
    assert len(labels) == 500 and set(labels.tolist()) == set(range(10))


@pytest.mark.parametrize("data, field", [
    ({"name": "digits", "per_class": 500}, "data.per_class"),
    ({"name": "digits", "class_counts": [10] * 9 + [500]}, "data.class_counts"),
    ({"name": "digits", "per_class": 500, "imbalance_factor": 0.5}, "data.imbalance_factor (with data.per_class=500)"),
])
def test_a_short_class_names_the_field_that_asked_for_its_count(data, field):
    y = torch.arange(1000) % 10
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: class \d has 100 training samples; "
                                         r"expected at least \d+"):
        modify_train(RunSpec(data=data).data, 0, torch.zeros(1000, 1, 8, 8), y, 10)


def test_svhn_names_both_absent_files(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_data(RunSpec(data={"name": "svhn", "root": str(tmp_path)}), "cpu")
    assert str(tmp_path / "train_32x32.mat") in str(err.value) and str(tmp_path / "test_32x32.mat") in str(err.value)


def test_mnist_idx_files_may_be_gzipped_one_by_one(tmp_path):
    files = _fake_mnist(tmp_path, "MNIST", compress=True)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()  # this one plain, the other three gzipped
    _write_idx(raw / "t10k-labels-idx1-ubyte", files["t10k"][1], compress=False)
    bundle = load_data(RunSpec(data={"name": "mnist", "root": str(tmp_path)}), "cpu")
    assert bundle.test_y.tolist() == files["t10k"][1].tolist() and len(bundle.train_y) == 40
    np.testing.assert_allclose((bundle.train_x[:, 0] * 0.3081 + 0.1307).numpy(), files["train"][0] / 255.0, atol=1e-5)
    (raw / "t10k-labels-idx1-ubyte").unlink()  # now absent in both forms: only it is named
    with pytest.raises(MissingDataError) as err:
        load_data(RunSpec(data={"name": "mnist", "root": str(tmp_path)}), "cpu")
    msg = str(err.value)
    assert str(raw / "t10k-labels-idx1-ubyte") in msg and "train-images-idx3-ubyte" not in msg
