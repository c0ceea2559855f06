"""Every per-sample rule in opacus's registry sees NCHW-contiguous tensors.

A rule may compute with ``as_strided``/``view`` and NCHW strides (opacus 1.6's ``unfold2d`` does),
which silently reads the wrong elements of a channels-last or otherwise strided input. Training
produces such inputs (K-view crops, some oneDNN outputs), so the suite does not trust any rule's
layout handling: each registered rule is wrapped once to receive contiguous activations and output
gradients. ``Tensor.contiguous()`` returns the tensor itself when it already is, so the common case
costs nothing.
"""

from __future__ import annotations

import functools

from opacus import GradSampleModule


def layout_safe(rule):
    """``rule`` with its activations and output gradient made NCHW-contiguous first."""
    if getattr(rule, "layout_safe", False):
        return rule

    @functools.wraps(rule)
    def contiguous_rule(layer, activations, backprops):
        return rule(layer, [a.contiguous() for a in activations], backprops.contiguous())

    contiguous_rule.layout_safe = True
    return contiguous_rule


def make_registry_layout_safe() -> None:
    """Wrap every rule registered with opacus so far (idempotent; also covers rules added later when
    called again, as ``make_private`` and the output-gradient engine do)."""
    registry = GradSampleModule.GRAD_SAMPLERS
    for layer_type, rule in list(registry.items()):
        registry[layer_type] = layout_safe(rule)


def rule_for(layer_type: type):
    """The layout-safe registered rule for ``layer_type`` (KeyError if none is registered)."""
    registry = GradSampleModule.GRAD_SAMPLERS
    registry[layer_type] = layout_safe(registry[layer_type])
    return registry[layer_type]
