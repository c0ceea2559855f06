"""The one-run epsilon lower bound of Steinke, Nasr & Jagielski (NeurIPS 2023), with scipy alone.

m canaries are each included independently with probability 1/2; after one training run an auditor
makes r guesses ("in" or "out") from scores of the canaries and c of them are right. If the
training is (epsilon, delta)-DP, the number of correct guesses is stochastically dominated, up to
a delta term, by Binomial(r, e^epsilon / (1 + e^epsilon)); the paper's Algorithm 2 turns this into
the p-value

    P[W >= c] <= P[X >= c] + 2 m delta * max_{1 <= i <= c} P[c - i <= X < c] / i,
    X ~ Binomial(r, q),  q = e^epsilon / (1 + e^epsilon).

The lower bound at confidence 1 - beta is the epsilon where this p-value rises past beta: every
(epsilon', delta) claim with epsilon' below it is rejected at level beta. Computed as jax_privacy.auditing does
(``_one_run_p_value``/``_epsilon_one_run``): the tail by scipy's binomial, the root by brentq after
doubling the bracket from epsilon = 1; tests/audit compares both on recorded inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

# Root tolerance on epsilon; the reference uses 1e-6, so the two agree to about that.
_EPSILON_XTOL = 1e-9


def _check_counts(m: int, r: int, c: int) -> None:
    for name, value in (("m", m), ("r", r), ("c", c)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{name} must be an integer count, got {value!r}")
    if not 0 <= c <= r <= m:
        raise ValueError(
            f"counts must satisfy 0 <= c <= r <= m (correct <= guesses <= canaries), got m={m}, r={r}, c={c}"
        )


def _check_delta(delta: float) -> None:
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta!r}")


def one_run_p_value(*, m: int, r: int, c: int, epsilon: float, delta: float) -> float:
    """P-value of c correct guesses out of r under an (epsilon, delta)-DP null (paper's Algorithm 2).

    Args:
        m: Number of canaries (included or not; each included with probability 1/2).
        r: Number of guesses (canaries not abstained on).
        c: Number of correct guesses.
        epsilon: The null hypothesis' epsilon (>= 0).
        delta: The null hypothesis' delta.

    Returns:
        An upper bound on P[at least c correct] for any (epsilon, delta)-DP training, capped at 1.
    """
    _check_counts(m, r, c)
    _check_delta(delta)
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    q = scipy.special.expit(epsilon)  # accuracy of epsilon-DP randomized response
    tail = scipy.stats.binom.sf(c - 1, r, q)  # P[X >= c]
    if delta == 0 or c == 0:
        return float(min(tail, 1.0))
    # window[i-1] = P[c - i <= X <= c - 1] for i = 1..c, summed down from X = c - 1.
    window = np.cumsum(scipy.stats.binom.pmf(np.arange(c - 1, -1, -1), r, q))
    slope = float(np.max(window / np.arange(1, c + 1)))
    return float(min(tail + 2 * m * delta * slope, 1.0))


def epsilon_lower_bound(*, m: int, r: int, c: int, delta: float, confidence: float) -> float:
    """The largest epsilon that c correct guesses out of r reject at the given confidence.

    Args:
        m: Number of canaries.
        r: Number of guesses.
        c: Number of correct guesses.
        delta: The delta of the claims tested (the accountant's delta).
        confidence: 1 - beta, e.g. 0.95: the bound holds with at least this probability.

    Returns:
        epsilon_lb >= 0 such that no (epsilon, delta)-DP training with epsilon < epsilon_lb makes
        c correct guesses with probability above 1 - confidence; 0 when the counts show nothing.
    """
    _check_counts(m, r, c)
    _check_delta(delta)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    significance = 1.0 - confidence

    def rejected_margin(epsilon: float) -> float:  # > 0 while the (epsilon, delta) claim is rejected
        return significance - one_run_p_value(m=m, r=r, c=c, epsilon=epsilon, delta=delta)

    if rejected_margin(0.0) <= 0:
        return 0.0
    low, high = 0.0, 1.0
    while rejected_margin(high) > 0:  # p-value -> 1 as epsilon grows, so this ends
        low, high = high, 2 * high
    return float(scipy.optimize.brentq(rejected_margin, low, high, xtol=_EPSILON_XTOL))


def guesses(scores: np.ndarray, included: np.ndarray, k_pos: int, k_neg: int) -> tuple[int, int]:
    """Guess "in" for the k_pos highest scores and "out" for the k_neg lowest; count the right ones.

    Ties are broken by canary index (earlier index ranks higher), which depends on the scores and
    the canaries' fixed order only, never on the inclusion mask, so the guesses stay valid.

    Args:
        scores: [m] one score per canary, higher meaning "more likely included".
        included: [m] bool, whether each canary was in the training set.
        k_pos: Number of "in" guesses.
        k_neg: Number of "out" guesses.

    Returns:
        (r, c): the number of guesses k_pos + k_neg and the number of correct ones.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included)
    if scores.ndim != 1 or included.shape != scores.shape:
        raise ValueError(
            f"scores and included must be 1-D of one length, got shapes {scores.shape} and {included.shape}"
        )
    if included.dtype != np.bool_:
        raise ValueError(f"included must be a bool mask, got dtype {included.dtype}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(
            f"{int(np.sum(~np.isfinite(scores)))} canary scores are not finite "
            f"(a diverged model?); the audit needs a score for every canary"
        )
    m = scores.size
    for name, k in (("k_pos", k_pos), ("k_neg", k_neg)):
        if isinstance(k, bool) or int(k) != k or k < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {k!r}")
    if k_pos + k_neg > m:
        raise ValueError(f"k_pos + k_neg = {k_pos + k_neg} guesses exceed the m = {m} canaries")
    order = np.argsort(-scores, kind="stable")  # highest first
    correct = int(np.sum(included[order[:k_pos]])) + int(np.sum(~included[order[m - k_neg :]]))
    return int(k_pos + k_neg), correct


@dataclasses.dataclass(frozen=True)
class OneRunAudit:
    """The result of a one-run audit: the counts, the bound, and what it was computed at."""

    m: int  # canaries
    included: int  # of them in the training set
    k_pos: int  # "in" guesses (highest scores) of the best candidate
    k_neg: int  # "out" guesses (lowest scores) of the best candidate
    r: int  # guesses, k_pos + k_neg
    c: int  # correct guesses
    delta: float
    confidence: float  # overall, after the Bonferroni correction over candidates
    candidates: int  # how many (k_pos, k_neg) pairs were tried
    epsilon_lower_bound: float

    def exceeds(self, epsilon: float) -> bool:
        """Whether the measured lower bound is above a claimed epsilon: the claim is then false."""
        return self.epsilon_lower_bound > epsilon

    def as_metrics(self, prefix: str = "audit") -> dict[str, float | int]:
        """JSON-ready columns for a result row, e.g. ``audit_epsilon_lower_bound``."""
        return {f"{prefix}_{field.name}": getattr(self, field.name) for field in dataclasses.fields(self)}


def one_run_audit(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    guess_counts: Sequence[tuple[int, int]],
    delta: float,
    confidence: float,
) -> OneRunAudit:
    """The best one-run bound over candidate guess counts, Bonferroni-corrected over them.

    Each candidate (k_pos, k_neg) is audited at confidence 1 - (1 - confidence) / len(guess_counts),
    so the maximum holds at ``confidence``. The candidates must be fixed before the scores are seen
    (in the study file): choosing them from the scores would void the guarantee.

    Args:
        scores: [m] canary scores, higher meaning "more likely included".
        included: [m] bool inclusion mask of the run.
        guess_counts: Candidate (k_pos, k_neg) pairs; one pair audits exactly that guess.
        delta: The accountant's delta.
        confidence: Overall confidence of the reported bound, e.g. 0.95.

    Returns:
        The candidate with the largest bound (the first such on ties).
    """
    guess_counts = [tuple(pair) for pair in guess_counts]
    if not guess_counts or any(len(pair) != 2 for pair in guess_counts):
        raise ValueError(f"guess_counts must be a non-empty list of (k_pos, k_neg) pairs, got {guess_counts!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    each = 1.0 - (1.0 - confidence) / len(guess_counts)
    best = None
    for k_pos, k_neg in guess_counts:
        r, c = guesses(scores, included, k_pos, k_neg)
        bound = epsilon_lower_bound(m=len(scores), r=r, c=c, delta=delta, confidence=each)
        if best is None or bound > best.epsilon_lower_bound:
            best = OneRunAudit(
                m=len(scores),
                included=int(np.sum(included)),
                k_pos=int(k_pos),
                k_neg=int(k_neg),
                r=r,
                c=c,
                delta=float(delta),
                confidence=float(confidence),
                candidates=len(guess_counts),
                epsilon_lower_bound=bound,
            )
    return best


def max_epsilon_lower_bound(*, m: int, delta: float, confidence: float) -> float:
    """The bound when all m canaries are guessed right: about the most that m canaries can show.

    An accountant epsilon far above this cannot be contradicted by m canaries; the report can print
    it next to the bound so that a small bound is not read as evidence that the accountant is loose.
    """
    return epsilon_lower_bound(m=m, r=m, c=m, delta=delta, confidence=confidence)


__all__ = [
    "OneRunAudit",
    "epsilon_lower_bound",
    "guesses",
    "max_epsilon_lower_bound",
    "one_run_audit",
    "one_run_p_value",
]
