"""Problems located in the study file: where a validation error points, as a YAML path.

Shared by the grid's axis checks (``reproduce.study.grid``) and the loader (``reproduce.study.load``),
which turns each location into file, line and field.
"""

from __future__ import annotations


class _Located(ValueError):
    """A study-level problem that belongs to one field: ``loc`` is its path, as in a pydantic error."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc


def _describe(err: dict) -> tuple[tuple, str]:
    # Drop pydantic's union/literal branch labels from the path: users think in YAML keys.
    loc = tuple(
        p
        for p in err["loc"]
        if not (
            isinstance(p, str)
            and (
                p.startswith(("literal[", "function-"))
                or p
                in {
                    "float",
                    "int",
                    "str",
                    "bool",
                    "tuple[int, int, int]",
                    "dict[str,tuple[int,int,int]]",
                    "dict[str,tuple[int, int, int]]",
                }
            )
        )
    )
    if err["type"] == "extra_forbidden":
        return loc, "unknown key (not part of the study schema)"
    msg = err["msg"].removeprefix("Value error, ")
    located = err.get("ctx", {}).get("error")
    if isinstance(located, _Located):  # raised by Study for one field: point at it, not at line 1
        loc = (*loc, *located.loc)
    if err["type"] in ("literal_error",) and "expected" in err.get("ctx", {}):
        msg = f"got {err['input']!r}; allowed: {err['ctx']['expected']}"
    return loc, msg
