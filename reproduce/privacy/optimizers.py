"""The optimizers a study can name, private or not: SGD with momentum, Adam, and DP-AdamBC.

DP-AdamBC (Tang, Shpilevskiy, Lecuyer, "DP-AdamBC: Your DP-Adam Is Actually DP-SGD (Unless You
Apply Bias Correction)", AAAI 2024, Algorithm 1): Adam on the private gradient, whose second
moment is corrected for the known variance of the DP noise in each coordinate::

    m_t = beta1 m_{t-1} + (1 - beta1) g_t          v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    m^_t = m_t / (1 - beta1^t)                      v^_t = v_t / (1 - beta2^t)
    theta_t = theta_{t-1} - lr * m^_t / sqrt(max(v^_t - Phi, gamma'))

with ``Phi = (sigma C / B)^2``: the private gradient is the clipped sum plus N(0, (sigma C)^2 I),
divided by the expected batch size B. The floor gamma' applies to the corrected second moment,
under the square root, and there is no eps added to the root: as in the authors' code
(github.com/ubc-systopia/DP-AdamBC, ``scale_by_adam_corr`` and ``adam_corr``, whose ``eps`` is unused
there). The correction reads only sigma, C and B, so it is post-processing and costs no privacy.

``DPAdamBC`` keeps Phi in its param groups (``noise_variance``, saved in its ``state_dict``):
0 when training without privacy (then it is Adam with the floor in place of eps), and set by the DP
optimizer before every step through ``set_noise_variance`` (``ClippingDPOptimizer`` calls it with the
noise it has just added: sigma_grad times the C of that step, over B, so it follows adaptive C).

Registry: ``OPTIMIZERS`` maps a name to a builder ``(params, **hyperparameters)``;
``make_optimizer(name, params, **hyperparameters)``. The builders take every hyperparameter as a
required keyword: the defaults belong to the study schema.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

import torch

from reproduce.errors import ReproduceError

F = TypeVar("F", bound=Callable[..., torch.optim.Optimizer])

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


class DPAdamBC(torch.optim.Optimizer):
    """Adam with the DP noise variance taken out of its second moment (Tang et al. 2024; module docstring).

    Args:
        params: Parameters or param groups.
        lr: Learning rate.
        betas: (beta1, beta2).
        gamma_prime: Floor of the corrected second moment, > 0 (the authors: 1e-9 to 1e-8).
        weight_decay: L2 penalty added to the gradient, as ``torch.optim.Adam``'s.
        noise_variance: Phi; 0 without privacy, else set per step by the DP optimizer.
    """

    def __init__(self, params, *, lr: float, betas: tuple[float, float], gamma_prime: float,
                 weight_decay: float = 0.0, noise_variance: float = 0.0):
        if not gamma_prime > 0:
            raise ReproduceError(f"DP-AdamBC needs gamma_prime > 0 (it keeps the root away from 0), got {gamma_prime}")
        if not all(0 <= b < 1 for b in betas):
            raise ReproduceError(f"DP-AdamBC betas must lie in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), gamma_prime=gamma_prime,
                                      weight_decay=weight_decay, noise_variance=noise_variance))

    def set_noise_variance(self, noise_variance: float) -> None:
        """Phi for the next step, in every param group."""
        for group in self.param_groups:
            group["noise_variance"] = float(noise_variance)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                v_hat = v / (1 - beta2 ** t)
                denom = (v_hat - group["noise_variance"]).clamp_(min=group["gamma_prime"]).sqrt_()
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))
        return loss


@register_optimizer("sgd")
def sgd(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (heavy-ball momentum: buf = mu buf + g, theta -= lr buf)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@register_optimizer("adam")
def adam(params, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam``; on a private gradient this is DP-Adam (opacus's only adaptive optimizer)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@register_optimizer("dp_adambc")
def dp_adambc(params, *, lr: float, betas: tuple[float, float], gamma_prime: float,
              weight_decay: float) -> torch.optim.Optimizer:
    """``DPAdamBC``; its noise variance starts at 0 and is set by the DP optimizer."""
    return DPAdamBC(params, lr=lr, betas=betas, gamma_prime=gamma_prime, weight_decay=weight_decay)
