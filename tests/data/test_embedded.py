"""The embedded synthetic dataset: determinism, layout, difficulty sanity checks, checksums, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from reproduce.data import embedded
from reproduce.data.base import SPLITS
from reproduce.errors import ReproduceError

N_CLASSES = 8


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """The full default dataset, generated once for the module (the slow part, ~10 s)."""
    return embedded.generate_arrays()


@pytest.fixture(scope="module")
def npz_path(arrays, tmp_path_factory):
    return embedded.write_npz(tmp_path_factory.mktemp("embedded") / embedded.FILENAME, arrays)


def _small(seed: int = 0, n_train: int = 24) -> dict[str, np.ndarray]:
    return embedded.generate_arrays(seed=seed, n_train=n_train, n_val=8, n_test=16)


# ---- determinism


def test_file_checksum_matches_pinned_constant(npz_path):
    assert embedded.sha256_file(npz_path) == embedded.EMBEDDED_SHA256


def test_generation_is_deterministic_and_seeded():
    first, second = _small(), _small()
    assert list(first) == list(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    other = _small(seed=1)
    assert not np.array_equal(first["train_images"], other["train_images"])


def test_splits_draw_from_independent_streams():
    a, b = _small(n_train=24), _small(n_train=32)
    for key in ("val_images", "val_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(a[key], b[key])


def test_writer_is_byte_identical(arrays, npz_path, tmp_path):
    again = embedded.write_npz(tmp_path / "again.npz", arrays)
    assert again.read_bytes() == npz_path.read_bytes()


# ---- layout


def test_medmnist_layout(arrays):
    assert list(arrays) == [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
    for split in SPLITS:
        n = embedded.DEFAULT_SIZES[split]
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        assert images.shape == (n, 28, 28, 3) and images.dtype == np.uint8
        assert labels.shape == (n, 1) and np.issubdtype(labels.dtype, np.integer)
        assert images.flags.c_contiguous


def test_labels_in_range_and_balanced(arrays):
    for split in SPLITS:
        labels = arrays[f"{split}_labels"][:, 0]
        assert labels.min() >= 0 and labels.max() < N_CLASSES
        counts = np.bincount(labels, minlength=N_CLASSES)
        assert counts.max() - counts.min() <= 1, (split, counts)


def test_info_metadata():
    info = embedded.INFO
    assert info.name == "embedded" and info.task == "multi-class" and info.n_channels == 3
    assert info.labels["0"] == "lymphocyte" and info.num_classes == N_CLASSES
    assert sorted(info.labels, key=int) == [str(i) for i in range(N_CLASSES)]
    assert "synthetic" in info.source


def test_images_use_the_dynamic_range(arrays):
    images = arrays["train_images"]
    assert images.std() > 20          # not blank
    assert 120 < images.mean() < 230  # a light, smear-like background with darker objects


# ---- difficulty sanity checks


def test_mean_colour_does_not_identify_the_class(arrays):
    """A nearest-class-mean classifier on an image's mean RGB stays near chance (1/8)."""
    train = arrays["train_images"].mean(axis=(1, 2))
    test = arrays["test_images"].mean(axis=(1, 2))
    y_train, y_test = arrays["train_labels"][:, 0], arrays["test_labels"][:, 0]
    means = np.stack([train[y_train == c].mean(axis=0) for c in range(N_CLASSES)])
    pred = ((test[:, None, :] - means[None]) ** 2).sum(axis=-1).argmin(axis=1)
    assert (pred == y_test).mean() < 0.3


def test_no_canonical_orientation(arrays):
    """Each class-mean image is close to its own 90-degree rotation (objects are uniformly rotated)."""
    images = arrays["train_images"].astype(np.float64)
    labels = arrays["train_labels"][:, 0]
    for c in range(N_CLASSES):
        mean = images[labels == c].mean(axis=0)
        asym = np.abs(mean - np.rot90(mean, 1, axes=(0, 1))).mean()
        contrast = np.abs(mean - mean.mean(axis=(0, 1))).mean()
        assert asym < 2.0, (c, asym)
        assert asym < 0.25 * contrast, (c, asym, contrast)


# ---- checksums, prepare, load


