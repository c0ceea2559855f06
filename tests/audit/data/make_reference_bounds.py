"""Regenerate reference_bounds.json from jax_privacy's one-run auditor (not run by CI).

The suite computes the one-run bound of Steinke, Nasr & Jagielski (2023) with scipy alone
(reproduce/audit/bounds.py); this script records what the maintained implementation,
``jax_privacy.auditing``, says on the same inputs, so tests/audit can compare the two without JAX.
jax_privacy needs numpy>=2 and the suite pins numpy<2, so run it in a throwaway environment:

    python3.11 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install jax-privacy==2.0.0
    /tmp/jaxenv/bin/python tests/audit/data/make_reference_bounds.py

Three tables are written, each row holding its inputs and the reference's output:
``p_values`` (``_one_run_p_value``: the paper's Algorithm 2 tail bound), ``epsilons``
(``_epsilon_one_run``: the largest epsilon whose (epsilon, delta) claim the counts reject) and
``explicit_thresholds`` (the public ``CanaryScoreAuditor.epsilon_one_run`` with an explicit
threshold, on seeded scores that are stored too, so the guess counting is checked as well).
"""

from __future__ import annotations

import datetime
import itertools
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from jax_privacy import auditing

OUT = Path(__file__).with_name("reference_bounds.json")

# m canaries, r guesses of which c are correct. Precisions 0.5 (no evidence) to 1 (all correct).
MS = (100, 1000, 10_000)
GUESS_FRACTIONS = (0.1, 0.5, 1.0)
PRECISIONS = (0.5, 0.7, 0.9, 1.0)
DELTAS = (0.0, 1e-5)
SIGNIFICANCES = (0.05,)
# A few rows at other confidences and deltas, at m = 1000.
EXTRA = [(1000, 500, 450, 1e-3, 0.05), (1000, 500, 450, 1e-5, 0.01), (1000, 500, 450, 1e-5, 0.1),
         (1000, 100, 100, 1e-2, 0.05), (1000, 1000, 1000, 0.0, 0.05), (1000, 10, 10, 1e-5, 0.05),
         (1000, 1, 1, 0.0, 0.05), (1000, 200, 0, 1e-5, 0.05)]


def _jsonable(x) -> float:
    return float(x)


def epsilon_rows() -> list[dict]:
    rows = []
    for m, frac, prec, delta, sig in itertools.product(MS, GUESS_FRACTIONS, PRECISIONS, DELTAS, SIGNIFICANCES):
        r = int(round(frac * m))
        c = int(round(prec * r))
        rows.append((m, r, c, delta, sig))
    rows += EXTRA
    return [{"m": m, "r": r, "c": c, "delta": delta, "significance": sig,
             "epsilon": _jsonable(auditing._epsilon_one_run(0, m, r, c, sig, delta))}
            for m, r, c, delta, sig in rows]


def p_value_rows() -> list[dict]:
    rows = []
    for (m, r, c), eps, delta in itertools.product(
            [(100, 50, 40), (1000, 500, 450), (1000, 1000, 1000), (10_000, 1000, 700), (1000, 20, 20)],
            (0.0, 0.5, 1.0, 2.0, 4.0), (0.0, 1e-6, 1e-3, 0.1)):
        rows.append({"m": m, "r": r, "c": c, "epsilon": eps, "delta": delta,
                     "p_value": _jsonable(auditing._one_run_p_value(m, r, c, eps, delta))})
    return rows


def explicit_threshold_rows() -> list[dict]:
    rows = []
    for seed, (m, shift) in enumerate([(400, 1.0), (400, 3.0), (1000, 2.0)]):
        rng = np.random.default_rng(seed)
        included = rng.random(m) < 0.5
        # Rounded so that this script and the tests see exactly the same floats.
        scores = np.round(rng.normal(size=m) + shift * included, 6)
        for quantile, sig, delta in [(0.5, 0.05, 1e-5), (0.8, 0.05, 1e-5), (0.95, 0.01, 1e-6)]:
            threshold = float(np.quantile(scores, quantile))
            auditor = auditing.CanaryScoreAuditor(scores[included], scores[~included])
            eps = auditor.epsilon_one_run(sig, delta, threshold_strategy=auditing.Explicit(threshold))
            rows.append({"scores": scores.tolist(), "included": included.astype(int).tolist(),
                         "threshold": threshold, "significance": sig, "delta": delta,
                         "guessed_in": int(np.sum(scores >= threshold)),
                         "epsilon": _jsonable(eps)})
    return rows


def main() -> None:
    versions = {name: metadata.version(name) for name in ("jax-privacy", "jax", "numpy", "scipy", "dp-accounting")}
    payload = {
        "header": {
            "what": "jax_privacy.auditing one-run bound (Steinke, Nasr & Jagielski 2023) on fixed inputs",
            "produced_by": "tests/audit/data/make_reference_bounds.py",
            "date": datetime.date.today().isoformat(),
            "python": platform.python_version(),
            "versions": versions,
            "reference_source": ("pip install jax-privacy==2.0.0; its _one_run_p_value/_epsilon_one_run are "
                                 "line-for-line those of google-deepmind/jax_privacy at commit "
                                 "8967688c26d46f3b74bfdfe61ef1f984b887abab (jax_privacy/auditing.py)"),
            "precision": "epsilons come from scipy.optimize.brentq with xtol=1e-6 in the reference",
            "argv": sys.argv,
        },
        "p_values": p_value_rows(),
        "epsilons": epsilon_rows(),
        "explicit_thresholds": explicit_threshold_rows(),
    }
    # One row a line: readable diffs without a line per stored score.
    lines = ["{", f' "header": {json.dumps(payload["header"], indent=1)},']
    tables = [key for key in payload if key != "header"]
    for n, key in enumerate(tables):
        rows = ",\n  ".join(json.dumps(row) for row in payload[key])
        lines.append(f' "{key}": [\n  {rows}\n ]' + ("," if n < len(tables) - 1 else ""))
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}: {len(payload['p_values'])} p-values, {len(payload['epsilons'])} epsilons, "
          f"{len(payload['explicit_thresholds'])} explicit-threshold audits")


if __name__ == "__main__":
    main()
