"""The twelve 2D MedMNIST datasets at 28, 64, 128 and 224 px, described by ``medmnist.info.INFO``.

URLs, MD5 checksums, sample counts, label names, task and channel count all come from the installed
medmnist package (3.0.2); nothing is copied here. Size 28 uses the INFO keys ``url``/``MD5``, the
others ``url_<size>``/``MD5_<size>``.

Tasks keep INFO's vocabulary in ``DatasetInfo.task``: "multi-class", "binary-class",
"multi-label, binary-class" (chestmnist: 14 labels per image) and "ordinal-regression" (retinamnist,
grades 0-4). The suite trains and evaluates "ordinal-regression" as multi-class, as the MedMNIST
benchmark does (softmax over the grades, ACC/AUC as for multi-class).

Only ``medmnist/info.py`` is executed, not the package ``__init__`` (that one imports torch, pandas
and scikit-learn and prints a warning without torchvision). It still creates ``~/.medmnist`` on first
use, as medmnist always does; the suite itself never stores anything there.

Downloads go to ``root/<official file name>`` (``bloodmnist.npz``, ``bloodmnist_64.npz``, ...),
through ``REPRODUCE_MEDMNIST_MIRROR`` or ``mirror=`` when set (``<mirror>/<file name>``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from reproduce.data.base import SPLITS, DatasetInfo, Splits, from_npz_arrays
from reproduce.data.download import copy_verified, fetch, hash_file, local_file_hint, mirror_url, url_filename
from reproduce.data.registry import DatasetSource, register_dataset
from reproduce.errors import ReproduceError

MIRROR_ENV = "REPRODUCE_MEDMNIST_MIRROR"
SIZES = (28, 64, 128, 224)
# The names a study may use, known without reading INFO (studies validate offline): ``flags()``, in
# INFO's order, checked by the tests against the installed medmnist.
FLAGS = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
         "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
NPZ_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))


@functools.cache
def _info_table() -> dict:
    """``medmnist.info.INFO``, loaded from the installed package's info.py alone."""
    module = sys.modules.get("medmnist.info")
    if module is None:
        spec = importlib.util.find_spec("medmnist")  # locates the package without running __init__
        if spec is None or not spec.submodule_search_locations:
            raise ReproduceError("The medmnist package (3.0.2) is not installed; run `make install`.")
        path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
        info_spec = importlib.util.spec_from_file_location("_reproduce_medmnist_info", path)
        module = importlib.util.module_from_spec(info_spec)
        info_spec.loader.exec_module(module)
    return module.INFO


def flags() -> tuple[str, ...]:
    """The 2D flags of INFO in its order: those with files at every size in SIZES (3D flags stop at 64)."""
    table = _info_table()
    return tuple(flag for flag, entry in table.items()
                 if not flag.endswith("3d") and all(_keys(size)[0] in entry for size in SIZES))


def _keys(size: int) -> tuple[str, str]:
    return ("url", "MD5") if size == 28 else (f"url_{size}", f"MD5_{size}")


@dataclasses.dataclass(frozen=True)
class Remote:
    """The official file of one flag at one size."""

    flag: str
    size: int
    url: str
    md5: str
    filename: str
    n_samples: dict[str, int]


def remote(flag: str, size: int = 28) -> Remote:
    if flag not in flags():
        raise ReproduceError(f"Unknown MedMNIST 2D flag {flag!r}; known: {', '.join(flags())}.")
    if size not in SIZES:
        raise ReproduceError(f"MedMNIST size must be one of {SIZES}, not {size!r}.")
    entry = _info_table()[flag]
    url_key, md5_key = _keys(size)
    url = entry[url_key]
    return Remote(flag=flag, size=size, url=url, md5=entry[md5_key].lower(), filename=url_filename(url),
                  n_samples=dict(entry["n_samples"]))


def info(flag: str, size: int = 28) -> DatasetInfo:
    """Metadata from INFO; ``sha256`` is "" because INFO only has MD5 (``load`` fills it in)."""
    r = remote(flag, size)
    entry = _info_table()[flag]
    return DatasetInfo(name=flag, task=entry["task"], n_channels=int(entry["n_channels"]),
                       labels=dict(entry["label"]), source=r.url, sha256="")


def resolve_url(flag: str, size: int = 28, mirror: str | None = None) -> str:
    """The URL ``prepare`` downloads from: ``mirror``, else ``$REPRODUCE_MEDMNIST_MIRROR``, else official."""
    return mirror_url(remote(flag, size).url, mirror or os.environ.get(MIRROR_ENV) or None)


def _hint(filename: str) -> str:
    return (f"Check that the mirror serves {filename}, set {MIRROR_ENV} to a mirror base URL (the file is "
            f"fetched as <mirror>/{filename}), or download the file yourself and pass "
            f"local_file=<path> with sha256=<its sha256>.")


