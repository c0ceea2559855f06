"""Refuse models whose per-sample gradients opacus would get wrong or only approximately.

opacus 1.6 in hooks mode silently computes per-sample gradients with functorch for any trainable
layer without a registered rule, and batch norm mixes the samples of a batch, so a per-sample
gradient (and with it the privacy guarantee) does not exist. The suite checks every model before it
is made private and names each offending layer.
"""

from __future__ import annotations

from opacus import GradSampleModule
from torch import nn

import reproduce.privacy.grad_samplers  # noqa: F401  (registers the suite's rules with opacus)
from reproduce.errors import ReproduceError

GROUP_NORM_HINT = "use the suite's equivariant GroupNorm (parameter-free, normalises each sample on its own)"


def _is_batch_norm(module: nn.Module) -> bool:
    cls = type(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return cls.__module__.startswith("escnn") and (
        "BatchNorm" in cls.__name__ or "batchnormalization" in cls.__module__
    )


def _has_trainable_parameters(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def exactness_problems(model: nn.Module) -> list[str]:
    """One line per layer that prevents exact per-sample gradients; empty if there is none."""
    problems, refused = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in refused):
            continue  # inside a layer already refused (e.g. the torch BatchNorm3d inside InnerBatchNorm)
        cls = type(module)
        where = f"layer '{name or '<model>'}' ({cls.__module__}.{cls.__qualname__})"
        if _is_batch_norm(module) or cls.__module__.startswith("escnn") and _has_trainable_parameters(module):
            refused.append(f"{name}." if name else "")
        if _is_batch_norm(module):
            problems.append(
                f"{where}: batch norm mixes the samples of a batch, so per-sample gradients "
                f"and DP-SGD's guarantee do not exist; {GROUP_NORM_HINT}"
            )
        elif not _has_trainable_parameters(module):
            continue
        elif cls.__module__.startswith("escnn"):
            hint = (
                "use reproduce.models.escnn_conv.EquivariantConv2d, which owns the basis coefficients "
                "and has an exact rule"
                if "Conv" in cls.__name__
                else "freeze it or replace it with a layer that has a rule in reproduce/privacy/grad_samplers/"
            )
            problems.append(
                f"{where}: escnn layer with trainable parameters; opacus cannot compute its "
                f"per-sample gradients (its sampled basis lives in buffers); {hint}"
            )
        elif isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            # opacus's rule (and the suite's) zero-pads: wrong for reflect/replicate/circular padding
            problems.append(
                f"{where}: padding_mode={module.padding_mode!r} has no exact per-sample gradient "
                f"rule (the rules zero-pad); use padding_mode='zeros' or pad explicitly with F.pad"
            )
        elif cls not in GradSampleModule.GRAD_SAMPLERS:
            problems.append(
                f"{where}: trainable parameters but no registered per-sample gradient rule "
                f"(opacus would silently fall back to functorch); register one with "
                f"@register_grad_sampler in reproduce/privacy/grad_samplers/ or freeze the layer"
            )
    return problems


def check_exact_per_sample_gradients(model: nn.Module) -> None:
    """Raise ``ReproduceError`` naming every layer whose per-sample gradients would not be exact.

    Refused: batch norm of torch or escnn (any mode, trainable or not), escnn layers with trainable
    parameters (e.g. a raw ``R2Conv``), ``nn.Conv2d`` with a padding mode other than zeros, and
    trainable layers whose type has no rule registered with opacus (``opacus.GradSampleModule.GRAD_SAMPLERS``; the suite's rules are registered on import).

    Args:
        model: the model about to be trained with DP-SGD.

    Raises:
        ReproduceError: listing each offending layer by module path and type.
    """
    problems = exactness_problems(model)
    if problems:
        raise ReproduceError(
            "cannot compute exact per-sample gradients for this model:\n  - " + "\n  - ".join(problems)
        )
