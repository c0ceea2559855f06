"""Exponential moving average of the trainable weights, evaluated in their place (the follow-up paper)."""

from __future__ import annotations

import torch


class EMA:
    """``shadow <- decay * shadow + (1 - decay) * weights`` after every optimizer step.

    Post-processing of the (private) weight sequence, so it costs no privacy.
    """

    def __init__(self, params: list[torch.nn.Parameter], *, decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.decay)

    @torch.no_grad()
    def copy_to_weights(self) -> None:
        """Overwrite the weights with the average (at the end of training, before evaluation)."""
        for p, e in zip(self.params, self.shadow):
            p.copy_(e)
