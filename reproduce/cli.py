"""Command line: each command parses its arguments, calls one function of the package and prints what it
returns. Errors print as one line without a traceback.

A command is a ``cmd_<name>`` function with its arguments declared above it (``@command``), so its help, its
options and what it does sit together; ``build_parser`` only assembles them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

from reproduce.errors import ReproduceError, StudyError, file_error
from reproduce.pipeline.experiments import ALL, DEFAULT_METRIC  # light: no torch

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _positive(text: str) -> int:
    """An argparse type: a count that must be at least 1 (0 would divide by zero or loop forever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call."""

    flags: tuple[str, ...]
    options: dict


def arg(*flags: str, **options) -> Arg:
    return Arg(flags, options)


@dataclasses.dataclass(frozen=True)
class Command:
    name: str  # "exp show": the subcommand show of exp
    help: str
    args: tuple[Arg, ...]
    func: Callable[[argparse.Namespace], int]


#: Every command, in the order ``reproduce --help`` lists them.
COMMANDS: list[Command] = []
#: Commands with subcommands ("exp show"), and their help.
GROUPS = {"exp": "DVC experiments of one study, readable"}


def command(name: str, help: str, *args: Arg):
    """Register the decorated ``cmd_*`` function as ``reproduce <name>`` with ``args``."""

    def register(func):
        COMMANDS.append(Command(name, help, args, func))
        return func

    return register


STUDY = arg("study")
RESULTS = arg("--results", help="default: results/<study>")
DATA_ROOT = arg("--data-root", default="data")


@command("validate", "check study files without running anything", arg("studies", nargs="+"))
def cmd_validate(args) -> int:
    from reproduce.study import GRID_AXES, dp_only, load_study

    failed = 0
    for path in args.studies:  # report every invalid file, not just the first
        try:
            study = load_study(path)
        except StudyError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        cells = study.cells()
        print(
            f"{path}: valid study {study.name!r}, {len(cells)} cells "
            f"({' x '.join([*(f'{len(getattr(study.grid, a))} {a}' for a in GRID_AXES), *(f'{len(v)} {a}' for a, v in study.grid.axes.items())])}"
            f"{'; DP-only axes not repeated for non-private cells' if any(map(dp_only, study.grid.axes)) else ''})"
        )
    if not failed and any(Path(p).resolve().parent == Path("studies").resolve() for p in args.studies):
        _warn_stale_pipelines()
    return StudyError.exit_code if failed else 0


def _warn_stale_pipelines() -> None:
    """Say which generated pipelines no longer match studies/ (validating never writes them)."""
    from reproduce.pipeline.stages import stale_pipelines

    try:
        stale = stale_pipelines()
    except ReproduceError as e:  # another study in studies/ is invalid, or two disagree on a dataset
        print(f"warning: cannot check the pipelines against studies/: {e}", file=sys.stderr)
        return
    if stale:
        print(
            "warning: the DVC pipelines are out of date with studies/:\n  "
            + "\n  ".join(stale)
            + "\n`reproduce repro studies/<study>.yaml` regenerates them before it runs; "
            "`reproduce pipeline` only regenerates",
            file=sys.stderr,
        )


def _regenerate_pipelines() -> None:
    """Rewrite every generated pipeline from studies/ and say what changed (nothing when current)."""
    from reproduce.pipeline.stages import write_pipelines

    for change in write_pipelines():
        print(f"pipeline: {change}")


@command("cells", "list a study's cell ids (the DVC stage keys)", STUDY)
def cmd_cells(args) -> int:
    from reproduce.study import load_study

    for cell in load_study(args.study).cells():
        print(cell.id)
    return 0


@command(
    "fetch",
    "prepare and verify datasets (default: the embedded set)",
    arg("datasets", nargs="*"),
    arg(
        "--study",
        nargs="+",
        action="extend",
        metavar="STUDY",
        help="use these studies' data options (size, mirror, local files), each for the datasets it names; "
        "without DATASETS, fetch all their datasets",
    ),
    arg("--root", default="data"),
)
def cmd_fetch(args) -> int:
    from reproduce.data import prepare_dataset
    from reproduce.study import DataConfig, load_study

    studies = [load_study(p) for p in args.study or []]
    names = args.datasets or list(dict.fromkeys(d for s in studies for d in s.grid.dataset)) or ["embedded"]
    for name in names:
        # Each study naming the dataset reads it with its own data options (MedMNIST size, source);
        # the same options twice are fetched once. Without a study: the schema's default options.
        options = [s.data for s in studies if name in s.grid.dataset] or [s.data for s in studies[:1]] or [DataConfig()]
        distinct = {json.dumps(o.model_dump(mode="json"), sort_keys=True): o for o in options}
        for opts in distinct.values():
            path = prepare_dataset(name, root=Path(args.root), options=opts)
            print(f"{name}: {path}")
    return 0


@command(
    "train",
    "train one cell (the DVC stage command)",
    STUDY,
    arg("--cell", required=True),
    DATA_ROOT,
    arg("--out"),
    arg("--checkpoint-dir", default="checkpoints"),
    arg(
        "--device",
        help="auto (default: CUDA when available, else the CPU), cpu, cuda or cuda:N; "
        "else $REPRODUCE_DEVICE, else run.device in the user config",
    ),
    arg("--quiet", action="store_true"),
)
def cmd_train(args) -> int:
    from reproduce.device import requested_device, resolve_device
    from reproduce.study import load_study
    from reproduce.training.cell import run_cell, write_cell

    study = load_study(args.study)  # the whole study must be valid before anything runs
    cell = study.cell(args.cell)
    # Outside DVC's outputs (DVC deletes those before rerunning a stage), so a killed run resumes.
    checkpoint = Path(args.checkpoint_dir) / study.name / f"{cell.id}.ckpt"
    try:
        result = run_cell(
            cell,
            data_root=Path(args.data_root),
            progress=not args.quiet,
            checkpoint=checkpoint,
            device=resolve_device(requested_device(args.device)),
        )
    except KeyboardInterrupt:  # 130 as for any Ctrl-C (128 + SIGINT): shells and DVC see an interruption
        print(_interrupted(checkpoint), file=sys.stderr)
        return INTERRUPTED
    out = Path(args.out or f"results/{study.name}/cells/{cell.id}")
    write_cell(result, out)
    checkpoint.unlink(missing_ok=True)
    print(result.statement)
    print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith("test_") or k == "epsilon"}))
    return 0


def _interrupted(checkpoint: Path) -> str:
    """The one line after Ctrl-C in training: where the checkpoint is and how to go on."""
    if checkpoint.exists():
        return (
            f"interrupted: the last finished epoch's checkpoint is kept at {checkpoint}; "
            "rerun the same command to resume"
        )
    return (
        f"interrupted before the first epoch finished, so there is no checkpoint yet ({checkpoint}); "
        "rerun the same command to start the cell again"
    )


@command("table", "render a study's tables from its cell results", STUDY, RESULTS)
def cmd_table(args) -> int:
    from reproduce.report.stage import write_tables
    from reproduce.study import load_study

    study = load_study(args.study)
    for path in write_tables(study, results_dir=Path(args.results or f"results/{study.name}")):
        print(path)
    return 0


@command(
    "report",
    "tables, figures and the HTML page of a study, from its results",
    STUDY,
    RESULTS,
    arg("--out", help="default: reports/<study>"),
    arg(
        "--strict",
        action="store_true",
        help="untrained cells are an error (always so for the report: its "
        "tables need every cell; accepted so that scripts pass it to attribute and report alike)",
    ),
)
def cmd_report(args) -> int:
    from reproduce.report.stage import build_report
    from reproduce.study import load_study

    study = load_study(args.study)
    paths = build_report(
        study,
        results_dir=Path(args.results or f"results/{study.name}"),
        out_dir=Path(args.out or f"reports/{study.name}"),
    )
    for path in paths:
        print(path)
    return 0


@command(
    "attribute",
    "Grad-CAM, guided backprop, filter response and co-location scores of every trained "
    "cell (the attribution stage; reads the kept models, trains nothing)",
    STUDY,
    RESULTS,
    DATA_ROOT,
    arg(
        "--strict", action="store_true", help="untrained cells are an error (exit 1) rather than skipped with a warning"
    ),
)
def cmd_attribute(args) -> int:
    from reproduce.attribution.stage import attribute_study
    from reproduce.study import load_study

    study = load_study(args.study)
    paths = attribute_study(
        study,
        results_dir=Path(args.results or f"results/{study.name}"),
        data_root=Path(args.data_root),
        strict=args.strict,
    )
    for path in paths:
        print(path)
    return 0


@command("params", "parameter count per group of a study", STUDY)
def cmd_params(args) -> int:
    from reproduce.models import parameter_counts
    from reproduce.study import load_study

    study = load_study(args.study)
    print(f"{'dataset':14} {'group':6} {'widths':>12} {'parameters':>12}")
    for row in parameter_counts(study):
        print(f"{row.dataset:14} {row.group:6} {'-'.join(map(str, row.widths)):>12} {row.parameters:>12,}")
    return 0


@command(
    "pipeline",
    "(re)write every study's DVC pipeline and the shared data stages from studies/, and "
    "remove those of deleted studies",
    arg("studies", nargs="*", help="check these first (they must be in studies/)"),
)
def cmd_pipeline(args) -> int:
    from reproduce.pipeline.stages import require_in_studies, write_pipelines
    from reproduce.study import load_study

    for path in args.studies:  # the named ones are checked first; every study in studies/ is written
        require_in_studies(path, load_study(path))
    changes = write_pipelines()
    print("\n".join(changes) if changes else "pipelines are up to date with studies/")
    return 0


@command(
    "repro",
    "regenerate the pipelines if studies/ changed, then `dvc repro` one study",
    STUDY,
    arg("dvc_args", nargs=argparse.REMAINDER, help="passed on to dvc repro (e.g. --dry, --force)"),
)
def cmd_repro(args) -> int:
    import subprocess

    from reproduce.pipeline.stages import pipeline_path, produced_directories, require_in_studies
    from reproduce.study import load_study

    study = load_study(args.study)  # the whole study must be valid before anything runs
    require_in_studies(args.study, study)
    _regenerate_pipelines()
    cmd = [sys.executable, "-m", "dvc", "repro", pipeline_path(study).as_posix(), *args.dvc_args]
    print(f"$ dvc repro {' '.join(cmd[4:])}", flush=True)
    # A dry run of a study that never ran: DVC stats the results directories its stages will write.
    made = produced_directories(study) if "--dry" in args.dvc_args else []
    for d in made:
        d.mkdir(parents=True)
    try:
        return subprocess.run(cmd).returncode
    finally:
        for d in reversed(made):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        if made and made[0].parent.is_dir() and not any(made[0].parent.iterdir()):
            made[0].parent.rmdir()


@command(
    "exp show",
    "one row per experiment: the study's summary metrics (percent) and the study "
    "parameters that differ between rows, from `dvc exp show --json`",
    arg("study", nargs="?", default="studies/default.yaml", help="default: studies/default.yaml"),
    arg(
        "--metric",
        default=DEFAULT_METRIC,
        help=f"summary metric to show (default {DEFAULT_METRIC}; test_acc, ...) or {ALL}",
    ),
    arg("--derived", action="store_true", help="also the DP gap and paper-delta columns"),
    arg("--md", action="store_true", help="a Markdown table"),
    arg("-A", "--all-commits", action="store_true", help="passed on to dvc exp show"),
    arg("--rev", help="passed on to dvc exp show: experiments of this baseline commit"),
    arg("-n", "--num", type=_positive, help="passed on to dvc exp show: the last N baseline commits"),
)
def cmd_exp_show(args) -> int:
    from reproduce.pipeline.experiments import dvc_exp_show_json, exp_table, render
    from reproduce.pipeline.stages import require_in_studies, study_file
    from reproduce.study import load_study

    study = load_study(args.study)
    require_in_studies(args.study, study)
    dvc_args = (
        (["-A"] if args.all_commits else [])
        + (["--rev", args.rev] if args.rev else [])
        + (["-n", str(args.num)] if args.num is not None else [])
    )
    header, rows, note = exp_table(
        dvc_exp_show_json(dvc_args),
        study_file=study_file(study),
        summary_file=f"results/{study.name}/summary.json",
        metric=args.metric,
        derived=args.derived,
    )
    print(render(header, rows, markdown=args.md) + f"\n{note}")
    return 0


@command(
    "run",
    "run a study's pending cells (local processes, SLURM, or a CPU smoke test)",
    STUDY,
    arg("--executor", choices=["debug", "local", "slurm"], default="local"),
    arg("--jobs", type=_positive, default=None, help="parallel cells (local) or concurrent jobs (slurm)"),
    arg("--slurm-partition"),
    arg("--gpus-per-task", type=_positive),
    arg("--time", help="SLURM time limit per cell, e.g. 04:00:00"),
    arg("--mem", help="SLURM memory per cell, e.g. 16G"),
    arg("--smoke", action="store_true", help="a few steps of every distinct configuration on stand-in data (CPU, CI)"),
    arg("--max-cells", type=_positive, default=None, help="smoke: stop after this many cells"),
    DATA_ROOT,
)
def cmd_run(args) -> int:
    from reproduce.study import load_study

    study = load_study(args.study)  # the whole study must be valid before anything runs
    if args.smoke:
        from reproduce.checks.smoke import run_smoke

        return run_smoke(study, data_root=Path(args.data_root), max_cells=args.max_cells)
    from reproduce.pipeline.run import run_study
    from reproduce.pipeline.stages import require_in_studies

    require_in_studies(args.study, study)
    _regenerate_pipelines()
    return run_study(
        study,
        study_path=Path(args.study),
        executor=args.executor,
        jobs=args.jobs,
        slurm={
            "partition": args.slurm_partition,
            "gpus_per_task": args.gpus_per_task,
            "time": args.time,
            "mem": args.mem,
        },
    )


@command(
    "verify",
    "per-sample gradients and the clipped DP update of every group and multiplicity against "
    "per-sample autograd, on the trainer's batches (exit 1 on any mismatch or refusal)",
    arg("studies", nargs="+"),
    arg("--groups", nargs="+", help="only these groups (default: every group with DP cells)"),
    arg(
        "--layouts",
        nargs="+",
        choices=["trainer", "channels_last", "strided"],
        default=["trainer", "channels_last", "strided"],
        help="input layouts to check",
    ),
    arg(
        "--paths",
        nargs="+",
        choices=["engine", "hooks"],
        default=["engine", "hooks"],
        help="per-sample gradient paths: the trainer's engine, opacus's hooks mode",
    ),
    arg("--batch-size", type=_positive, default=6, help="expected Poisson batch size of the checked step"),
    arg("--physical-batch-size", type=_positive, default=4, help="micro-batch bound (below the batch size)"),
    arg("--dtype", choices=["float32", "float64"], default="float32"),
    arg("--device", default="cpu"),
    arg("--per-layer", action="store_true", help="print every layer's error, not only the worst"),
)
def cmd_verify(args) -> int:
    import torch

    from reproduce.checks.gradients import format_report, verify_study
    from reproduce.study import load_study

    studies = [load_study(path) for path in args.studies]  # every study valid before anything runs
    ok = True
    for study in studies:
        report = verify_study(
            study,
            batch_size=args.batch_size,
            physical_batch_size=args.physical_batch_size,
            layouts=tuple(args.layouts),
            modes=tuple(args.paths),
            device=args.device,
            dtype={"float32": torch.float32, "float64": torch.float64}[args.dtype],
            groups=tuple(args.groups) if args.groups else None,
        )
        print(format_report(report, per_layer=args.per_layer), flush=True)
        ok &= report.ok
    return 0 if ok else 1


@command(
    "check",
    "compare a study's results with its committed baseline (tolerances from the study)",
    arg("study", nargs="?", default="studies/default.yaml"),
    arg("--update", action="store_true", help="rewrite the baseline deliberately and say what changed"),
    RESULTS,
)
def cmd_check(args) -> int:
    from reproduce.checks.baseline import check_study
    from reproduce.study import load_study

    study = load_study(args.study)
    outcome = check_study(
        study, results_dir=Path(args.results or f"results/{study.name}"), update=args.update, study_arg=args.study
    )
    if outcome.report:
        print(outcome.report)
    for line in (outcome.violation, outcome.error):
        if line:
            print(f"error: {line}", file=sys.stderr)
    return outcome.exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce",
        description="Reproducibility suite for DP equivariant deep learning. "
        "`dvc repro` runs the default study; these commands are its building blocks.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for c in COMMANDS:
        *parent, name = c.name.split()
        where = sub
        if parent:  # "exp show": one parser for exp, its subcommands under it
            if parent[0] not in groups:
                groups[parent[0]] = sub.add_parser(parent[0], help=GROUPS[parent[0]]).add_subparsers(
                    dest=f"{parent[0]}_command", required=True, metavar=f"{parent[0].upper()}_COMMAND"
                )
            where = groups[parent[0]]
        s = where.add_parser(name, help=c.help)
        for a in c.args:
            s.add_argument(*a.flags, **a.options)
        s.set_defaults(func=c.func)
    return p


def _quiet_known_warnings() -> None:
    """Silence warnings that are understood and harmless, so real ones stand out."""
    import warnings

    warnings.filterwarnings("ignore", message=".*py3nj.*")  # escnn: SO(3) only
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # opacus hooks, input without grad
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # RDP: bound stays valid
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")  # stated in the privacy statement


def _os_error(e: OSError) -> str:
    """One line: the file, the system's message and what to do (``reproduce.errors.file_error``)."""
    # whether the command was reading or writing is not known here: "use", and advice for either
    return str(file_error(e.filename, e, "use", elsewhere="write elsewhere (see the command's --help)"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_known_warnings()
    try:
        return args.func(args)
    except ReproduceError as e:  # StudyError too, with its own exit code
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except OSError as e:  # the file system said no (read-only, full, missing): the user's to fix, not a bug
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return ReproduceError.exit_code


if __name__ == "__main__":
    sys.exit(main())
