"""Shared fixtures: throwaway studies written from strings (as benchopt's tests do)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TINY_STUDY = """\
name: {name}
model:
  widths: [4, 8, 8]
privacy:
  delta: 1.0e-5
  max_grad_norm: 1.0
  accountant: rdp
training:
  optimizer: {{name: sgd, lr: 0.1, momentum: 0.9}}
  batch_size: 64
  physical_batch_size: 32
  epochs: 1
  max_train_samples: 256
grid:
  dataset: [embedded]
  group: [e]
  epsilon: [non-private, 8]
  multiplicity: [1]
  seed: [0]
"""


@pytest.fixture
def temp_study(tmp_path):
    """Write a study YAML (default: a tiny valid one) under tmp_path/studies and return its path."""
    def make(text: str | None = None, *, name: str = "tiny") -> Path:
        path = tmp_path / "studies" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if text is not None else TINY_STUDY.format(name=name))
        return path
    return make
