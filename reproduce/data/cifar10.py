"""CIFAR-10 from the official python archive (``cifar-10-python.tar.gz``).

``prepare`` downloads the official archive (MD5-verified) to ``root/cifar-10-python.tar.gz``, from
``mirror=`` or ``$REPRODUCE_CIFAR10_MIRROR`` when set (``<mirror>/cifar-10-python.tar.gz``), or copies
a local archive in after checking the sha256 the user states for it. The offline rebuild from JPEGs
(``../shared/data/make_cifar10_python.py`` beside the checkout) has the same layout but other bytes; its sha256 is
``OFFLINE_REBUILD_SHA256``.

``load`` reads the pickled batches without running arbitrary pickle code (only numpy arrays, lists,
dicts, bytes and ints are accepted) and returns images uint8 [N, 32, 32, 3] and labels int64 [N, 1].

Validation split: CIFAR-10 has none. We hold out the LAST 10 % of the training set in archive order
(data_batch_1, ..., data_batch_5), i.e. the last 5000 images of data_batch_5 for the real data set,
as validation; training keeps the first 45000. The test set stays untouched, so validation-based
choices never see test images. The official batches are already in random order, so the held-out
images are close to class-balanced (not exactly 500 per class).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from reproduce.data.base import DatasetInfo, Splits
from reproduce.data.download import copy_verified, fetch, hash_file, local_file_hint, mirror_url
from reproduce.data.registry import DatasetSource, register_dataset
from reproduce.errors import ReproduceError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FILENAME = "cifar-10-python.tar.gz"
MIRROR_ENV = "REPRODUCE_CIFAR10_MIRROR"
# sha256 of the archive make_cifar10_python.py builds from the JPEG export (README in ../shared/data)
OFFLINE_REBUILD_SHA256 = "01fbbf526860412bf45fc2eae7f7644903c0c0542f91c16898d813f8015562ef"
N_TRAIN, N_TEST = 50000, 10000
VAL_FRACTION = 10  # val = last len(train) // VAL_FRACTION training images
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
MEMBERS = (*TRAIN_BATCHES, "test_batch", "batches.meta")
PREFIX = "cifar-10-batches-py/"
# The official batches.meta label names: metadata without the archive (smoke runs, `reproduce params`).
LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# A damaged archive reaches load() only with a checksum that the study states for it (or after it was
# damaged in place): the bytes to replace are the user's.
_DAMAGED = (f"Replace it with an intact {FILENAME} (delete it and run `reproduce fetch cifar10` again, or fix "
            "the local file or mirror copy the study names with data.local_files / data.mirror_sha256).")

HINT = (f"Check that the mirror serves {FILENAME}, set {MIRROR_ENV} to a mirror base URL (the file is "
        f"fetched as <mirror>/{FILENAME}), or pass local_file=<path to cifar-10-python.tar.gz> with "
        f"sha256=<its sha256>.")


def resolve_url(mirror: str | None = None) -> str:
    """The URL ``prepare`` downloads from: ``mirror``, else ``$REPRODUCE_CIFAR10_MIRROR``, else official."""
    return mirror_url(URL, mirror or os.environ.get(MIRROR_ENV) or None)


def prepare(*, root: Path, mirror: str | None = None, local_file: Path | str | None = None,
            sha256: str | None = None) -> Path:
    """Put a verified ``cifar-10-python.tar.gz`` into ``root`` and return its path.

    Downloads are checked against the official MD5 unless ``sha256`` is given; a ``local_file`` is
    checked against ``sha256`` if given, else against the official MD5. An already present, matching
    archive is used without network access.
    """
    if local_file is not None and mirror:
        raise ReproduceError("Give either mirror= or local_file=, not both.")
    dest = Path(root) / FILENAME
    checks = {"sha256": sha256} if sha256 else {"md5": MD5}
    if local_file is not None:
        return copy_verified(local_file, dest, what="CIFAR-10", hint=local_file_hint("cifar10"), **checks)
    return fetch(resolve_url(mirror), dest, what="CIFAR-10", hint=HINT, **checks)


class _Pickled:
    """A numpy dtype or array as a pickle describes it (constructor arguments, then BUILD's state).

    numpy's own ``__setstate__`` crashes the process (SIGSEGV) on some damaged states, so an archive's
    arrays are built by ``_built`` from checked states instead.
    """

    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


class _PickledDtype(_Pickled):
    pass


class _PickledArray(_Pickled):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/bytes/ints and numpy arrays only: an archive cannot run code on load."""

    STAND_INS = {("numpy.core.multiarray", "_reconstruct"): _PickledArray,
                 ("numpy._core.multiarray", "_reconstruct"): _PickledArray,  # pickled by numpy 2
                 ("numpy", "dtype"): _PickledDtype}
    ALLOWED = {("numpy", "ndarray"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        stand_in = self.STAND_INS.get((module, name))
        if stand_in is not None:
            return stand_in
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _built(obj):
    """``obj`` with every ``_PickledArray`` in it built; ValueError for a damaged one."""
    if isinstance(obj, _PickledArray):
        return _array(obj)
    if isinstance(obj, _Pickled):
        raise ValueError("a numpy dtype outside an array")
    if isinstance(obj, dict):
        return {k: _built(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_built(v) for v in obj]
    return obj


def _array(pickled: _PickledArray) -> np.ndarray:
    """The array of ndarray.__reduce__'s state (version, shape, dtype, fortran order, raw bytes), checked."""
    if not isinstance(pickled.state, tuple) or len(pickled.state) != 5:
        raise ValueError(f"damaged array state {pickled.state!r:.80}")
    _, shape, dtype, fortran, raw = pickled.state
    dtype = _dtype(dtype)
    if isinstance(raw, str):  # a Python 2 str, decoded as latin1 by the unpickler
        raw = raw.encode("latin1")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)
            and isinstance(raw, bytes) and len(raw) == math.prod(shape) * dtype.itemsize):
        raise ValueError(f"damaged array: shape {shape!r:.40} does not fit {type(raw).__name__} data")
    return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _dtype(pickled) -> np.dtype:
    """A plain numeric dtype from np.dtype's pickled arguments and byte order."""
    if not isinstance(pickled, _PickledDtype) or not pickled.args or not isinstance(pickled.args[0], str):
        raise ValueError(f"damaged array dtype {pickled!r:.80}")
    dtype = np.dtype(pickled.args[0])
    if dtype.kind not in "biuf":
        raise ValueError(f"array dtype {dtype} is not numeric")
    order = pickled.state[1] if isinstance(pickled.state, tuple) and len(pickled.state) > 1 else "|"
    return dtype.newbyteorder(order) if order in ("<", ">") else dtype


def _unpickle(raw: bytes, where: str) -> dict[str, object]:
    try:
        # latin1: the official batches were pickled by Python 2 (numpy's recommended decoding)
        obj = _built(_ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load())
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a broken archive
        raise ReproduceError(f"{where} is not a CIFAR-10 python batch: {e}. {_DAMAGED}") from None
    if not isinstance(obj, dict):
        raise ReproduceError(f"{where} is not a CIFAR-10 python batch (a {type(obj).__name__}, not a dict)")
    # Python 2 pickles decode to str keys, Python 3 ones (the offline rebuild) keep bytes keys
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_members(path: Path) -> dict[str, dict]:
    found: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # one pass: seeking back in a .gz would decompress again
                name = member.name.removeprefix("./")
                if member.isfile() and name.startswith(PREFIX) and name[len(PREFIX):] in MEMBERS:
                    found[name[len(PREFIX):]] = _unpickle(tar.extractfile(member).read(), f"{path}:{name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # zlib: a damaged .gz stream
        raise ReproduceError(f"{path} is not a readable tar archive: {e}. {_DAMAGED}") from None
    missing = [PREFIX + m for m in MEMBERS if m not in found]
    if missing:
        raise ReproduceError(f"{path} is not in the CIFAR-10 python layout: missing {', '.join(missing)}.")
    return found


def _batch(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (KeyError, ValueError, TypeError, OverflowError) as e:
        raise ReproduceError(f"{where}: no usable 'data'/'labels' ({e})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ReproduceError(f"{where}: data {data.dtype} {list(data.shape)} with {labels.shape} labels, "
                             f"expected uint8 [N, 3072] and N labels")
    # rows are R, G, B planes of 32x32, row-major
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def load(path: Path | str, *, val_size: int | None = None) -> Splits:
    """Read a ``cifar-10-python.tar.gz`` into Splits (see the module docstring for the validation split).

    ``val_size`` defaults to len(train) // 10 (5000 for the real data). Sample counts are checked
    against 50000/10000 when the archive is the official one (its MD5 matches) or the offline rebuild.
    """
    path = Path(path)
    if not path.is_file():
        raise ReproduceError(f"CIFAR-10 archive {path} does not exist; run prepare() first.")
    digests = hash_file(path, ("md5", "sha256"))
    official = digests["md5"] == MD5
    members = _read_members(path)
    names = members["batches.meta"].get("label_names")
    if not isinstance(names, list) or not names:
        raise ReproduceError(f"{path}: batches.meta has no label_names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    parts = [_batch(members[m], f"{path}:{m}") for m in TRAIN_BATCHES]
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    test_x, test_y = _batch(members["test_batch"], f"{path}:test_batch")
    for split, y in (("train", train_y), ("test", test_y)):
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            raise ReproduceError(f"{path}: {split} labels outside 0..{len(names) - 1}")
    if (official or digests["sha256"] == OFFLINE_REBUILD_SHA256) and (len(train_x), len(test_x)) != (N_TRAIN, N_TEST):
        raise ReproduceError(f"{path}: {len(train_x)} training and {len(test_x)} test images, "
                             f"CIFAR-10 has {N_TRAIN} and {N_TEST}")

    n_val = len(train_x) // VAL_FRACTION if val_size is None else val_size
    if not 0 < n_val < len(train_x):
        raise ReproduceError(f"{path}: cannot hold out {n_val} of {len(train_x)} training images for validation")
    cut = len(train_x) - n_val
    arrays = {"train_images": train_x[:cut], "train_labels": train_y[:cut, None],
              "val_images": train_x[cut:], "val_labels": train_y[cut:, None],
              "test_images": test_x, "test_labels": test_y[:, None]}
    info = DatasetInfo(name="cifar10", task="multi-class", n_channels=3,
                       labels={str(i): n for i, n in enumerate(names)},
                       source=URL if official else str(path), sha256=digests["sha256"])
    return Splits(info=info, arrays=arrays)


def info() -> DatasetInfo:
    """Metadata of the official archive; ``sha256`` is "" until ``load`` reads a file."""
    return DatasetInfo(name="cifar10", task="multi-class", n_channels=3,
                       labels={str(i): n for i, n in enumerate(LABELS)}, source=URL, sha256="")


# One archive at 32 px whatever the study's data.size; De et al.'s crops and flips.
register_dataset(DatasetSource(
    name="cifar10", augmentation="cifar", side=32, info=lambda size: info(),
    prepare=lambda root, *, size, **source: prepare(root=root, **source),
    load=lambda path, *, size: load(path)))

__all__ = ["URL", "MD5", "FILENAME", "MIRROR_ENV", "OFFLINE_REBUILD_SHA256", "LABELS", "info", "prepare", "load",
           "resolve_url"]
