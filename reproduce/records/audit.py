"""What an audited cell writes: the ``audit`` record of its ``result.json``.

One record per audited cell: how the audit was made (kind, canaries, confidence, the guess rule that
won) and what it measured (``epsilon_lower``, the lower bound). ``epsilon_lower_max`` is the most
that m canaries can show (every guess right), so that a small bound is not read as evidence that
the accountant is loose. A bound above the accountant's epsilon is a *violation*: the run did not
do what its proof assumes (``reproduce check`` fails on it).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """The audit of one training run.

    Attributes:
        kind: "input" (black box, canary losses) or "gradient" (white box, weight moves).
        canary: The canaries' construction ("mislabeled", "ood", "dirac", "gaussian").
        canaries: m, canaries made (each included with probability 1/2).
        included: Of them in the training set (counted in its N).
        guesses: r, guesses made by the winning candidate (k_pos + k_neg).
        correct: c, of them right.
        k_pos, k_neg: The winning candidate's "in" and "out" guesses.
        candidates: Guess candidates tried (the confidence is Bonferroni-corrected over them).
        confidence: Of the bound, overall.
        delta: The delta of the claims tested (the study's).
        epsilon_lower: The lower bound: no (epsilon, delta)-DP training with a smaller epsilon makes
            this many right guesses with probability above 1 - confidence.
        epsilon_lower_max: The bound had every guess of m been right.
    """

    kind: str
    canary: str
    canaries: int
    included: int
    guesses: int
    correct: int
    k_pos: int
    k_neg: int
    candidates: int
    confidence: float
    delta: float
    epsilon_lower: float
    epsilon_lower_max: float

    def violates(self, epsilon: float | None) -> bool:
        """Whether the bound contradicts the accountant's ``epsilon`` (None: a non-private run, no claim)."""
        return epsilon is not None and self.epsilon_lower > epsilon

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> AuditRecord:
        return cls(**record)


__all__ = ["AuditRecord"]
