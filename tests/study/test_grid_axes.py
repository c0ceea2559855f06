"""Dotted grid axes: any model/privacy/training field swept like the fixed axes, validated per value at
its YAML line, applied to each cell's study, expanded for private cells only when DP-only, keyed in
DVC exactly as Cell.id, and split out by the report."""

from __future__ import annotations

import itertools
import json

import pytest

from reproduce.errors import StudyError
from reproduce.pipeline.stages import render_pipeline
from reproduce.study import GRID_AXES, load_study, parse_study
from tests.conftest import REPO, TINY_STUDY

VALID = TINY_STUDY.format(name="tiny")


def with_axes(axes: str, base: str = VALID) -> str:
    """The tiny study with extra grid lines (YAML, two-space indented under grid:)."""
    return base + "".join(f"  {line}\n" for line in axes.strip().splitlines())


SWEEP = with_axes("""
model.widths: [[4, 8, 8], [8, 8, 16]]
privacy.max_grad_norm: [0.5, 2]
""")


def test_dotted_axes_multiply_cells_and_reach_each_cells_study():
    study = parse_study(SWEEP)
    cells = study.cells()
    # non-private: 2 layouts (max_grad_norm is DP-only); private: 2 layouts x 2 clipping norms
    assert [c.id for c in cells] == [
        "embedded-e-non-private-1-0-4_8_8",
        "embedded-e-non-private-1-0-8_8_16",
        "embedded-e-8-1-0-4_8_8-0.5",
        "embedded-e-8-1-0-4_8_8-2",
        "embedded-e-8-1-0-8_8_16-0.5",
        "embedded-e-8-1-0-8_8_16-2",
    ]
    cell = study.cell("embedded-e-8-1-0-8_8_16-0.5")
    assert cell.study.privacy.max_grad_norm == 0.5 and cell.widths == (8, 8, 16)
    assert cell.study.model.widths == (8, 8, 16)
    assert study.privacy.max_grad_norm == 1.0  # the study itself is unchanged
    assert cell.axis("model.widths") == (8, 8, 16) and cell.axis("group") == "e"
    config = cell.config()
    assert config["privacy"]["max_grad_norm"] == 0.5 and config["model"]["widths"] == [8, 8, 16]
    assert config["axes"] == {"model.widths": [8, 8, 16], "privacy.max_grad_norm": 0.5}


def test_training_fields_as_axes():
    study = parse_study(
        with_axes(
            """
training.epochs: [1, 3]
training.dp_optimizer.lr: [0.5, 1.0]
""",
            VALID.replace("  epochs: 1\n", "  epochs: 1\n  dp_optimizer: {name: sgd, lr: 0.2}\n"),
        )
    )
    by_id = {c.id: c for c in study.cells()}
    assert by_id["embedded-e-8-1-0-3-0.5"].study.training.epochs == 3
    assert by_id["embedded-e-8-1-0-3-0.5"].study.training.dp_optimizer.lr == 0.5
    assert by_id["embedded-e-non-private-1-0-3"].study.training.dp_optimizer.lr == 0.2
    assert len(by_id) == 2 + 4


def test_non_private_reference_is_not_multiplied_by_dp_only_axes():
    """The grid of studies/optimisers_under_dp.yaml in small: one non-private cell per (group, seed)."""
    text = with_axes(
        """
training.dp_optimizer.lr: [0.5, 1, 2]
privacy.max_grad_norm: [0.5, 1]
""",
        VALID.replace("group: [e]", "group: [e, C4]")
        .replace("seed: [0]", "seed: [0, 1]")
        .replace("  epochs: 1\n", "  epochs: 1\n  dp_optimizer: {name: sgd, lr: 0.2}\n"),
    )
    cells = parse_study(text).cells()
    non_private = [c for c in cells if not c.private]
    assert sorted((c.group, c.seed) for c in non_private) == sorted(itertools.product(["e", "C4"], [0, 1]))
    assert all(c.axes == () for c in non_private)
    assert len([c for c in cells if c.private]) == 2 * 2 * 3 * 2
    assert len({c.id for c in cells}) == len(cells)


def test_existing_studies_keep_their_ids():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        study = load_study(path)
        if study.grid.axes:
            continue
        g = study.grid
        expected = ["-".join(map(str, values)) for values in itertools.product(*(getattr(g, a) for a in GRID_AXES))]
        assert [c.id for c in study.cells()] == expected, path.name
    assert [c.id for c in load_study(REPO / "studies/ci.yaml").cells()] == [
        "embedded-e-non-private-1-0",
        "embedded-e-8-1-0",
        "embedded-C4-non-private-1-0",
        "embedded-C4-8-1-0",
    ]


