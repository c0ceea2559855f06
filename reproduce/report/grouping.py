"""Cells of a study pooled over seeds: one group per dataset, group, epsilon, multiplicity and dotted axes."""

from __future__ import annotations

from reproduce.study import NON_PRIVATE, Cell, Study, id_token


def seed_groups(study: Study, available) -> list[tuple[tuple, list[Cell]]]:
    """``[(key, cells)]`` in grid order for the cells whose id is in ``available``.

    ``key`` = (dataset, group, epsilon, multiplicity, axes) with ``axes`` the cell's dotted-axis
    values (``Cell.axes``); the cells of one key differ only in their seed.
    """
    out: dict[tuple, list[Cell]] = {}
    for c in study.cells():
        if c.id in available:
            out.setdefault((c.dataset, c.group, c.epsilon, c.multiplicity, c.axes), []).append(c)
    return list(out.items())


def axes_label(axes) -> str:
    """``path=value, ...`` of a key's dotted axes ("" without any)."""
    return ", ".join(f"{path}={id_token(v)}" for path, v in axes)


def axes_path(axes) -> str:
    """``path=value/`` segments for summary.json keys ("" without axes)."""
    return "".join(f"{path}={id_token(v)}/" for path, v in axes)


def setting_label(epsilon, multiplicity: int, axes=()) -> str:
    """``non-DP, no aug`` / ``DP eps=8, aug x4``, then the dotted axes' values when there are any."""
    aug = "no aug" if multiplicity == 1 else f"aug x{multiplicity}"
    label = f"non-DP, {aug}" if epsilon == NON_PRIVATE else f"DP eps={epsilon}, {aug}"
    return label + (f", {axes_label(axes)}" if axes else "")
