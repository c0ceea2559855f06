"""One-run privacy audit (Steinke, Nasr & Jagielski, NeurIPS 2023): a measured epsilon lower bound.

The accountant's epsilon is an upper bound that holds only if the code does what the proof assumes.
An audited run trains with m canaries, each included independently with probability 1/2, guesses
from the final model which were included, and turns the number of right guesses into an epsilon
that the run provably exceeds (at a stated confidence). A bound above the accountant's epsilon
means the implementation breaks its guarantee (a sample not clipped, noise not added, a sample rate
other than the accounted one).

Modules: ``bounds`` (the bound and the guess rule, scipy only), ``canaries`` (seeded canaries, the
inclusion mask and the scores), ``record`` (what an audited cell writes). All pure;
nothing here reads files or trains. A cell's bound against its accountant's epsilon, what the
report shows and ``reproduce check`` fails on, is ``reproduce.checks.audit`` (it reads results).

Why scipy and not jax_privacy: ``jax_privacy.auditing.CanaryScoreAuditor.epsilon_one_run`` is the
maintained reference, but jax-privacy pulls in JAX and needs numpy>=2, which the suite's pin
(numpy<2, for escnn's lie_learn) forbids. The bound is a binomial tail and a root search, so it is
computed here with scipy as the reference does, and tests/audit checks it against the reference's
outputs recorded on a grid of inputs (tests/audit/data/reference_bounds.json, made by
tests/audit/data/make_reference_bounds.py in a throwaway environment with jax-privacy 2.0.0).

How a trainer runs an audited cell (``reproduce.training.audit`` does this for a study's ``audit``
section, ``AuditConfig`` in reproduce/study/sections.py; ``reproduce.records.audit.AuditRecord`` is what the cell writes):

1. Before training: ``included = inclusion_mask(m, seed=audit_seed)``.

   - Input canaries (black box): ``canaries = input_canaries(kind, train_images, train_labels,
     m=m, num_classes=k, seed=audit_seed)`` and ``images, labels, rows =
     with_included_canaries(train_images, train_labels, canaries, included)``. Train on these:
     the included canaries are ordinary records, so the Poisson sampler draws them at the same
     sample_rate, and N = len(images) is the N of ``sample_rate = batch_size / N`` and of the
     accountant (noise calibration included). Excluded canaries are never seen.
   - Gradient canaries (white box): ``canaries = GradientCanaries(m=m, num_params=
     parameter_vector(model).size, seed=audit_seed, kind="dirac")``; append one placeholder record
     per included canary to the training set (N grows by ``included.sum()`` exactly as above) and
     keep ``theta_initial = parameter_vector(model)`` before the first step. In every step, take the
     placeholders out of the micro-batch before the forward pass and append
     ``canaries.gradient(i, norm=...)`` (split back in ``model.parameters()`` order) as the
     per-sample gradient of each canary i drawn; clipping, summing and noise then proceed unchanged. A norm above
     max_grad_norm makes a missing clip visible; a correct clip makes it irrelevant.

2. After training, one score per canary (all m, included or not), higher meaning "in":
   ``loss_scores(losses)`` with each canary's loss under the final model (input canaries), or
   ``canaries.scores(theta_initial, parameter_vector(model))`` (gradient canaries).

3. ``result = one_run_audit(scores, included, guess_counts=[(k_pos, k_neg), ...], delta=delta,
   confidence=0.95)``: guesses "in" for the k_pos highest scores and "out" for the k_neg lowest,
   the best bound over the candidates, Bonferroni-corrected over them (fix them in the study file,
   never from the scores). ``reproduce.training.audit.audit_record(result, ...)`` is what the cell writes
   (``audit`` in result.json, ``audit_epsilon_lower`` in metrics.json); the report shows the bound
   next to the accountant's epsilon, ``reproduce.checks.audit`` flags ``AuditRecord.violates(epsilon)`` as a
   broken guarantee, and ``epsilon_lower_max`` is ``max_epsilon_lower_bound``, the most m canaries
   can show.
"""

from reproduce.audit.canaries import (
    GRADIENT_CANARY_KINDS,
    INCLUSION_PROBABILITY,
    INPUT_CANARY_KINDS,
    GradientCanaries,
    InputCanaries,
    inclusion_mask,
    input_canaries,
    loss_scores,
    parameter_vector,
    with_included_canaries,
)

__all__ = [
    "GRADIENT_CANARY_KINDS",
    "INCLUSION_PROBABILITY",
    "INPUT_CANARY_KINDS",
    "GradientCanaries",
    "InputCanaries",
    "OneRunAudit",
    "epsilon_lower_bound",
    "guesses",
    "inclusion_mask",
    "input_canaries",
    "loss_scores",
    "max_epsilon_lower_bound",
    "one_run_audit",
    "one_run_p_value",
    "parameter_vector",
    "with_included_canaries",
]

# The bounds need scipy.stats (a second to load): loaded on first use, so that the study schema, which reads
# the canary kinds above, stays quick to import.
_BOUNDS = (
    "OneRunAudit",
    "epsilon_lower_bound",
    "guesses",
    "max_epsilon_lower_bound",
    "one_run_audit",
    "one_run_p_value",
)


def __getattr__(name: str):
    if name in _BOUNDS:
        from reproduce.audit import bounds  # a plain import, so the stages' derived dependencies see it

        return getattr(bounds, name)
    raise AttributeError(f"module 'reproduce.audit' has no attribute {name!r}")
