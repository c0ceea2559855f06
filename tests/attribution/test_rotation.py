"""Exact 90-degree rotation consistency: attribution of the rotated image = rotated attribution.

C_N (N divisible by 4), D_N, O(2) and SO(2) models of the suite are exactly invariant to
90-degree rotations of a square image; their final feature map rotates with the input, so
Grad-CAM, guided backprop (with the rules of ``reproduce.attribution.guided``) and the response
map rotate too, up to float32 rounding of escnn's sampled bases. The conventional model does not.
"""

from __future__ import annotations

import pytest
import torch

from reproduce.attribution import guided as guided_module
from reproduce.attribution.gradcam import grad_cam
from reproduce.attribution.guided import guided_backprop, guided_grad_cam
from reproduce.attribution.response import response_map
from reproduce.models.equivariant_ops import EscnnOp, InducedGate
from tests.attribution.conftest import NUM_CLASSES, images, suite_model

TOL = 1e-4  # relative to the map's largest magnitude; measured gaps are about 1e-6

rot90 = lambda x: torch.rot90(x, 1, dims=(-2, -1))  # noqa: E731
hflip = lambda x: torch.flip(x, dims=(-1,))  # noqa: E731


SIZE = 20  # 20 -> 10 -> 5 -> 2 (3-wide windows on 5): odd-size pooling, at a fraction of 28's cost


def _inputs():
    # every class of one image: Grad-CAM (after its ReLU) is zero for some targets, not for all
    return images(1, SIZE).repeat(NUM_CLASSES, 1, 1, 1), torch.arange(NUM_CLASSES)


def _maps(model, x, targets):
    cam = grad_cam(model, x, targets)
    guided = guided_backprop(model, x, targets)
    return {
        "gradcam": cam,
        "guided": guided,
        "guided_gradcam": guided_grad_cam(guided, cam),
        "response": response_map(model, x),
    }


def _gaps(model, transforms) -> list[dict[str, float]]:
    """Per transform T and map, max |map(T x) - T map(x)| relative to max |map(x)|.

    The image and its transforms go through the model as one batch: each forward pass of these
    models costs mostly its filter expansion, whatever the batch.
    """
    x, targets = _inputs()
    n = len(x)
    maps = _maps(model, torch.cat([x] + [t(x) for t in transforms]), targets.repeat(len(transforms) + 1))
    gaps = []
    for i, t in enumerate(transforms, start=1):
        gap = {}
        for name, m in maps.items():
            plain, moved = m[:n], m[i * n : (i + 1) * n]
            assert plain.abs().max() > 0, f"{name} is all zero: the check would be vacuous"
            gap[name] = ((moved - t(plain)).abs().max() / plain.abs().max()).item()
        gaps.append(gap)
    return gaps


@pytest.mark.parametrize(
    "group,transforms", [("C4", [rot90]), ("C8", [rot90]), ("D4", [rot90, hflip]), ("O2", [rot90]), ("SO2", [rot90])]
)
def test_equivariant_attributions_rotate_with_the_image(group, transforms):
    for gaps in _gaps(suite_model(group), transforms):
        assert max(gaps.values()) < TOL, gaps


def test_conventional_model_fails_rotation_consistency():
    (gaps,) = _gaps(suite_model("e"), [rot90])
    assert min(gaps.values()) > 0.1, gaps


@pytest.mark.parametrize("group,module_type", [("O2", InducedGate), ("SO2", EscnnOp)])
def test_clamping_rotating_vector_components_breaks_consistency(monkeypatch, group, module_type):
    """Ground truth for the choice of rule: clamping the sign of every input component of the
    gate / FourierELU (frame-dependent for vector fields) loses the exact consistency."""
    monkeypatch.setitem(guided_module.GUIDED_RULES, module_type, guided_module._pointwise_rule)
    x, targets = _inputs()
    both = guided_backprop(suite_model(group), torch.cat([x, rot90(x)]), targets.repeat(2))
    plain, moved = both[: len(x)], both[len(x) :]
    assert (moved - rot90(plain)).abs().max() > 0.1 * plain.abs().max()
