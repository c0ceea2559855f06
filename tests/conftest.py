"""Shared fixtures: throwaway studies written from strings (as benchopt's tests do).

Every test that needs a study starts from the tiny one (``TINY_STUDY``) and says only what it changes:
``tiny_study(training={"steps": 5, "epochs": None}, epsilon=8)`` is the parsed study,
``study_text(...)`` its YAML and the ``temp_study(...)`` fixture its file under ``studies/``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from reproduce.study import GRID_AXES, Study, parse_study

REPO = Path(__file__).resolve().parent.parent

# One conventional model on the embedded set, a non-private and a DP cell, one epoch: 4 steps of 64 of 256 images.
# The located-error tests (tests/study) edit this very text, so its lines stay as they are.
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


class _Dumper(yaml.SafeDumper):
    """safe_dump that writes a tuple as the list it stands for (``widths=(2, 2, 4)``)."""


_Dumper.add_representer(tuple, lambda dumper, value: dumper.represent_list(value))


def _merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in: mappings key by key, any other value replaced, None removed."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def study_text(*, name: str = "tiny", **overrides) -> str:
    """The tiny study (``TINY_STUDY``) as study ``name``, with ``overrides`` merged in, as YAML text.

    Args:
        name: The study's name; its file must be ``studies/<name>.yaml``.
        **overrides: A section (``model``, ``privacy``, ``training``, ``data``, ``audit``, ``checks``,
            ``grid``, ...) as a mapping merged into the tiny study's, where None removes a key (the schema's
            default applies): ``training={"steps": 5, "epochs": None}``. Or a grid axis of ``GRID_AXES``
            as its values, one value standing for a list of one: ``dataset="bloodmnist", seed=[0, 1]``.
            Dotted axes go in ``grid``: ``grid={"privacy.max_grad_norm": [0.5, 2]}``.
    """
    axes = {k: list(v) if isinstance(v, (list, tuple, range)) else [v] for k, v in overrides.items() if k in GRID_AXES}
    sections = {k: v for k, v in overrides.items() if k not in GRID_AXES}
    data = _merged(_merged(yaml.safe_load(TINY_STUDY.format(name=name)), sections), {"grid": axes})
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120)


def tiny_study(*, name: str = "tiny", **overrides) -> Study:
    """The parsed, validated ``study_text(name=name, **overrides)``."""
    return parse_study(study_text(name=name, **overrides))


@pytest.fixture
def temp_study(tmp_path):
    """A factory writing a study to ``tmp_path/studies/<name>.yaml`` and returning the path.

    ``temp_study()`` writes the tiny study, ``temp_study(seed=[0, 1])`` it with overrides (see
    ``study_text``), ``temp_study(text)`` the given YAML text (for tests of the text itself).
    """

    def make(text: str | None = None, *, name: str = "tiny", **overrides) -> Path:
        if text is not None and overrides:
            raise TypeError("temp_study takes a study text or overrides of the tiny study, not both")
        path = tmp_path / "studies" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if text is not None else study_text(name=name, **overrides))
        return path

    return make