# (description, axes, expected line, text in the message)
INVALID_AXES = [
    (
        "bad value",
        "privacy.max_grad_norm: [0.5, -1]",
        20,
        "grid.privacy.max_grad_norm.1: Input should be greater than 0",
    ),
    ("bad value on its own line", "privacy.max_grad_norm:\n  - 0.5\n  - -1", 22, "grid.privacy.max_grad_norm.1:"),
    ("bad layout", "model.widths: [[4, 8, 8], [4, 0, 8]]", 20, "grid.model.widths.1: widths must be positive"),
    ("bad literal", "privacy.accountant: [rdp, gdp]", 20, "grid.privacy.accountant.1: got 'gdp'"),
    ("unknown path", "privacy.max_grad_nrm: [1]", 20, "unknown axis 'privacy.max_grad_nrm': privacy has no field"),
    ("unknown section", "optimiser.lr: [1]", 20, "unknown axis 'optimiser.lr'"),
    ("data is per study", "data.size: [28, 64]", 20, "data sources are fixed per study"),
    ("a section, not a field", "training.optimizer: [1]", 20, "is a section; sweep its fields"),
    ("unset parent", "training.dp_optimizer.lr: [1]", 20, "training.dp_optimizer is not set"),
    ("not a list", "privacy.max_grad_norm: 2", 20, "non-empty list"),
    ("duplicate values", "privacy.max_grad_norm: [2, 2]", 20, "duplicate cell ids"),
    (
        "one value spelled twice",
        "privacy.max_grad_norm: [1, 2, 1.0]",
        20,
        "grid.privacy.max_grad_norm.2: is the same setting as entry 0 (1): duplicate cells",
    ),
    ("unknown plain key", "seeds: [1]", 20, "grid.seeds: unknown key"),
    ("conflicting axes", "training.steps: [3]", 20, "training needs exactly one of epochs or steps"),
]


@pytest.mark.parametrize("desc,axes,line,needle", INVALID_AXES, ids=[c[0] for c in INVALID_AXES])
def test_bad_axis_is_located(desc, axes, line, needle, temp_study):
    path = temp_study(with_axes(axes))
    with pytest.raises(StudyError) as e:
        load_study(path)
    msg = str(e.value)
    assert f"{path}:{line}:" in msg and needle in msg, msg


def test_dp_only_axis_without_dp_cells_is_refused():
    with pytest.raises(StudyError, match="applies to DP cells only"):
        parse_study(with_axes("privacy.max_grad_norm: [1, 2]", VALID.replace("[non-private, 8]", "[non-private]")))


def test_epochs_and_steps_axes_conflict():
    text = with_axes("training.epochs: [1, 2]\ntraining.steps: [3]")
    with pytest.raises(StudyError, match="training needs exactly one of epochs or steps"):
        parse_study(text)


def test_pipeline_writes_exactly_the_cells():
    import yaml

    study = parse_study(SWEEP)
    train = yaml.safe_load(render_pipeline(study))["stages"]["train"]
    assert list(train["foreach"]) == [c.id for c in study.cells()]
    assert train["foreach"]["embedded-e-8-1-0-8_8_16-2"] == {
        "dataset": "embedded",
        "group": "e",
        "epsilon": 8,
        "multiplicity": 1,
        "seed": 0,
        "model_widths": [8, 8, 16],
        "privacy_max_grad_norm": 2,
    }
    assert train["do"]["cmd"].endswith("--cell ${key}")
    plain = yaml.safe_load(render_pipeline(parse_study(VALID)))["stages"]["train"]
    assert "matrix" in plain and "foreach" not in plain  # studies without dotted axes: as before


def test_dvc_stage_keys_equal_cell_ids(tmp_path):
    """Real DVC: the stage names it generates are train@<Cell.id>, lists included."""
    from reproduce.pipeline.stages import write_pipelines
    from tests.pipeline.run_helpers import run

    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.yaml").write_text(SWEEP)
    study = load_study(tmp_path / "studies" / "tiny.yaml")
    write_pipelines(tmp_path, [study])
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    out = run(["dvc", "stage", "list", "pipelines/tiny/dvc.yaml", "--name-only"], tmp_path).stdout
    names = [line.split(":", 1)[1] for line in out.split()]
    assert names == [f"train@{c.id}" for c in study.cells()] + ["attribute", "report"]


