"""What every data source hands to training: splits in the MedMNIST npz layout plus metadata."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from reproduce.errors import ReproduceError

Task = Literal["multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression"]
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset, in medmnist.INFO's vocabulary."""

    name: str
    task: Task
    n_channels: int
    labels: dict[str, str]          # str(index) -> class name, as medmnist.INFO["label"]
    source: str                     # where the bytes came from (URL, local file, "generated")
    sha256: str                     # checksum of the file the arrays were read from

    @property
    def num_classes(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Splits:
    """Images uint8 [N, H, W, C] (grey images get C=1) and labels int64 [N, L] per split."""

    info: DatasetInfo
    arrays: dict[str, np.ndarray]   # keys "<split>_images", "<split>_labels"

    def images(self, split: str) -> np.ndarray:
        return self.arrays[f"{split}_images"]

    def labels(self, split: str) -> np.ndarray:
        return self.arrays[f"{split}_labels"]


def from_npz_arrays(arrays: dict[str, np.ndarray], info: DatasetInfo) -> Splits:
    """Normalise an npz in MedMNIST layout: add the channel axis to grey images, labels to int64 [N, L]."""
    out = {}
    for split in SPLITS:
        images = np.asarray(arrays[f"{split}_images"])
        if images.ndim == 3:
            images = images[..., None]
        labels = np.asarray(arrays[f"{split}_labels"]).astype(np.int64)
        if labels.ndim == 1:
            labels = labels[:, None]
        if len(images) != len(labels):
            raise ReproduceError(f"{info.name}: {split} has {len(images)} images but {len(labels)} labels: the file is "
                                 f"damaged; delete data/{info.name} and run `reproduce fetch {info.name}` again")
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return Splits(info=info, arrays=out)
