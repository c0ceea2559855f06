"""Guided backpropagation (Springenberg et al. 2015) extended from ReLU to the suite's non-linearities.

The rule, one sentence for every non-linearity: on the backward pass, the gradient with respect to
the non-linearity's input is clamped to be non-negative, wherever the non-linearity acts pointwise
on channels the group permutes. For ReLU that is ``relu(grad_out * 1[x > 0])``, exactly captum's
``GuidedBackprop`` (which overrides ``nn.ReLU`` modules only). Per non-linearity:

* ``nn.ReLU``, ``nn.Mish``, ``nn.ELU`` (conventional, C_N and D_N models, where Mish acts on regular
  fields whose channels rotations permute): ``relu(grad_out * f'(x))``. For Mish this passes a
  negative upstream gradient on units with x < -1.19, where Mish decreases; Mish's slope there is
  at most 0.11 in magnitude, so these units contribute little. We keep the literal rule rather than
  adding ReLU's ``1[x > 0]`` gate, so that the definition is one clamp for every activation.
* ``EscnnOp`` around escnn's ``FourierELU`` (SO(2)): the clamp is applied inside, at the ELU's
  input on the 16 sampled rotations, not on the Fourier coefficients. Rotations by the sampled
  angles permute the samples, so the rule stays rotation-consistent; the coefficients of
  frequency k > 0 rotate as 2-vectors, and clamping their sign would depend on the frame.
* ``InducedGate`` (O(2)): only the gradient at the gate scalars (one per coset, permuted by the
  group) is clamped; the gated sub-fields are vectors of an SO(2) irrep, whose gradient passes
  unclamped, for the same reason.

tests/attribution/test_rotation.py shows why: with these rules every map of the C_N,
D_N, O(2) and SO(2) models rotates exactly with the image; clamping every component of the gate's
or FourierELU's input instead breaks that (relative gap of order 1).

The rule is installed as an identity in the forward pass whose backward clamps (no captum patching,
no state left behind: every hook is removed on exit). Other modules (pooling, norms, convolutions)
back-propagate their true gradient, as in captum.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from escnn import nn as enn
from torch import nn

from reproduce.models.equivariant_ops import EscnnOp, InducedGate

#: module type -> function that installs the guided rule on one module and returns its undo
GUIDED_RULES: dict[type, Callable[[nn.Module], Callable[[], None]]] = {}


def register_guided_rule(*types: type):
    """Decorator: ``rule(module) -> undo`` becomes the guided rule of modules of ``types``."""

    def decorate(rule):
        for t in types:
            GUIDED_RULES[t] = rule
        return rule

    return decorate


class _ClampGrad(torch.autograd.Function):
    """Identity forward; backward passes ``relu(grad)``."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def clamp_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, but the gradient flowing back into it is clamped to be non-negative."""
    return _ClampGrad.apply(x)


@register_guided_rule(nn.ReLU, nn.Mish, nn.ELU)
def _pointwise_rule(module: nn.Module) -> Callable[[], None]:
    handle = module.register_forward_pre_hook(lambda m, args: (clamp_gradient(args[0]), *args[1:]))
    return handle.remove


@register_guided_rule(InducedGate)
def _gate_rule(module: InducedGate) -> Callable[[], None]:
    n_gates = module.fields * module.cosets

    def clamp_gates(m, args):
        x = args[0]
        return (torch.cat([clamp_gradient(x[:, :n_gates]), x[:, n_gates:]], dim=1), *args[1:])

    return module.register_forward_pre_hook(clamp_gates).remove


@register_guided_rule(EscnnOp)
def _fourier_rule(module: EscnnOp) -> Callable[[], None]:
    inner = module.module
    if not isinstance(inner, enn.FourierPointwise):
        raise ValueError(
            f"no guided rule for escnn's {type(inner).__name__}; register one with "
            "reproduce.attribution.guided.register_guided_rule"
        )
    function = inner._function  # the pointwise non-linearity on the sampled group elements
    inner._function = lambda x: function(clamp_gradient(x))

    def undo():
        inner._function = function

    return undo


@contextlib.contextmanager
def guided_rules(model: nn.Module) -> Iterator[int]:
    """Install the guided rule on every non-linearity of ``model`` for the duration of the block.

    Yields:
        How many modules got the rule.

    Raises:
        ValueError: if no module of ``model`` has a registered rule (the result would silently be
            the plain gradient).
    """
    undos = []
    try:
        for m in model.modules():
            # the nearest registered class in the MRO, so subclasses inherit their parent's rule
            rule = next((GUIDED_RULES[t] for t in type(m).__mro__ if t in GUIDED_RULES), None)
            if rule is not None:
                undos.append(rule(m))
        if not undos:
            raise ValueError(
                f"{type(model).__name__} has no non-linearity with a guided rule "
                f"(known: {sorted(t.__name__ for t in GUIDED_RULES)})"
            )
        yield len(undos)
    finally:
        for undo in reversed(undos):
            undo()


def guided_backprop(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Guided-backprop gradient of each image's target logit with respect to the image.

    Args:
        model: image classifier returning logits.
        images: [N, C, H, W] model input.
        targets: [N] class index per image.

    Returns:
        [N, C, H, W], detached; parameters' ``.grad`` are left untouched.
    """
    x = images.detach().clone().requires_grad_(True)
    with guided_rules(model):
        logits = model(x)
        selected = logits.gather(1, targets.reshape(-1, 1).to(logits.device)).sum()
        (grad,) = torch.autograd.grad(selected, x)
    return grad.detach()


def guided_grad_cam(guided: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Guided Grad-CAM: guided backprop [N, C, H, W] times the upsampled Grad-CAM [N, H, W]."""
    return guided * cam[:, None]
