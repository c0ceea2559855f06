"""Data registry: a dataset name from the study -> verified arrays in the MedMNIST layout.

One module per source: ``embedded`` (generated offline, the default), ``medmnist_source`` (every 2D
flag, official URLs and MD5s from ``medmnist.INFO``) and ``cifar10`` (official archive).
"""

from __future__ import annotations

from pathlib import Path

from reproduce.data.base import DatasetInfo, Splits  # noqa: F401  (re-exported)
from reproduce.study import MEDMNIST_FLAGS, DataConfig

DEFAULT_ROOT = Path("data")


def prepare_dataset(name: str, *, root: Path = DEFAULT_ROOT, options: DataConfig | None = None) -> Path:
    """Make the dataset's file present and verified in ``root/<name>/``; return its path.

    One directory per dataset, so each is one DVC output (``data.dvc``, or its ``fetch`` stage in
    ``pipelines/dvc.yaml``, shared by every study).
    ``options`` (the study's ``data`` section) gives the MedMNIST size, a mirror (with the sha256 of
    what it serves, when that is not the official file) and local files.
    """
    opts = options or DataConfig()
    local = opts.local_files.get(name)
    src = {"mirror": opts.mirror, "local_file": Path(local.path) if local else None,
           "sha256": local.sha256 if local else opts.mirror_sha256.get(name)}
    if name == "embedded":
        from reproduce.data import embedded
        return embedded.prepare(Path(root) / "embedded")
    if name in MEDMNIST_FLAGS:
        from reproduce.data import medmnist_source
        return medmnist_source.prepare(name, root=Path(root) / name, size=opts.size, **src)
    if name == "cifar10":
        from reproduce.data import cifar10
        return cifar10.prepare(root=Path(root) / "cifar10", **src)
    raise ValueError(f"unknown dataset {name!r}")


def load_dataset(name: str, *, root: Path = DEFAULT_ROOT, options: DataConfig | None = None) -> Splits:
    """Prepare (if needed), verify and load ``name``."""
    path = prepare_dataset(name, root=root, options=options)
    if name == "embedded":
        from reproduce.data import embedded
        return embedded.load(path)
    if name in MEDMNIST_FLAGS:
        from reproduce.data import medmnist_source
        return medmnist_source.load(path, flag=name, size=(options or DataConfig()).size)
    from reproduce.data import cifar10
    return cifar10.load(path)
