"""How the conventional ResNet-9 splits a layer's channels into GroupNorm groups (no torch here:
the study schema reads the same rule to refuse widths the model cannot build)."""

from __future__ import annotations

#: GroupNorm groups of a conventional layer with at least this many channels (Klause et al.'s 32)
GROUP_NORM_GROUPS = 32


def group_norm_groups(channels: int) -> int:
    """The number of GroupNorm groups of a conventional layer of ``channels`` channels."""
    return min(GROUP_NORM_GROUPS, channels)


def unsplittable_widths(widths) -> list[int]:
    """The widths whose channels cannot be split into ``group_norm_groups`` equal groups."""
    return [w for w in widths if w % group_norm_groups(w)]


RULE = (
    f"the conventional ResNet-9 (group e) normalises w channels in min({GROUP_NORM_GROUPS}, w) GroupNorm "
    f"groups, so each width must be at most {GROUP_NORM_GROUPS} or a multiple of {GROUP_NORM_GROUPS}"
)
