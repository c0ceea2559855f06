"""The optimizers a study can name, private or not: SGD with momentum, Adam, and DP-AdamBC.

DP-AdamBC (Tang et al. 2024; ``reproduce.privacy.dp_adambc``) is Adam whose second moment has the
known variance of the DP noise, ``Phi = (sigma C / B)^2`` (``dp_noise_variance``), taken out.

Registry: ``OPTIMIZERS`` maps a name to a builder ``(params, **hyperparameters)``;
``make_optimizer(name, params, **hyperparameters)``. The builders take every hyperparameter as a
required keyword: the defaults belong to the study schema, which reads the names and each builder's
keywords from this registry (``reproduce.study.choices``). So that it can without torch, this module
imports torch only inside the builders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from reproduce.errors import ReproduceError

if TYPE_CHECKING:
    import torch

F = TypeVar("F", bound=Callable[..., Any])

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {}


def register_optimizer(name: str) -> Callable[[F], F]:
    """Register an optimizer builder under ``name`` in :data:`OPTIMIZERS` (once per name)."""

    def decorator(fn: F) -> F:
        if name in OPTIMIZERS and OPTIMIZERS[name] is not fn:
            raise ValueError(f"optimizer {name!r} is already registered")
        OPTIMIZERS[name] = fn
        return fn

    return decorator


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], **hyperparameters: Any) -> torch.optim.Optimizer:
    """The registered optimizer ``name`` over ``params``.

    Raises:
        ReproduceError: for an unknown name, or hyperparameters the optimizer does not take or lacks.
    """
    if name not in OPTIMIZERS:
        raise ReproduceError(f"unknown optimizer {name!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    try:
        return OPTIMIZERS[name](params, **hyperparameters)
    except TypeError as e:
        raise ReproduceError(f"optimizer {name!r}: {e}") from None


def dp_noise_variance(*, noise_multiplier: float, max_grad_norm: float, expected_batch_size: float) -> float:
    """Phi = (sigma C / B)^2, the variance of each coordinate of the noise in the averaged private gradient."""
    return (noise_multiplier * max_grad_norm / expected_batch_size) ** 2


@register_optimizer("sgd")
def sgd(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (heavy-ball momentum: buf = mu buf + g, theta -= lr buf)."""
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@register_optimizer("adam")
def adam(params, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam``; on a private gradient this is DP-Adam (opacus's only adaptive optimizer)."""
    import torch

    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@register_optimizer("dp_adambc")
def dp_adambc(
    params, *, lr: float, betas: tuple[float, float], gamma_prime: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``DPAdamBC``; its noise variance starts at 0 and is set by the DP optimizer."""
    from reproduce.privacy.dp_adambc import DPAdamBC

    return DPAdamBC(params, lr=lr, betas=betas, gamma_prime=gamma_prime, weight_decay=weight_decay)


def __getattr__(name: str) -> Any:
    # ``from reproduce.privacy.optimizers import DPAdamBC`` keeps working; the class needs torch, so it
    # lives in its own module and loads on first use (PEP 562).
    if name == "DPAdamBC":
        from reproduce.privacy.dp_adambc import DPAdamBC

        return DPAdamBC
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
