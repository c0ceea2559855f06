"""The schema reference: docs/schema.md is exactly what the models render, and the rendering says what
a study author needs (Literal choices, constraints, defaults, descriptions, every section)."""

from __future__ import annotations

import difflib
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from reproduce.study import Study
from reproduce.study.reference import REGENERATE, collect_sections, render_model, schema_reference
from tests.conftest import REPO

SCHEMA_PAGE = REPO / "docs" / "schema.md"


def test_committed_reference_is_current():
    committed = SCHEMA_PAGE.read_text(encoding="utf-8") if SCHEMA_PAGE.exists() else ""
    rendered = schema_reference()
    if committed != rendered:
        diff = difflib.unified_diff(
            committed.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            "docs/schema.md (committed)",
            "rendered from the schema",
        )
        diff = "".join(list(diff)[:60])
        raise AssertionError(f"docs/schema.md is stale; regenerate it with\n\n    {REGENERATE}\n\n{diff}")


def test_every_section_and_field_of_the_study_is_listed():
    page = schema_reference()
    sections = collect_sections(Study)
    assert sections[0].model is Study and sections[0].title == "Top level"
    for section in sections:
        body = page.split(f"\n## {section.title}\n", 1)[1].split("\n## ", 1)[0]
        for name in section.model.model_fields:
            assert f"- **`{name}`**" in body, (section.title, name)
    # A model used at two paths is one section naming both.
    assert "## `training.optimizer`, `training.dp_optimizer`" in page


class _Inner(BaseModel):
    """The inner section."""

    model_config = ConfigDict(extra="forbid")
    rule: Literal["flat", "adaptive"] = "flat"
    quantile: float = Field(0.5, ge=0, lt=1, description="share left unclipped")


def _known_name(name: str) -> str:
    """One of the registered names."""
    return name


class _Outer(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[a-z]+$")
    tags: list[str] = Field(["a"], min_length=1)
    inner: _Inner = _Inner()
    spare: _Inner | None = None
    by_key: dict[str, _Inner] = {}
    kind: Annotated[str, AfterValidator(_known_name)] = "x"


def test_rendering_lists_choices_constraints_defaults_and_descriptions():
    page = render_model(_Outer)
    assert "- **`name`** `str`, pattern `^[a-z]+$`, required" in page
    assert '- **`tags`** `list[str]`, min length 1, default `["a"]`' in page
    assert '- **`rule`** `"flat" | "adaptive"`, default `"flat"`' in page
    assert "- **`quantile`** `float`, >= 0, < 1, default `0.5` \\\n  share left unclipped" in page
    # Nested models are sections linked from their fields, at every path they appear.
    assert "## `inner`, `spare`, `by_key.*`\n\nThe inner section." in page
    assert "- **`spare`** section [`inner`, `spare`, `by_key.*`](#inner-spare-by_key) or `null`, default `null`" in page
    assert "- **`by_key`** mapping of `str` to section" in page
    assert "Keys besides the fields below are accepted" in page
    # A validator is said in words (its docstring), never as a repr with a memory address.
    assert '- **`kind`** `str`, checked: One of the registered names, default `"x"`' in page
    assert " at 0x" not in page and " at 0x" not in schema_reference()
