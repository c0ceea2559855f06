"""DP-AdamBC (Tang, Shpilevskiy, Lecuyer, "DP-AdamBC: Your DP-Adam Is Actually DP-SGD (Unless You
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
"""

from __future__ import annotations

import torch

from reproduce.errors import ReproduceError


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

    def __init__(
        self,
        params,
        *,
        lr: float,
        betas: tuple[float, float],
        gamma_prime: float,
        weight_decay: float = 0.0,
        noise_variance: float = 0.0,
    ):
        if not gamma_prime > 0:
            raise ReproduceError(f"DP-AdamBC needs gamma_prime > 0 (it keeps the root away from 0), got {gamma_prime}")
        if not all(0 <= b < 1 for b in betas):
            raise ReproduceError(f"DP-AdamBC betas must lie in [0, 1), got {betas}")
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                gamma_prime=gamma_prime,
                weight_decay=weight_decay,
                noise_variance=noise_variance,
            ),
        )

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
                v_hat = v / (1 - beta2**t)
                denom = (v_hat - group["noise_variance"]).clamp_(min=group["gamma_prime"]).sqrt_()
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))
        return loss
