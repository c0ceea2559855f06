"""The dataset table drives the study's names, the augmentation kind, shapes and `reproduce params`."""

from __future__ import annotations

import dataclasses

import pytest

from reproduce.cli import main
from reproduce.data import DATASETS, dataset_source
from reproduce.data.augment import KINDS, augmentation_kind
from reproduce.errors import ReproduceError
from reproduce.models import build_model, count_parameters, parameter_counts
from reproduce.data.stand_in import dataset_shape
from reproduce.study import DATASETS as STUDY_DATASETS
from reproduce.study import load_study
from tests.conftest import REPO, tiny_study


def test_the_study_schema_allows_exactly_the_tables_names():
    assert STUDY_DATASETS == tuple(DATASETS) and STUDY_DATASETS[:2] == ("embedded", "cifar10")
    assert all(source.augmentation in KINDS for source in DATASETS.values())
    with pytest.raises(ReproduceError, match="unknown dataset 'imagenet'; known: embedded, cifar10, pathmnist"):
        dataset_source("imagenet")


def test_fetch_of_an_unknown_dataset_is_one_error_line_naming_the_known_ones(capsys, tmp_path):
    assert main(["fetch", "notadataset", "--root", str(tmp_path)]) in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'notadataset'") and err.count("\n") == 1
    assert all(name in err for name in DATASETS) and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_augmentation_kind_and_shape_come_from_the_table(monkeypatch):
    assert augmentation_kind("cifar10") == "cifar" and augmentation_kind("dermamnist") == "medmnist"
    swapped = dataclasses.replace(DATASETS["dermamnist"], augmentation="cifar", side=40)
    monkeypatch.setitem(DATASETS, "dermamnist", swapped)
    assert augmentation_kind("dermamnist") == "cifar"
    assert dataset_shape("dermamnist", size=28)[1] == 40


@pytest.mark.parametrize("name, channels, classes, side, sized", [
    ("embedded", 3, 8, 28, False), ("cifar10", 3, 10, 32, False),
    ("dermamnist", 3, 7, 64, True), ("pathmnist", 3, 9, 64, True), ("pneumoniamnist", 1, 2, 64, True)])
def test_info_without_the_data(name, channels, classes, side, sized):
    info, image_side = dataset_shape(name, size=64)
    assert (info.n_channels, info.num_classes, image_side) == (channels, classes, side)
    assert dataset_source(name).sized is sized
    assert dataset_source(name).downloaded is (name != "embedded")   # a fetch stage each, but the generated set


def test_params_builds_cifar10_models_with_3_channels_and_10_classes(capsys):
    assert main(["params", str(REPO / "studies" / "sparser_models_cifar10.yaml")]) == 0
    out = capsys.readouterr().out
    study = load_study(REPO / "studies" / "sparser_models_cifar10.yaml")
    widths = study.model.widths_for("e")
    expected = count_parameters(build_model(group="e", widths=widths, in_channels=3, num_classes=10))
    assert f"cifar10        e      {'-'.join(map(str, widths)):>12} {expected:>12,}" in out
    assert expected != count_parameters(build_model(group="e", widths=widths, in_channels=3, num_classes=8))


def test_parameter_counts_per_dataset_and_group():
    study = tiny_study(name="counts", model={"widths": [2, 2, 4]}, dataset=["pneumoniamnist", "pathmnist"], epsilon=8,
                       multiplicity=[1, 2], seed=[0, 1])
    counts = parameter_counts(study)
    assert [(c.dataset, c.group) for c in counts] == [("pneumoniamnist", "e"), ("pathmnist", "e")]
    for c, (channels, classes) in zip(counts, [(1, 2), (3, 9)]):
        assert c.parameters == count_parameters(build_model(group="e", widths=(2, 2, 4), in_channels=channels,
                                                            num_classes=classes))


def test_an_npz_with_more_images_than_labels_is_one_error_naming_the_dataset_and_the_remedy():
    import numpy as np
    from reproduce.data.base import from_npz_arrays
    from reproduce.data.registry import dataset_source
    info = dataset_source("embedded").info(None)
    arrays = {f"{s}_images": np.zeros((3, 28, 28, 3), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((3, 1), np.uint8) for s in ("train", "val", "test")}
    arrays["val_labels"] = np.zeros((2, 1), np.uint8)
    with pytest.raises(ReproduceError, match=r"val has 3 images but 2 labels.*reproduce fetch embedded"):
        from_npz_arrays(arrays, info)
