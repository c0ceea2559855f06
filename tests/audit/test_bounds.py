"""The one-run bound against jax_privacy's recorded outputs, an exact brute force, and its shape."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from reproduce.audit import epsilon_lower_bound, guesses, max_epsilon_lower_bound, one_run_audit, one_run_p_value

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_bounds.json").read_text())
# The reference stops its root search at xtol=1e-6 (header "precision"); ours at 1e-9.
EPSILON_ATOL = 1e-5


def _row_id(row: dict) -> str:
    return ",".join(f"{key}={row[key]}" for key in ("m", "r", "c", "epsilon", "delta", "significance") if key in row)


def test_reference_header_says_how_it_was_made():
    header = REFERENCE["header"]
    assert header["versions"]["jax-privacy"] == "2.0.0"
    assert "8967688c26d46f3b74bfdfe61ef1f984b887abab" in header["reference_source"]
    assert header["produced_by"] == "tests/audit/data/make_reference_bounds.py"


@pytest.mark.parametrize("row", REFERENCE["p_values"], ids=_row_id)
def test_p_value_matches_reference(row):
    p = one_run_p_value(m=row["m"], r=row["r"], c=row["c"], epsilon=row["epsilon"], delta=row["delta"])
    assert p == pytest.approx(row["p_value"], rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("row", REFERENCE["epsilons"], ids=_row_id)
def test_epsilon_lower_bound_matches_reference(row):
    eps = epsilon_lower_bound(
        m=row["m"], r=row["r"], c=row["c"], delta=row["delta"], confidence=1 - row["significance"]
    )
    assert eps == pytest.approx(row["epsilon"], abs=EPSILON_ATOL)


@pytest.mark.parametrize(
    "row", REFERENCE["explicit_thresholds"], ids=lambda row: f"m={len(row['scores'])},t={row['threshold']:.3f}"
)
def test_scores_to_bound_matches_reference_public_api(row):
    """CanaryScoreAuditor.epsilon_one_run(Explicit(t)) guesses "in" for every score >= t."""
    scores, included = np.array(row["scores"]), np.array(row["included"], dtype=bool)
    k_pos = int(np.sum(scores >= row["threshold"]))
    assert k_pos == row["guessed_in"]
    audit = one_run_audit(
        scores, included, guess_counts=[(k_pos, 0)], delta=row["delta"], confidence=1 - row["significance"]
    )
    assert audit.r == k_pos
    assert audit.epsilon_lower_bound == pytest.approx(row["epsilon"], abs=EPSILON_ATOL)


def _exact_p_value(m: int, r: int, c: int, epsilon: float, delta: float) -> float:
    """The paper's Algorithm 2 as a literal loop, in exact rational arithmetic (q rounded once)."""
    q = Fraction(1 / (1 + math.exp(-epsilon)))
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    tail = sum(pmf[c:], Fraction(0))
    slope, window = Fraction(0), Fraction(0)
    for i in range(1, c + 1):
        window += pmf[c - i]
        slope = max(slope, window / i)
    return float(min(tail + slope * Fraction(delta) * 2 * m, Fraction(1)))


@pytest.mark.parametrize("m,r,c", [(50, 30, 25), (200, 40, 40), (1000, 60, 45), (10, 10, 0)])
@pytest.mark.parametrize("epsilon", [0.0, 0.7, 3.0])
@pytest.mark.parametrize("delta", [0.0, 1e-4, 1e-2])
def test_p_value_matches_exact_arithmetic(m, r, c, epsilon, delta):
    expected = _exact_p_value(m, r, c, epsilon, delta)
    assert one_run_p_value(m=m, r=r, c=c, epsilon=epsilon, delta=delta) == pytest.approx(expected, rel=1e-10)


def _float_p_value(m: int, r: int, c: int, epsilon: float, delta: float) -> float:
    """The same literal loop in floats, with the pmf from log-gamma: fast enough to scan a grid."""
    log_q, log_1mq = -math.log1p(math.exp(-epsilon)), -math.log1p(math.exp(epsilon))
    pmf = [
        math.exp(math.lgamma(r + 1) - math.lgamma(k + 1) - math.lgamma(r - k + 1) + k * log_q + (r - k) * log_1mq)
        for k in range(r + 1)
    ]
    slope, window = 0.0, 0.0
    for i in range(1, c + 1):
        window += pmf[c - i]
        slope = max(slope, window / i)
    return min(sum(pmf[c:]) + slope * delta * 2 * m, 1.0)


@pytest.mark.parametrize("m,r,c,delta", [(100, 100, 90, 0.0), (1000, 200, 170, 1e-5), (1000, 50, 50, 1e-6)])
def test_epsilon_is_the_last_rejected_epsilon_on_a_fine_grid(m, r, c, delta):
    """Brute force: scan epsilon in steps of 2e-3 for the last claim whose p-value is <= 0.05."""
    rejected = [e for e in np.arange(0, 10, 2e-3) if _float_p_value(m, r, c, e, delta) <= 0.05]
    assert rejected, "the chosen counts should reject some epsilon"
    assert epsilon_lower_bound(m=m, r=r, c=c, delta=delta, confidence=0.95) == pytest.approx(max(rejected), abs=2e-3)


