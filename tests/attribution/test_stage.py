"""``attribute`` and ``score``: the arrays and scores the DVC stage will store, on suite models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reproduce.attribution import attribute, score
from reproduce.attribution.gradcam import grad_cam
from tests.attribution.conftest import images, suite_model


@pytest.fixture(scope="module")
def c4_attributions():
    model = suite_model("C4")
    att = attribute(model, images(4, 20), np.array([[0], [3], [5], [7]]))
    # the stage may attribute a model it goes on using: no gradients or hooks left behind
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    return att


def test_arrays(c4_attributions):
    att = c4_attributions
    arrays = att.arrays()
    assert {k: v.shape for k, v in arrays.items()} == {
        "targets": (4,),
        "predictions": (4,),
        "gradcam": (4, 20, 20),
        "guided": (4, 3, 20, 20),
        "guided_gradcam": (4, 3, 20, 20),
        "response": (4, 20, 20),
    }
    np.testing.assert_array_equal(att.targets, [0, 3, 5, 7])
    np.testing.assert_allclose(att.guided_gradcam, att.guided * att.gradcam[:, None], rtol=1e-6)
    expected_cam = grad_cam(suite_model("C4"), images(4, 20), torch.tensor([0, 3, 5, 7]))
    np.testing.assert_allclose(att.gradcam, expected_cam.numpy(), rtol=1e-6, atol=1e-9)
    assert set(att.pixel_maps()) == {"gradcam", "guided", "guided_gradcam"}


def test_scores_with_masks(c4_attributions):
    masks = np.zeros((4, 20, 20))
    masks[:, 5:15, 5:15] = 1.0
    per_image, means = score(c4_attributions, masks=masks)
    assert all(v.shape == (4,) for v in per_image.values())
    assert means["object_area"] == pytest.approx(0.25)
    for name in ("gradcam", "guided", "guided_gradcam", "response"):
        assert 0 <= means[f"object_share/{name}"] <= 1
    assert all(isinstance(v, float) for v in means.values())


def test_prediction_target_and_refusal():
    model, x = suite_model("e"), images(2, 20)
    att = attribute(model, x, np.array([0, 1]), target="prediction")
    np.testing.assert_array_equal(att.targets, model(x).argmax(dim=1).numpy())
    with pytest.raises(ValueError, match="target"):
        attribute(model, x, np.array([0, 1]), target="truth")


def test_untrained_cells_are_named_on_stderr_and_strict_refuses_them(temp_study, tmp_path, capsys):
    import json

    from reproduce.cli import main

    study = temp_study(seed=range(6))  # 12 cells
    args = ["attribute", str(study), "--data-root", str(tmp_path / "data")]
    # the DVC stage relies on exit 0: the untrained cells are skipped, as before, but no longer silently
    assert main([*args, "--results", str(tmp_path / "lenient")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: 12 of 12 cells of study tiny have no result"), err
    assert "embedded-e-non-private-1-0" in err and "and 7 more" in err and "embedded-e-8-1-5" not in err, err
    assert "reproduce train studies/tiny.yaml --cell" in err and "dvc pull" in err, err
    assert json.loads((tmp_path / "lenient" / "attribution" / "scores.json").read_text())["cells"] == {}
    assert main([*args, "--results", str(tmp_path / "strict"), "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 12 of 12 cells of study tiny have no result") and "Traceback" not in err, err
    assert not (tmp_path / "strict").exists()  # nothing written