def prepare(flag: str, *, root: Path, size: int = 28, mirror: str | None = None,
            local_file: Path | str | None = None, sha256: str | None = None) -> Path:
    """Put the npz of ``flag`` at ``size`` into ``root`` (verified) and return its path.

    * default: download from the official URL (or the mirror) and verify INFO's MD5;
    * ``local_file``: copy that file in, verified against ``sha256`` if given, else against INFO's MD5
      (so an official file needs no stated checksum, and any other npz in the same layout -- a subset,
      a test fixture -- works with its sha256);
    * ``sha256`` without ``local_file``: verify the download against it instead of INFO's MD5 (a
      mirror serving other bytes than the official ones).
    An already present, matching file is used without network access.
    """
    r = remote(flag, size)
    if local_file is not None and mirror:
        raise ReproduceError("Give either mirror= or local_file=, not both.")
    dest = Path(root) / r.filename
    what = f"MedMNIST {flag} ({size} px)"
    checks = {"sha256": sha256} if sha256 else {"md5": r.md5}
    if local_file is not None:
        return copy_verified(local_file, dest, what=what, hint=local_file_hint(flag), **checks)
    return fetch(resolve_url(flag, size, mirror), dest, what=what, hint=_hint(r.filename), **checks)


def load(path: Path | str, *, flag: str, size: int = 28) -> Splits:
    """Read an npz in MedMNIST layout and check it against INFO.

    Shapes, dtype, channels and label ranges are always checked. The per-split sample counts are
    checked against INFO only when the file is the official one (its MD5 matches INFO): a local
    subset or a test fixture may have other counts.
    """
    r, meta = remote(flag, size), info(flag, size)
    path = Path(path)
    if not path.is_file():
        raise ReproduceError(f"MedMNIST file {path} does not exist; run prepare() first.")
    digests = hash_file(path, ("md5", "sha256"))
    official = digests["md5"] == r.md5
    arrays = _read_npz(path, flag)
    n_labels = meta.num_classes if meta.task == "multi-label, binary-class" else 1
    n_values = 2 if meta.task.startswith("multi-label") else meta.num_classes
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        channels = 1 if images.ndim == 3 else (images.shape[-1] if images.ndim == 4 else None)
        if images.dtype != np.uint8 or images.shape[1:3] != (size, size) or channels != meta.n_channels:
            raise ReproduceError(
                f"{path}: {split}_images are {images.dtype} {list(images.shape)}, expected uint8 "
                f"[N, {size}, {size}{'' if meta.n_channels == 1 else f', {meta.n_channels}'}] for {flag}.")
        if (labels.dtype.kind not in "biu" or labels.ndim not in (1, 2)
                or (labels.shape[1] if labels.ndim == 2 else 1) != n_labels):
            raise ReproduceError(f"{path}: {split}_labels are {labels.dtype} {list(labels.shape)}, "
                                 f"expected integers [N, {n_labels}] for {flag}.")
        if len(labels) != len(images):
            raise ReproduceError(f"{path}: {split} has {len(images)} images but {len(labels)} labels.")
        if labels.size and (labels.min() < 0 or labels.max() >= n_values):
            raise ReproduceError(f"{path}: {split}_labels outside 0..{n_values - 1} for {flag}.")
        if official and len(images) != r.n_samples[split]:
            raise ReproduceError(f"{path}: {split} has {len(images)} samples, the official {flag} has "
                                 f"{r.n_samples[split]}.")
    meta = dataclasses.replace(meta, source=r.url if official else str(path), sha256=digests["sha256"])
    return from_npz_arrays(arrays, meta)


def _read_npz(path: Path, flag: str) -> dict[str, np.ndarray]:
    """The arrays of NPZ_KEYS; ReproduceError for a file that is not an npz in MedMNIST layout."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise ReproduceError(f"{path} is not in MedMNIST layout: missing {', '.join(missing)}.")
            return {key: npz[key] for key in NPZ_KEYS}
    except ReproduceError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged npz fails in zipfile, zlib, numpy's header parser...
        raise ReproduceError(
            f"{path} is not a readable npz file ({type(e).__name__}: {e}). Replace it with an intact copy: delete "
            f"it and run `reproduce fetch {flag}` again, or fix the local file or mirror copy the study names "
            "(data.local_files / data.mirror_sha256).") from None


def _source(flag: str) -> DatasetSource:
    """The table entry of ``flag``: the study's data.size picks the file and the image side."""
    return DatasetSource(
        name=flag, augmentation="medmnist", side=None, info=lambda size: info(flag, size),
        prepare=lambda root, *, size, **source: prepare(flag, root=root, size=size, **source),
        load=lambda path, *, size: load(path, flag=flag, size=size))


for _flag in FLAGS:
    register_dataset(_source(_flag))