def test_more_correct_guesses_give_a_larger_bound():
    bounds = [epsilon_lower_bound(m=1000, r=500, c=c, delta=1e-5, confidence=0.95) for c in range(250, 501, 10)]
    assert bounds == sorted(bounds)
    assert bounds[-1] > bounds[len(bounds) // 2] > 0


@pytest.mark.parametrize("m,r", [(100, 100), (1000, 500), (10_000, 10_000)])
def test_half_right_shows_nothing(m, r):
    assert epsilon_lower_bound(m=m, r=r, c=r // 2, delta=1e-5, confidence=0.95) == 0.0


def test_bound_falls_with_confidence_and_delta_and_rises_with_canaries():
    def at(delta, confidence):
        return epsilon_lower_bound(m=1000, r=500, c=450, delta=delta, confidence=confidence)

    assert at(1e-5, 0.99) < at(1e-5, 0.9)
    assert at(1e-3, 0.95) < at(0.0, 0.95)
    # Same 80% precision, more guesses: more evidence.
    bounds = [epsilon_lower_bound(m=n, r=n, c=4 * n // 5, delta=0.0, confidence=0.95) for n in (100, 1000, 10_000)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]


def test_all_right_ceiling():
    """m guesses, all right, delta = 0: q^m = 0.05, i.e. epsilon = logit(0.05^(1/m))."""
    m = 1000
    q = 0.05 ** (1 / m)
    assert max_epsilon_lower_bound(m=m, delta=0.0, confidence=0.95) == pytest.approx(math.log(q / (1 - q)), abs=1e-7)
    assert max_epsilon_lower_bound(m=m, delta=1e-5, confidence=0.95) < math.log(q / (1 - q))


def _brute_force_guesses(scores, included, k_pos, k_neg):
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    top, bottom = ranked[:k_pos], ranked[len(ranked) - k_neg :] if k_neg else []
    return k_pos + k_neg, sum(bool(included[i]) for i in top) + sum(not included[i] for i in bottom)


@pytest.mark.parametrize("seed", range(5))
def test_guesses_against_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    included = rng.random(40) < 0.5
    for k_pos, k_neg in [(0, 0), (10, 0), (0, 10), (7, 13), (20, 20), (40, 0)]:
        assert guesses(scores, included, k_pos, k_neg) == _brute_force_guesses(scores, included, k_pos, k_neg)


def test_out_guesses_mirror_in_guesses():
    rng = np.random.default_rng(1)
    scores, included = rng.normal(size=100), rng.random(100) < 0.5
    assert guesses(scores, included, 0, 30) == guesses(-scores, ~included, 30, 0)


def test_perfect_scores_guess_everything_right():
    included = np.array([True, False, True, True, False, False])
    scores = np.where(included, 1.0, -1.0)
    assert guesses(scores, included, 3, 3) == (6, 6)
    assert guesses(-scores, included, 3, 3) == (6, 0)


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.zeros(3), np.zeros(3, dtype=bool), 2, 2), "exceed"),
        ((np.zeros(3), np.zeros(4, dtype=bool), 1, 0), "one length"),
        ((np.zeros(3), np.zeros(3), 1, 0), "bool mask"),
        ((np.array([0.0, np.nan, 1.0]), np.zeros(3, dtype=bool), 1, 0), "not finite"),
        ((np.zeros(3), np.zeros(3, dtype=bool), -1, 0), "non-negative"),
    ],
)
def test_guesses_refuse_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        guesses(*args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(m=10, r=11, c=1, delta=0.0, confidence=0.95), "c <= r <= m"),
        (dict(m=10, r=5, c=1, delta=2.0, confidence=0.95), "delta"),
        (dict(m=10, r=5, c=1, delta=0.0, confidence=1.0), "confidence"),
    ],
)
def test_bound_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        epsilon_lower_bound(**kwargs)


def test_audit_over_candidates_is_bonferroni_corrected():
    rng = np.random.default_rng(3)
    included = rng.random(1000) < 0.5
    scores = rng.normal(size=1000) + 2.0 * included
    candidates = [(50, 0), (100, 100), (300, 0)]
    audit = one_run_audit(scores, included, guess_counts=candidates, delta=1e-5, confidence=0.95)
    assert audit.candidates == 3 and (audit.k_pos, audit.k_neg) in candidates
    each = [
        epsilon_lower_bound(m=1000, r=r, c=c, delta=1e-5, confidence=1 - 0.05 / 3)
        for r, c in (guesses(scores, included, *pair) for pair in candidates)
    ]
    assert audit.epsilon_lower_bound == pytest.approx(max(each))
    alone = one_run_audit(scores, included, guess_counts=[(audit.k_pos, audit.k_neg)], delta=1e-5, confidence=0.95)
    assert alone.epsilon_lower_bound > audit.epsilon_lower_bound  # the correction costs something
    metrics = audit.as_metrics()
    assert metrics["audit_epsilon_lower_bound"] == audit.epsilon_lower_bound
    assert metrics["audit_m"] == 1000 and metrics["audit_included"] == int(included.sum())
    json.dumps(metrics)
