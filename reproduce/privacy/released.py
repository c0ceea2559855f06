"""Which values of a private cell's result read the training data without noise.

DP-SGD's guarantee covers what is computed from its noised updates: the weights, every applied
update, and what is evaluated from them on other data. A result also releases training diagnostics
and timings that read the training data directly (the timings in ``run.json``, beside ``result.json``:
paths ``run.*``). Every field a result writes is classified here, and
``unnoised_releases`` refuses an unclassified one, so the privacy statement cannot fall behind the
trainer: a new field fails the first private run (and CI) until it is put in one of the two lists.

Paths are dotted keys; ``[]`` stands for every element of a list; a trailing ``*`` matches any rest.
"""

from __future__ import annotations

from reproduce.errors import ReproduceError

# Covered by the guarantee, or independent of the training data.
COVERED = (
    "cell",
    "config.*",  # the study's configuration
    "metrics.parameters",
    "metrics.steps",
    "metrics.epsilon",  # architecture, calibrated steps, accountant
    "metrics.train_flops",  # architecture x steps x expected batch size
    "metrics.val_*",
    "metrics.test_*",
    "metrics.rot*",  # weights evaluated on the val/test splits
    "metrics_detail.reliability_test*",  # weights evaluated on the test split
    "epochs[].epoch",
    "steps[].step",
    "steps[].epoch",
    "steps[].l0_update",  # sparsity of the noised update: post-processing
    "steps[].max_grad_norm",  # C: fixed, or adaptive from noised counts
    "provenance.study",
    "provenance.study_sha256",
    "provenance.cell",
    "provenance.seed",
    "provenance.data.name",
    "provenance.data.source",
    "provenance.versions.*",
    "provenance.device*",  # reproduce.device.device_facts (or "cpu")
    "run.commit",
    "run.dirty",
    "run.platform",  # run.json: code and host
    "weights.*",  # model.pt: the final (noised) weights, their checksum
)

# Released without noise: each reads the training data (or the sampled batch sizes) directly.
UNNOISED = (
    "metrics.train_loss_last",  # training loss of the last batch; null for an empty batch
    "metrics.train_gwa_last_epoch",  # gradient-weight alignment of per-sample gradients
    "run.train_seconds",
    "run.samples_per_second",  # run.json: depend on the sampled batch sizes
    "epochs[].loss",
    "epochs[].gwa",
    "epochs[].gwa_mean",
    "epochs[].gwa_excess_kurtosis",
    "steps[].loss",
    "steps[].l0_clipped",
    "steps[].gwa",
    "steps[].gwa_mean",  # l0_clipped: before noise
    # reproduce.metrics.clipping: per-sample gradient norms, the unclipped and clipped sums before
    # noise, the noise itself, and the update against the unclipped mean gradient.
    "steps[].share_clipped",
    "steps[].grad_norm_q*",
    "steps[].clip_bias_cosine",
    "steps[].clip_bias_norm_ratio",
    "steps[].noise_to_signal",
    "steps[].update_cosine",
    "provenance.data.sha256",  # checksum of the dataset file, training set included
    "run.finished_utc",  # run.json: end time, which moves with the training time
    # An audited cell's audit (reproduce.audit): its counts read the canaries' inclusion mask, and
    # input canaries' scores are losses on canary records (mislabeled copies of training images).
    "audit.*",
)


def released_paths(record: dict) -> list[str]:
    """Every leaf path of ``record`` (lists of mappings as ``name[]``), in first-seen order.

    Args:
        record: A result record (nested dicts and lists, JSON-like).

    Returns:
        Dotted paths such as ``metrics.train_seconds`` or ``steps[].loss``.
    """
    out: dict[str, None] = {}

    def walk(value, path: str) -> None:
        # An empty mapping or list releases nothing.
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(sub, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for sub in value:
                walk(sub, f"{path}[]")
        else:
            out[path] = None

    walk(record, "")
    return list(out)


def _matches(path: str, pattern: str) -> bool:
    return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern


def unnoised_releases(record: dict) -> list[str]:
    """The paths of ``record`` that are released without noise, in the order of ``UNNOISED``.

    Args:
        record: The result record without its privacy statement.

    Returns:
        The ``UNNOISED`` paths present in ``record``.

    Raises:
        ReproduceError: a field of ``record`` is in neither ``COVERED`` nor ``UNNOISED``.
    """
    paths = released_paths(record)
    unknown = [p for p in paths if not any(_matches(p, pat) for pat in COVERED + UNNOISED)]
    if unknown:
        raise ReproduceError(
            f"result field(s) {unknown} are not classified in reproduce/privacy/released.py: "
            "add each to COVERED or UNNOISED so the privacy statement says whether it reads "
            "the training data without noise"
        )
    return [pat for pat in UNNOISED if any(_matches(p, pat) for p in paths)]