def test_load_returns_verified_splits(arrays, npz_path):
    splits = embedded.load(npz_path)
    assert splits.info.sha256 == embedded.EMBEDDED_SHA256
    assert splits.info.source == embedded.SOURCE and splits.info.num_classes == N_CLASSES
    for split in SPLITS:
        np.testing.assert_array_equal(splits.images(split), arrays[f"{split}_images"])
        np.testing.assert_array_equal(splits.labels(split), arrays[f"{split}_labels"])
        assert splits.labels(split).dtype == np.int64


def test_load_detects_a_flipped_byte(npz_path, tmp_path):
    data = bytearray(npz_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    corrupt = tmp_path / embedded.FILENAME
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ReproduceError) as err:
        embedded.load(corrupt)
    message = str(err.value)
    assert str(corrupt) in message
    assert embedded.EMBEDDED_SHA256 in message
    assert embedded.sha256_file(corrupt) in message


def test_load_missing_file(tmp_path):
    with pytest.raises(ReproduceError, match="does not exist"):
        embedded.load(tmp_path / embedded.FILENAME)


def test_prepare_keeps_a_good_file_and_replaces_a_bad_one(arrays, npz_path, tmp_path, monkeypatch):
    calls = []

    def fake_generate(**kwargs):
        calls.append(kwargs)
        return arrays

    monkeypatch.setattr(embedded, "generate_arrays", fake_generate)
    target = tmp_path / embedded.FILENAME
    target.write_bytes(npz_path.read_bytes())
    assert embedded.prepare(tmp_path) == target and calls == []   # valid file: left alone

    target.write_bytes(b"not an npz")
    assert embedded.prepare(tmp_path) == target and len(calls) == 1
    assert embedded.sha256_file(target) == embedded.EMBEDDED_SHA256
    assert sorted(os.listdir(tmp_path)) == [embedded.FILENAME]

    (tmp_path / "fresh").mkdir()
    assert embedded.prepare(tmp_path / "fresh") == tmp_path / "fresh" / embedded.FILENAME


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_prepare_says_on_stderr_which_file_it_regenerates_and_why(arrays, npz_path, tmp_path, monkeypatch,
                                                                  capsys, damage):
    monkeypatch.setattr(embedded, "generate_arrays", lambda **kwargs: arrays)
    assert embedded.prepare(tmp_path) and capsys.readouterr().err == ""    # first creation: nothing to say
    target = tmp_path / embedded.FILENAME
    target.write_bytes(npz_path.read_bytes()[:1000] if damage == "truncated" else b"")
    assert embedded.prepare(tmp_path) == target
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {target} ")
    assert "checksum mismatch" in err and "regenerating" in err
    assert embedded.sha256_file(target) == embedded.EMBEDDED_SHA256 and os.listdir(tmp_path) == [embedded.FILENAME]


def test_prepare_on_a_full_disk_leaves_no_file(tmp_path, monkeypatch, failing_disk):
    small = _small()
    monkeypatch.setattr(embedded, "generate_arrays", lambda **kwargs: small)
    failing_disk()
    with pytest.raises(ReproduceError, match=f"Could not write {tmp_path / embedded.FILENAME}: No space left"):
        embedded.prepare(tmp_path)
    assert os.listdir(tmp_path) == []


def test_prepare_reports_drift(tmp_path, monkeypatch):
    other = _small()       # stands in for what a numpy with different random streams would give
    monkeypatch.setattr(embedded, "generate_arrays", lambda **kwargs: other)
    with pytest.raises(ReproduceError, match="numpy"):
        embedded.prepare(tmp_path)


# ---- atomic writes


def test_write_leaves_no_temp_file(tmp_path):
    small = _small()
    path = embedded.write_npz(tmp_path / "x.npz", small)
    assert os.listdir(tmp_path) == ["x.npz"]
    with np.load(path, allow_pickle=False) as npz:
        assert npz.files == list(small)
        for key in small:
            np.testing.assert_array_equal(npz[key], small[key])


def test_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = embedded.write_npz(tmp_path / "x.npz", _small())
    before = path.read_bytes()
    with pytest.raises(ValueError):
        embedded.write_npz(path, {"train_images": np.array([object()], dtype=object)})
    assert os.listdir(tmp_path) == ["x.npz"]
    assert path.read_bytes() == before
