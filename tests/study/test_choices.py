"""The schema's named choices come from their registries; each resolved choice holds only what its builder reads."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from reproduce.audit.canaries import CANARY_KINDS
from reproduce.privacy.accountants import ACCOUNTANTS
from reproduce.privacy.clipping import CLIPPING_RULES, make_clipping_rule
from reproduce.privacy.optimizers import OPTIMIZERS
from reproduce.study import AuditConfig, ClippingConfig, OptimizerConfig, PrivacyConfig, parse_study
from reproduce.study.choices import (
    CLIPPING_SETTINGS,
    OPTIMIZER_SETTINGS,
    keyword_parameters,
    settings_models,
    unknown_settings,
)


def _choices(model, field: str) -> tuple:
    return typing.get_args(model.model_fields[field].annotation)


def test_every_literal_of_names_is_its_registry():
    assert _choices(OptimizerConfig, "name") == tuple(OPTIMIZERS)
    assert _choices(ClippingConfig, "rule") == tuple(CLIPPING_RULES)
    assert _choices(PrivacyConfig, "accountant") == ACCOUNTANTS
    assert _choices(AuditConfig, "kind") == tuple(CANARY_KINDS)
    assert _choices(AuditConfig, "input_canary") == CANARY_KINDS["input"]
    assert _choices(AuditConfig, "gradient_canary") == CANARY_KINDS["gradient"]


def test_every_accountant_is_one_opacus_builds():
    from opacus.accountants import create_accountant

    for name in ACCOUNTANTS:
        assert create_accountant(name).mechanism() == name


def test_a_resolved_optimizer_holds_exactly_its_builders_keywords():
    section = OptimizerConfig(name="adam", lr={"sgd": 0.5, "adam": 0.002}, momentum=0.9, gamma_prime=1e-6)
    resolved = section.resolved()
    assert type(resolved) is OPTIMIZER_SETTINGS["adam"]
    assert not hasattr(resolved, "momentum") and not hasattr(resolved, "gamma_prime")  # sgd's, dp_adambc's
    assert section.hyperparameters() == {"lr": 0.002, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    for name, builder in OPTIMIZERS.items():
        assert list(OPTIMIZER_SETTINGS[name].model_fields) == ["name", *keyword_parameters(builder)]


def test_a_resolved_clipping_rule_holds_exactly_its_constructors_keywords():
    section = ClippingConfig(rule="automatic", gamma=0.05, target_quantile=0.7)
    assert section.rule_parameters(expected_batch_size=64) == {"gamma": 0.05}
    adaptive = section.model_copy(update={"rule": "adaptive"}).resolved(expected_batch_size=64)
    assert type(adaptive) is CLIPPING_SETTINGS["adaptive"]
    assert (adaptive.target_quantile, adaptive.learning_rate, adaptive.count_noise_std) == (0.7, 0.2, 64 / 20)
    for name in CLIPPING_RULES:  # what a rule is resolved to, its registry builds
        parameters = section.model_copy(update={"rule": name}).rule_parameters(expected_batch_size=64)
        rule = make_clipping_rule(name, **parameters)
        assert rule.name == name


def test_a_grid_sweeps_the_name_over_one_section_of_several_choices_settings():
    study = parse_study("""\
name: sweep
training:
  optimizer: {name: sgd, lr: {sgd: 0.5, dp_adambc: 0.002}, momentum: 0.9, gamma_prime: 1.0e-6}
  epochs: 1
privacy:
  clipping: {rule: flat, gamma: 0.05}
grid:
  dataset: [embedded]
  group: [e]
  epsilon: [8]
  seed: [0]
  training.optimizer.name: [sgd, dp_adambc]
  privacy.clipping.rule: [flat, automatic]
""")
    read = {
        (c.study.training.optimizer.resolved(), c.study.privacy.clipping.resolved(expected_batch_size=256))
        for c in study.cells()
    }
    assert {(type(o).__name__, type(r).__name__) for o, r in read} == {
        ("sgd", "flat"),
        ("sgd", "automatic"),
        ("dp_adambc", "flat"),
        ("dp_adambc", "automatic"),
    }
    assert {o.lr for o, _ in read} == {0.5, 0.002}


def test_a_name_outside_the_registry_is_refused_with_the_registrys_names():
    with pytest.raises(ValidationError, match="Input should be 'sgd', 'adam' or 'dp_adambc'"):
        OptimizerConfig(name="lion")


def test_a_builder_reading_a_setting_the_section_lacks_is_named():
    def lion(params, *, lr: float, betas: tuple[float, float], weight_decay: float, sign_momentum: float):
        """A registry ahead of the schema."""

    models = settings_models({"lion": lion}, discriminator="name")
    assert unknown_settings(models, offered=set(OptimizerConfig.model_fields), section="training.optimizer") == [
        "lion reads 'sign_momentum', which training.optimizer has no field for"
    ]
