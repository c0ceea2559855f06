"""The architecture registry: a new architecture is one module plus one decorator.

A toy architecture registered from a module written by the test is accepted by the study schema, built
by ``build_cell_model``, counted by ``parameter_counts`` and trained as a DP cell end to end; the DP
engine checks its layers, so one without exact per-sample gradients is refused by name.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from reproduce.attribution.layers import final_feature_layer
from reproduce.data.stand_in import stand_in
from reproduce.errors import ReproduceError, StudyError
from reproduce.models import build_cell_model, count_parameters, parameter_counts
from reproduce.models.registry import ARCHITECTURES, ModelSpec, build_architecture, register_architecture
from reproduce.study import parse_study
from reproduce.training.cell import run_cell

TOY_MODULE = """
from torch import nn

from reproduce.models.registry import register_architecture


class Toy(nn.Sequential):
    @property
    def attribution_layer(self):   # the last spatial map: what Grad-CAM and the response map read
        return self[4]


@register_architecture("{name}")
def build(spec):
    w1, _, w3 = spec.widths
    return Toy(nn.Conv2d(spec.in_channels, w1, 3, padding=1, bias=False), {norm}, nn.ReLU(),
               nn.Conv2d(w1, w3, 3, padding=1, stride=2), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, spec.num_classes))
"""
GROUP_NORM = "nn.GroupNorm(2, w1)"
BATCH_NORM = "nn.BatchNorm2d(w1)"

STUDY = """\
name: toy
model: {{architecture: {architecture}, widths: [4, 4, 8]}}
training:
  optimizer: {{name: sgd, lr: 0.2, momentum: 0.9}}
  batch_size: 32
  physical_batch_size: 32
  steps: 2
  max_train_samples: 96
grid: {{dataset: [bloodmnist], group: [e], epsilon: [8], seed: [0]}}
"""


@pytest.fixture
def register_toy(tmp_path, monkeypatch):
    """Write a toy architecture module under ``tmp_path`` and import it (which registers it); undone after."""
    registered = []

    def register(name: str, *, norm: str = GROUP_NORM) -> str:
        (tmp_path / f"{name}.py").write_text(TOY_MODULE.format(name=name, norm=norm))
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.import_module(name)
        registered.append(name)
        return name

    yield register
    for name in registered:
        ARCHITECTURES.pop(name, None)
        sys.modules.pop(name, None)


def test_a_registered_architecture_trains_a_dp_cell_end_to_end(register_toy):
    study = parse_study(STUDY.format(architecture=register_toy("toy_gn")))
    (cell,) = study.cells()
    assert cell.config()["model"]["architecture"] == "toy_gn"
    model = build_cell_model(cell, in_channels=3, num_classes=8)
    assert type(model).__name__ == "Toy"  # the toy's, not the ResNet-9
    assert final_feature_layer(model) is model[4]  # attribution reads the layer the architecture names
    (count,) = parameter_counts(study)  # what `reproduce params` prints
    assert count.parameters == count_parameters(model)

    result = run_cell(cell, data_root=None, progress=False, splits=stand_in(cell.dataset, size=28, seed=0))
    assert result.metrics["steps"] == 2
    assert result.metrics["parameters"] == count.parameters
    assert 0 < result.metrics["epsilon"] <= 8


def test_an_architecture_without_exact_per_sample_gradients_is_refused_by_the_dp_engine(register_toy):
    study = parse_study(STUDY.format(architecture=register_toy("toy_bn", norm=BATCH_NORM)))
    (cell,) = study.cells()
    with pytest.raises(ReproduceError, match=r"layer '1' \(torch.nn.modules.batchnorm.BatchNorm2d\): batch norm"):
        run_cell(cell, data_root=None, progress=False, splits=stand_in(cell.dataset, size=28, seed=0))


def test_a_study_naming_an_unregistered_architecture_is_refused_where_it_says_so():
    with pytest.raises(StudyError, match=r"<study>:2: model\.architecture: got 'vit'; allowed: 'resnet9'"):
        parse_study(STUDY.format(architecture="vit"))


def test_names_are_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("resnet9")(lambda spec: None)
    with pytest.raises(ReproduceError, match="unknown architecture 'vit'; registered: resnet9"):
        build_architecture("vit", ModelSpec(group="e", widths=(4, 4, 8), in_channels=3, num_classes=8))


def test_the_schema_reads_the_registries_without_torch():
    import subprocess

    code = "import sys, reproduce.study; print('torch' in sys.modules, 'opacus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
