"""Parameter counts of the ResNet-9 family per symmetry group, next to the papers' statements.

Usage: python bench/params_table.py [--widths 8 16 32] [--wide 64 128 256] [--num-classes 9]

Prints a markdown table: for each group the field layouts (plain, and with the authors'
``fix_params`` scaling) and the parameter counts plain, with fix_params, and with fix_params plus
the "halved" restriction, first with the authors' R2Conv basis (cutoff 3r, the default) and then
with escnn's default basis (``basis="escnn"``; only C_N / D_N differ). Nothing is tuned to match:
the last column only names the statement a row is compared with (MedMNIST paper,
``shared/papers/bridging_the_gap.yaml``).
"""

from __future__ import annotations

import argparse
import warnings

import torch

warnings.filterwarnings("ignore", message=".*py3nj.*")

from reproduce.models.equivariant import BASES, build_equivariant_resnet9, field_counts  # noqa: E402
from reproduce.models.groups import parse_group  # noqa: E402

GROUPS = ["e", "C1", "C4", "C8", "C16", "D4", "O2", "SO2"]
# (group, layout) -> statement of the MedMNIST paper (parameters: in bridging_the_gap.yaml).
STATEMENTS = {
    ("C16", "small"): "C16 8-16-32: about 90k",
    ("O2", "small"): "O(2) 8-16-32: about 240k",
    ("C4", "small"): "C4 DP best: about 35k (layout not stated)",
    ("e", "wide"): "conventional wide: 2.5M",
    ("C4", "wide"): "C4 wide: 2.3M",
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conventional(widths, in_channels, num_classes) -> int | None:
    try:
        from reproduce.models.resnet9 import ResNet9
    except ImportError:
        return None
    return count(ResNet9(widths=tuple(widths), in_channels=in_channels, num_classes=num_classes))


def equivariant(group, widths, in_channels, num_classes, **kwargs) -> int:
    torch.manual_seed(0)
    return count(
        build_equivariant_resnet9(
            group=group, widths=tuple(widths), in_channels=in_channels, num_classes=num_classes, **kwargs
        )
    )


def rows(group: str, widths, layout: str, in_channels: int, num_classes: int):
    """Cells of one table row; '-' where a setting does not apply."""
    label = f"{group} {'-'.join(map(str, widths))}"
    if group == "e":
        n = conventional(widths, in_channels, num_classes)
        if n is None:
            return None
        return [label, "-".join(map(str, widths)), "-", f"{n:,}", *["-"] * 5, STATEMENTS.get((group, layout), "")]
    spec = parse_group(group)
    cells = [
        label,
        "-".join(map(str, field_counts(spec, widths))),
        "-".join(map(str, field_counts(spec, widths, fix_params=True))),
    ]
    settings = [{}, {"fix_params": True}]
    if spec.finite and spec.n % 2 == 0:
        settings.append({"fix_params": True, "restrict": "halved"})
    # Only C_N / D_N depend on the basis setting: the continuous groups reuse their counts.
    for basis in BASES if spec.finite else ["authors"]:
        counts = [f"{equivariant(group, widths, in_channels, num_classes, basis=basis, **kw):,}" for kw in settings]
        cells += counts + ["-"] * (3 - len(counts))
    if not spec.finite:
        cells += cells[-3:]
    return [*cells, STATEMENTS.get((group, layout), "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs=3, default=[8, 16, 32])
    parser.add_argument(
        "--wide", type=int, nargs=3, default=[64, 128, 256], help="layout of the wide rows (conventional and C4 only)"
    )
    parser.add_argument("--num-classes", type=int, default=9, help="9: pathmnist")
    parser.add_argument("--in-channels", type=int, default=3)
    args = parser.parse_args()

    header = [
        "model",
        "fields",
        "fields (fix)",
        "params",
        "params (fix)",
        "params (fix, halved)",
        "escnn basis: params",
        "params (fix)",
        "params (fix, halved)",
        "paper statement",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    plan = [(g, args.widths, "small") for g in GROUPS] + [(g, args.wide, "wide") for g in ("e", "C4")]
    for group, widths, layout in plan:
        cells = rows(group, widths, layout, args.in_channels, args.num_classes)
        if cells is None:
            print(f"| {group} | (reproduce.models.resnet9 not available: skipped) |")
            continue
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
