"""Study validation: every invalid study exits 2 naming file, line and field, and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reproduce.errors import StudyError
from reproduce.models.group_norm import GROUP_NORM_GROUPS
from reproduce.study import load_study, parse_study
from tests.conftest import REPO, TINY_STUDY

VALID = TINY_STUDY.format(name="tiny")


def _edit(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


# (description, study text, expected line, text that must appear in the message)
INVALID = [
    ("unknown top-level key", VALID + "epochs: 3\n", 20, "epochs: unknown key"),
    (
        "unknown nested key",
        _edit("  accountant: rdp", "  accountant: rdp\n  sigma: 1.0"),
        8,
        "privacy.sigma: unknown key",
    ),
    ("wrong type", _edit("epochs: 1", "epochs: many"), 12, "training.epochs"),
    ("negative epsilon", _edit("[non-private, 8]", "[non-private, -8]"), 17, "grid.epsilon"),
    ("delta >= 1", _edit("delta: 1.0e-5", "delta: 1.5"), 5, "privacy.delta"),
    ("zero clipping norm", _edit("max_grad_norm: 1.0", "max_grad_norm: 0"), 6, "privacy.max_grad_norm"),
    ("unknown accountant", _edit("accountant: rdp", "accountant: gdp"), 7, "'rdp' or 'prv'"),
    ("empty grid axis", _edit("seed: [0]", "seed: []"), 19, "grid.seed"),
    ("missing grid", VALID.split("grid:")[0], 1, "grid"),
    ("unknown dataset", _edit("dataset: [embedded]", "dataset: [imagenet]"), 15, "grid.dataset"),
    ("unknown group", _edit("group: [e]", "group: [e, X4]"), 16, "unknown group 'X4'"),
    ("duplicate cell ids", _edit("seed: [0]", "seed: [0, 0]"), 19, "duplicate cell ids"),
    ("YAML syntax error", _edit("group: [e]", "group: [e"), 17, "YAML syntax error"),
    ("duplicate key", _edit("  epochs: 1", "  epochs: 1\n  epochs: 2"), 13, "duplicate key 'epochs'"),
    ("widths of wrong length", _edit("widths: [4, 8, 8]", "widths: [4, 8]"), 3, "model.widths"),
    ("non-positive width", _edit("widths: [4, 8, 8]", "widths: [4, 0, 8]"), 3, "widths must be positive"),
    (
        "physical > 2 x logical batch",
        _edit("physical_batch_size: 32", "physical_batch_size: 129"),
        1,
        "physical_batch_size",
    ),
    ("bool as epsilon", _edit("[non-private, 8]", "[false]"), 17, "grid.epsilon"),
    ("name differs from file", _edit("name: tiny", "name: other"), 1, "must equal the file name"),
    ("not a mapping", "- just\n- a list\n", 1, "must be a YAML mapping"),
    ("widths for a group missing", _edit("widths: [4, 8, 8]", "widths: {C4: [4, 8, 8]}"), 1, "no layout for group"),
    ("unknown optimizer", _edit("name: sgd,", "name: lamb,"), 9, "'sgd', 'adam' or 'dp_adambc'"),
    ("no rate for the optimizer", _edit("lr: 0.1,", "lr: {adam: 0.001},"), 9, "lr gives no rate for optimizer 'sgd'"),
    (
        "unknown clipping rule",
        _edit("  accountant: rdp", "  accountant: rdp\n  clipping: {rule: psac}"),
        8,
        "'flat', 'automatic' or 'adaptive'",
    ),
    (
        "quantile above 1",
        _edit("  accountant: rdp", "  accountant: rdp\n  clipping: {rule: adaptive, target_quantile: 1.5}"),
        8,
        "privacy.clipping.target_quantile",
    ),
    ("beta of 1", _edit("lr: 0.1,", "lr: 0.1, betas: [0.9, 1.0],"), 9, "betas must lie in [0, 1)"),
    ("unknown audit kind", _edit("grid:", "audit: {kind: whitebox}\ngrid:"), 14, "audit.kind: got 'whitebox'"),
    (
        "more guesses than canaries",
        _edit("grid:", "audit:\n  canaries: 10\n  guesses: [[6, 6]]\ngrid:"),
        16,
        "audit.guesses: entry 0 is [6, 6]",
    ),
    ("audit confidence of 1", _edit("grid:", "audit: {confidence: 1.0}\ngrid:"), 14, "audit.confidence"),
    (
        "audit axis without an audit",
        _edit("seed: [0]", "seed: [0]\n  audit.kind: [input, gradient]"),
        20,
        "audit is not set in the study",
    ),
]


UNBUILDABLE_WIDTHS = [
    (
        "per-group layout",
        _edit("widths: [4, 8, 8]", "widths: {e: [20, 40, 80]}"),
        3,
        "model.widths.e.1: widths 40, 80 cannot be built",
    ),
    (
        "one layout for every group",
        _edit("widths: [4, 8, 8]", "widths:\n    - 16\n    - 32\n    - 48"),
        6,
        "model.widths.2: width 48",
    ),
    (
        "a grid axis value",
        _edit("seed: [0]", "seed: [0]\n  model.widths: [[8, 16, 32], [8, 16, 36]]"),
        20,
        "grid.model.widths.1.2: width 36",
    ),
]
INVALID += UNBUILDABLE_WIDTHS  # located like every other invalid field


@pytest.mark.parametrize("desc,text,line,needle", INVALID, ids=[i[0] for i in INVALID])
def test_invalid_study_is_located(desc, text, line, needle, temp_study):
    path = temp_study(text)
    with pytest.raises(Exception) as info:
        load_study(path)
    msg = str(info.value)
    assert type(info.value).__name__ == "StudyError"
    assert f"{path}:{line}:" in msg, msg
    assert needle in msg, msg


def test_cli_exit_code_2_no_traceback_nothing_written(temp_study, tmp_path):
    path = temp_study(INVALID[3][1])
    before = sorted(p for p in tmp_path.rglob("*"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (
        ["validate", str(path)],
        [
            "train",
            str(path),
            "--cell",
            "embedded-e-8-1-0",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
        ],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "reproduce", *args], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"{path}:17: grid.epsilon" in proc.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_study_file_that_is_not_utf8_names_the_line_and_offset_of_the_bad_byte(temp_study):
    path = temp_study()
    # a Latin-1 editor saved the author's name in a comment on line 2 (byte 0xf6 at offset 14)
    path.write_bytes(path.read_bytes().replace(b"\n", "\n# Hölzl\n".encode("latin-1"), 1))
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert f"{path}:2: byte 0xf6 at offset 14 is not UTF-8; save the file as UTF-8" in str(info.value)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: None, "no such study file"),
        (lambda p: p.write_text("\n  \n"), "the study file is empty"),
        (lambda p: p.mkdir(), "is a directory, not a study file"),
    ],
    ids=["missing", "empty", "directory"],
)
def test_a_missing_empty_or_directory_study_is_one_clear_line(tmp_path, make, needle):
    path = tmp_path / "tiny.yaml"
    make(path)
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: {needle}") and "\n" not in str(info.value)


# Widths the conventional ResNet-9 cannot build (GroupNorm of w channels in min(32, w) groups).


def test_widths_the_conventional_model_cannot_build_are_refused_by_its_own_rule(temp_study):
    # the located errors are INVALID's; the rule is the model's, not restated here
    path = temp_study(UNBUILDABLE_WIDTHS[0][1])
    with pytest.raises(StudyError, match=f"at most {GROUP_NORM_GROUPS} or a multiple of {GROUP_NORM_GROUPS}"):
        load_study(path)


def test_widths_only_the_equivariant_models_read_may_be_any_size():
    # escnn's field group norm takes a divisor of the field count: every width builds
    assert parse_study(
        _edit("widths: [4, 8, 8]", "widths: {e: [16, 32, 64], C4: [20, 40, 80]}").replace(
            "group: [e]", "group: [e, C4]"
        )
    )
    assert parse_study(_edit("widths: [4, 8, 8]", "widths: [20, 40, 80]").replace("group: [e]", "group: [C4]"))


def test_physical_batch_may_exceed_the_logical_one_up_to_twice_it():
    # Poisson batches above batch_size run whole (one micro-batch) under such a bound
    for physical in (64, 96, 128):
        assert (
            parse_study(
                _edit("physical_batch_size: 32", f"physical_batch_size: {physical}")
            ).training.physical_batch_size
            == physical
        )


def test_valid_study_cells_are_stable_and_readable():
    study = parse_study(VALID, path="<study>")
    ids = [c.id for c in study.cells()]
    assert ids == ["embedded-e-non-private-1-0", "embedded-e-8-1-0"]
    assert study.cells()[1].private and not study.cells()[0].private
    assert study.cells()[0].config()["privacy"] is None


def test_repository_studies_are_valid():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        assert load_study(path).cells()


def test_cell_ids_match_dvc_matrix_keys():
    """The Python cell id must equal DVC's ${key} for the default study (both expand the same grid)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--all"]
        if False
        else [os.path.join(os.path.dirname(sys.executable), "dvc"), "stage", "list"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    dvc_keys = sorted(
        line.split()[0].removeprefix("train@") for line in proc.stdout.splitlines() if line.startswith("train@")
    )
    assert dvc_keys == sorted(c.id for c in load_study(REPO / "studies/default.yaml").cells())


def test_optimizer_hyperparameters_are_each_optimizers_own():
    opt = parse_study(
        _edit(
            "{name: sgd, lr: 0.1, momentum: 0.9}",
            "{name: dp_adambc, lr: {sgd: 0.5, dp_adambc: 0.002}, momentum: 0.9, gamma_prime: 1.0e-7}",
        )
    )
    cfg = opt.training.optimizer
    assert cfg.learning_rate == 0.002
    assert cfg.hyperparameters() == {"lr": 0.002, "betas": (0.9, 0.999), "gamma_prime": 1e-7, "weight_decay": 0.0}
    sgd = cfg.model_copy(update={"name": "sgd"})
    assert sgd.hyperparameters() == {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.0}


def test_clipping_defaults_to_flat_and_adaptive_count_noise_to_batch_over_20():
    study = parse_study(VALID)
    assert study.privacy.clipping.rule == "flat"
    assert study.privacy.clipping.rule_parameters(expected_batch_size=64) == {}
    adaptive = study.privacy.clipping.model_copy(update={"rule": "adaptive"})
    assert adaptive.rule_parameters(expected_batch_size=64) == {
        "target_quantile": 0.5,
        "learning_rate": 0.2,
        "count_noise_std": 3.2,
    }