def test_table_and_figures_split_by_a_dotted_axis(tmp_path):
    from reproduce.records.result import CellResult
    from reproduce.report.figures import figure_subsets, write_figures
    from reproduce.report.table import build_table, to_csv, to_markdown, to_summary
    from tests.report.conftest import fake_result

    study = parse_study(SWEEP)
    results = {}
    for c in study.cells():
        record = fake_result(c)
        # accuracy encodes the cell's layout and clipping norm, so pooling them would show
        record["metrics"]["val_acc"] = c.widths[0] / 100 + (c.axis("privacy.max_grad_norm") or 0) / 1000
        results[c.id] = CellResult.from_json(record)
    table = build_table(study, results, metric="val_acc")
    rows = {tuple(v for _, v in r.axes): r for r in table.rows}
    assert set(rows) == {("4-8-8", "0.5"), ("4-8-8", "2"), ("8-8-16", "0.5"), ("8-8-16", "2")}
    row = rows[("8-8-16", "2")]
    assert row.widths == (8, 8, 16)
    assert row.cell("DP eps=8, no aug").mean == pytest.approx(0.082)
    assert row.cell("non-DP, no aug").mean == pytest.approx(0.08)  # the non-private reference
    md = to_markdown(study, table)
    assert "| dataset | group | model.widths | privacy.max_grad_norm | params |" in md
    assert "model.widths,privacy.max_grad_norm" in to_csv(table).splitlines()[0]
    assert "embedded/e/model.widths=8-8-16/privacy.max_grad_norm=2/val_acc/DP eps=8, no aug" in to_summary(table)
    by_width = build_table(study, results, metric="val_acc", by=("model.widths",))
    assert [r.axes for r in by_width.rows] == [(("model.widths", "4-8-8"),), (("model.widths", "8-8-16"),)]
    assert by_width.rows[1].cell("DP eps=8, no aug").n == 2  # both clipping norms pooled
    # Figure 1 draws every layout on its size axis: one figure per clipping norm.
    assert figure_subsets(study, keep=("model.widths",)) == [
        {"privacy.max_grad_norm": 0.5},
        {"privacy.max_grad_norm": 2},
    ]
    figures = write_figures(study, results, tmp_path)
    assert sorted(f.path.name for f in figures if f.kind == "figure1") == [
        "figure1-embedded-eps8-k1-privacy_max_grad_norm0.5.png",
        "figure1-embedded-eps8-k1-privacy_max_grad_norm2.png",
    ]


def test_smoke_runs_a_study_with_an_epochs_axis(tmp_path, monkeypatch):
    """The smoke run fixes the steps; an epochs axis on top of them would be invalid (it was)."""
    from reproduce.checks.smoke import run_smoke, smoke_cells, smoke_study

    study = parse_study(with_axes("training.epochs: [1, 2]"))
    assert [c.id for c in smoke_cells(smoke_study(study))] == ["embedded-e-8-1-0", "embedded-e-non-private-1-0"]
    monkeypatch.chdir(tmp_path)
    assert run_smoke(study, data_root=REPO / "data", max_cells=1) == 0


def test_smoke_covers_every_axis_value():
    from reproduce.checks.smoke import smoke_cells

    study = load_study(REPO / "studies" / "pathmnist_width.yaml")
    layouts = {c.widths for c in smoke_cells(study)}
    assert layouts == {tuple(w) for w in study.grid.axes["model.widths"]}


def test_pathmnist_width_is_figure_1_left():
    study = load_study(REPO / "studies" / "pathmnist_width.yaml")
    assert study.grid.dataset == ["pathmnist"] and study.grid.group == ["e", "C4"]
    assert all(c.private and c.epsilon == 7.42 for c in study.cells())
    assert [tuple(w) for w in study.grid.axes["model.widths"]][0] == (8, 16, 32)
    assert [tuple(w) for w in study.grid.axes["model.widths"]][-1] == (64, 128, 256)


@pytest.mark.slow
def test_dvc_repro_of_a_dotted_axis_runs_each_cell_with_its_value(tmp_path, tmp_path_factory):
    """End to end: `dvc repro` trains each cell with its own clipping norm; adding a value runs just it."""
    from tests.pipeline.run_helpers import embedded_data, make_repo_copy, run

    text = with_axes("privacy.max_grad_norm: [0.5, 2]", TINY_STUDY.format(name="default"))
    r = make_repo_copy(tmp_path / "repo", text, embedded_data(tmp_path_factory.getbasetemp()))
    run(["reproduce", "pipeline"], r)
    cells = run(["reproduce", "cells", "studies/default.yaml"], r).stdout.split()
    assert cells == ["embedded-e-non-private-1-0", "embedded-e-8-1-0-0.5", "embedded-e-8-1-0-2"]
    out = run(["dvc", "repro"], r).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == sorted(["attribute", "report", *(f"train@{c}" for c in cells)])
    for cell, norm in (("embedded-e-8-1-0-0.5", 0.5), ("embedded-e-8-1-0-2", 2.0)):
        result = json.loads((r / f"results/default/cells/{cell}/result.json").read_text())
        assert result["privacy"]["max_grad_norm"] == norm
        assert result["config"]["privacy"]["max_grad_norm"] == norm
    assert "privacy.max_grad_norm" in (r / "results/default/table.md").read_text()
    study = r / "studies/default.yaml"
    study.write_text(study.read_text().replace("[0.5, 2]", "[0.5, 2, 4]"))
    run(["reproduce", "pipeline"], r)
    out = run(["dvc", "repro"], r).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["attribute", "report", "train@embedded-e-8-1-0-4"]
