"""The privacy statement says what the guarantee assumes (hyperparameters, public N, randomness) and what it does not cover."""

from __future__ import annotations

import dataclasses

import pytest

from reproduce.data.stand_in import stand_in
from reproduce.privacy.released import UNNOISED
from reproduce.records.audit import AuditRecord
from reproduce.records.privacy import Mechanism, PrivacyStatement, private_statement
from reproduce.study import load_study, parse_study
from reproduce.training.cell import run_cell
from tests.conftest import REPO

BASE = dict(
    private=True,
    accountant="rdp",
    target_epsilon=8.0,
    epsilon_spent=7.99,
    delta=1e-5,
    noise_multiplier=1.1,
    sample_rate=0.0625,
    steps=32,
    max_grad_norm=1.0,
    sampling="Poisson",
    secure_mode=False,
    training_set_size=1024,
    seed=3,
    unnoised_releases=("metrics.train_loss_last", "metrics.train_seconds", "steps[].loss"),
)


# BASE's mechanism: flat clipping, one sigma.
MECHANISM = Mechanism(
    accountant="rdp",
    target_epsilon=8.0,
    delta=1e-5,
    noise_multiplier=1.1,
    gradient_noise_multiplier=1.1,
    sample_rate=0.0625,
    steps=32,
    max_grad_norm=1.0,
    clipping="flat",
    clipping_parameters=(),
    rescale_to_unit_norm=False,
    sampling="Poisson",
    secure_mode=False,
    training_set_size=1024,
)
RUN = dict(epsilon_spent=7.99, seed=3, hyperparameter_selection=None, unnoised_releases=BASE["unnoised_releases"])


def _sentence(**changes) -> str:
    return PrivacyStatement(**{**BASE, **changes}).sentence()


def test_statement_quotes_how_the_hyperparameters_were_chosen():
    text = _sentence(hyperparameter_selection="Learning rate tuned on the embedded training set.")
    assert 'as the study states: "Learning rate tuned on the embedded training set."' in text
    assert "does not account for choosing them" in text


def test_statement_without_a_selection_assumes_hyperparameters_not_chosen_on_the_private_data():
    text = _sentence(hyperparameter_selection=None)
    assert "the guarantee assumes they were not chosen on the private training data" in text


def test_statement_lists_the_unnoised_releases_and_treats_N_as_public():
    text = _sentence()
    assert "not covered: metrics.train_loss_last, metrics.train_seconds, steps[].loss" in text
    assert "a null loss marks an empty Poisson batch" in text
    assert "N=1024 is treated as public" in text


def test_seeded_statement_says_the_noise_is_reproducible_from_the_recorded_seed():
    text = _sentence(secure_mode=False)
    assert "seeded with the seed recorded in this result (3)" in text
    assert "for research reproduction, not for release" in text
    secure = _sentence(secure_mode=True)
    assert "operating system's CSPRNG" in secure and "seed recorded" not in secure


def test_trained_cell_quotes_its_study_and_lists_every_unnoised_field_it_writes():
    study = parse_study("""\
name: statement
model:
  widths: [4, 4, 8]
privacy:
  hyperparameter_selection: chosen by a fair coin
training:
  batch_size: 16
  physical_batch_size: 16
  steps: 3
grid:
  dataset: [bloodmnist]
  group: [e]
  epsilon: [8]
  multiplicity: [1]
  seed: [0]
""")
    (cell,) = study.cells()
    result = run_cell(cell, data_root=None, progress=False, splits=stand_in(cell.dataset, size=28, seed=0))
    privacy = result.privacy
    assert '"chosen by a fair coin"' in result.statement
    assert privacy.training_set_size == 64 and "N=64" in result.statement
    # every field UNNOISED names is written by a multi-class private cell (an audited one's audit.*:
    # tests/audit/test_training.py): no stale entries
    unaudited = [path for path in UNNOISED if not path.startswith("audit.")]
    assert list(privacy.unnoised_releases) == unaudited
    assert ", ".join(unaudited) in result.statement


def test_repository_studies_state_how_their_hyperparameters_were_chosen():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        assert load_study(path).privacy.hyperparameter_selection, path.name
    for name in ("default", "ci"):  # tuned by this suite on the embedded data, and they say so
        assert (
            "tuned by this suite" in load_study(REPO / f"studies/{name}.yaml").privacy.hyperparameter_selection.lower()
        )


def test_statement_names_the_clipping_rule_and_adaptive_clippings_two_noises():
    assert "per-sample clipping to 1, Gaussian noise multiplier 1.1000 (std 1.1)" in _sentence()  # flat: as before
    automatic = _sentence(clipping="automatic", clipping_gamma=0.01)
    assert "automatic per-sample clipping g C / (||g|| + 0.01) with C=1 (Bu et al. 2023" in automatic
    adaptive = _sentence(
        clipping="adaptive",
        target_quantile=0.5,
        clip_learning_rate=0.2,
        count_noise_std=3.2,
        gradient_noise_multiplier=1.2,
        rescaled_to_unit_norm=True,
    )
    assert "adaptive norm C_t (Andrew et al. 2021: from C_0=1 towards the 0.5 quantile" in adaptive
    assert "count of unclipped samples noised with std 3.2" in adaptive
    assert "Gaussian gradient noise multiplier 1.2000 (std 1.2000 C_t)" in adaptive
    assert "one Gaussian mechanism with noise multiplier 1.1000 (Theorem 1)" in adaptive
    assert "noised mean divided by the clipping norm" in adaptive and "divided" not in _sentence()


def test_private_statement_is_the_mechanism_and_what_only_the_run_knows():
    assert private_statement(MECHANISM, **RUN) == PrivacyStatement(**BASE)  # flat: no clipping fields
    audit = AuditRecord(
        kind="gradient",
        canary="dirac",
        canaries=64,
        included=35,
        guesses=10,
        correct=9,
        k_pos=5,
        k_neg=5,
        candidates=5,
        confidence=0.95,
        delta=1e-5,
        epsilon_lower=0.1,
        epsilon_lower_max=2.0,
    )
    audited = private_statement(
        dataclasses.replace(MECHANISM, secure_mode=True, training_set_size=1059), **RUN, audit=audit
    )
    assert (audited.audit_canaries, audited.audit_included, audited.training_set_size) == (64, 35, 1059)
    assert audited.secure_mode and "Audited run: N counts 35 canaries (of 64 made" in audited.sentence()


def test_private_statement_says_which_sigma_is_accounted_and_which_noises_the_gradient():
    adaptive = dataclasses.replace(
        MECHANISM,
        clipping="adaptive",
        gradient_noise_multiplier=1.2,
        rescale_to_unit_norm=True,
        clipping_parameters=(("target_quantile", 0.5), ("learning_rate", 0.2), ("count_noise_std", 3.2)),
    )
    # noise_multiplier: the accounted sigma_eff (BASE's 1.1); the gradient's own is the larger split.
    assert private_statement(adaptive, **RUN) == PrivacyStatement(
        **BASE,
        clipping="adaptive",
        target_quantile=0.5,
        clip_learning_rate=0.2,
        count_noise_std=3.2,
        gradient_noise_multiplier=1.2,
        rescaled_to_unit_norm=True,
    )
    automatic = dataclasses.replace(MECHANISM, clipping="automatic", clipping_parameters=(("gamma", 0.01),))
    assert private_statement(automatic, **RUN) == PrivacyStatement(**BASE, clipping="automatic", clipping_gamma=0.01)
    with pytest.raises(ValueError, match="no fields for clipping rule 'psac'"):
        private_statement(dataclasses.replace(MECHANISM, clipping="psac"), **RUN)
