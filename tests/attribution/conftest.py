"""Shared tiny models and inputs for the attribution tests."""

from __future__ import annotations

import functools
import warnings

import torch

warnings.filterwarnings("ignore", message=".*py3nj.*")

NUM_CLASSES = 8


@functools.cache
def suite_model(group: str):
    """The suite's ResNet-9 of ``group`` at widths (2, 2, 2), seeded, in eval mode."""
    from reproduce.models import build_model

    return build_model(group=group, widths=(2, 2, 2), in_channels=3, num_classes=NUM_CLASSES, seed=0).eval()


def images(n: int = 2, size: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
