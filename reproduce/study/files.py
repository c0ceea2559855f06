"""Where a study's files live, relative to the repository root: its YAML and its generated pipeline.

The one place these conventions are spelt: the pipeline generator writes there, and every message that
tells a user which file to run or edit (the trainer, the result reader, ``reproduce check``) reads them.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_STUDY = "default"
STUDIES_DIR = Path("studies")


def pipeline_path(study) -> Path:
    """``dvc.yaml`` for the default study, ``pipelines/<name>/dvc.yaml`` for every other."""
    return Path("dvc.yaml") if study.name == DEFAULT_STUDY else Path("pipelines") / study.name / "dvc.yaml"


def study_file(study) -> str:
    """The study file every stage of its pipeline reads, relative to the repository root."""
    return (STUDIES_DIR / f"{study.name}.yaml").as_posix()
