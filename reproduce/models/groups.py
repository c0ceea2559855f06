"""Symmetry-group strings ("C4", "D8", "O2", "SO2") and the escnn objects they stand for.

Also owns the two sources of hidden state in escnn basis construction (numpy's global RNG and a
joblib disk cache inside site-packages), so that building a model is a pure function of its config.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Seed of numpy's global RNG while escnn builds bases. A constant, not the training seed: the
#: basis is part of the architecture, and must not change when only the initialisation seed does.
BASIS_SEED = 0

#: Band limit / frequency of the continuous groups: the MedMNIST paper's O(2) model uses induced
#: irreps of frequency 1; the authors' SO(2) code takes it from the same config value.
CONTINUOUS_FREQUENCY = 1

#: Environment variable naming escnn's disk cache directory ("off": no disk cache).
CACHE_ENV = "REPRODUCE_ESCNN_CACHE"
_CACHE_CONFIGURED = False

_ALLOWED = '"C<N>" or "D<N>" with N >= 1 (e.g. "C4", "D8"), "O2" or "SO2"'
_PATTERN = re.compile(r"^(C|D)([1-9][0-9]*)$|^(O2|SO2)$")

#: The trivial group: the conventional CNN, which has no escnn group.
TRIVIAL_GROUP = "e"
#: Every group a study may name: the trivial one or a parseable group (the study schema's grammar).
GROUP_PATTERN = re.compile(rf"^{TRIVIAL_GROUP}$|{_PATTERN.pattern}")
GROUP_HELP = f"{TRIVIAL_GROUP} (conventional CNN), C<N> or D<N> with N >= 1, O2, SO2"


@dataclass(frozen=True)
class GroupSpec:
    """A parsed group string.

    Attributes:
        kind: "C" (rotations), "D" (rotations and flips), "O2" or "SO2".
        n: number of rotations N for C_N / D_N; None for the continuous groups.
    """

    kind: str
    n: int | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}{self.n}" if self.n is not None else self.kind

    @property
    def finite(self) -> bool:
        return self.n is not None

    @property
    def order(self) -> int | None:
        """|G| for finite groups (C_N: N, D_N: 2N), None for O(2)/SO(2)."""
        if self.n is None:
            return None
        return self.n if self.kind == "C" else 2 * self.n

    def halved(self) -> tuple[object, GroupSpec]:
        """escnn subgroup id and spec of the half group (C_N -> C_{N/2}, D_N -> D_{N/2}).

        Raises:
            ValueError: for continuous groups, N = 1 or odd N (no half-rotation subgroup;
                the authors' code refuses these too, rather than silently choosing another subgroup).
        """
        if self.n is None or self.n % 2:
            raise ValueError(f'restrict="halved" needs C_N or D_N with even N, got {self.name}')
        half = self.n // 2
        # Dihedral ids are (flip axis, rotation order); axis 0 keeps the flip of D_N itself.
        return (half if self.kind == "C" else (0, half)), GroupSpec(self.kind, half)


def parse_group(group: str) -> GroupSpec:
    """Parses a group string.

    Args:
        group: "C<N>", "D<N>" (N >= 1), "O2" or "SO2".

    Returns:
        The parsed GroupSpec.

    Raises:
        ValueError: for any other string (the message lists the allowed forms).
    """
    m = _PATTERN.match(group) if isinstance(group, str) else None
    if m is None:
        raise ValueError(f"unknown symmetry group {group!r}; allowed: {_ALLOWED}")
    if m.group(3):
        return GroupSpec(m.group(3))
    return GroupSpec(m.group(1), int(m.group(2)))


def is_group(group: str) -> bool:
    """Whether a study may name ``group``: ``TRIVIAL_GROUP`` or a string ``parse_group`` accepts."""
    return isinstance(group, str) and GROUP_PATTERN.match(group) is not None


def halvable(group: str) -> bool:
    """Whether ``restrict="halved"`` applies to ``group`` (``GroupSpec.halved``: C_N or D_N with even N)."""
    if group == TRIVIAL_GROUP or not is_group(group):
        return False
    spec = parse_group(group)
    return spec.finite and spec.n % 2 == 0


def make_gspace(spec: GroupSpec):
    """The escnn 2D gspace of a group spec."""
    from escnn import gspaces

    if spec.kind == "C":
        return gspaces.rot2dOnR2(N=spec.n)
    if spec.kind == "D":
        return gspaces.flipRot2dOnR2(N=spec.n)
    return gspaces.rot2dOnR2(N=-1) if spec.kind == "SO2" else gspaces.flipRot2dOnR2(N=-1)


def scaled_fields(width: int, spec: GroupSpec, *, order: int | None = None) -> int:
    """Field count of the authors' ``fix_params``: keeps parameter counts comparable across groups.

    fields = int(width * sqrt(|G| * 1.5) / |G|) for finite groups, int(width * sqrt(1.5) / L^2)
    for O(2)/SO(2) with L the frequency; at least 1 (with a warning, as in the authors' code).

    Args:
        width: the layout's width.
        spec: the group.
        order: overrides |G| (the authors use |G|/2 for the third width after a "halved" restriction).
    """
    if spec.finite:
        g = spec.order if order is None else order
        fields = int(width * math.sqrt(g * 1.5) / g)
    else:
        fields = int(width * math.sqrt(1.5) / CONTINUOUS_FREQUENCY**2)
    if fields < 1:
        warnings.warn(f"fix_params: width {width} gives no field for {spec.name}; using 1", stacklevel=2)
        fields = 1
    return fields


def escnn_cache_dir() -> str | None:
    """Where escnn's memoised group-theory solutions live; None disables the disk cache.

    ``$REPRODUCE_ESCNN_CACHE`` if set ("off" or empty: no cache), else
    ``~/.cache/reproduce/escnn-<version>-seed<BASIS_SEED>``. Never escnn's own cache inside
    site-packages: its entries were computed under unknown RNG states.
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none", "0") else value
    import escnn

    return str(Path.home() / ".cache" / "reproduce" / f"escnn-{escnn.__version__}-seed{BASIS_SEED}")


def _seeded(func):
    """``func`` run under numpy's global RNG seeded with BASIS_SEED, caller's state restored."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        state = np.random.get_state()
        np.random.seed(BASIS_SEED)
        try:
            return func(*args, **kwargs)
        finally:
            np.random.set_state(state)

    return wrapper


def _configure_escnn_cache() -> None:
    # escnn memoises irrep restrictions and numerical Clebsch-Gordan coefficients (O(2), used by
    # every D_N basis) with joblib in site-packages/escnn/group/_cache. Those solvers draw from
    # numpy's global RNG (the sign/basis of a solution depends on it), so a cached entry depends on
    # whichever process computed it first. Each memoised function is made a pure function of its
    # arguments (seeded per call) and re-memoised in escnn_cache_dir(): cold or warm, in any call
    # order, the same bases come out (up to LAPACK differences between machines).
    global _CACHE_CONFIGURED
    if _CACHE_CONFIGURED:
        return
    import importlib

    from joblib import Memory

    memory = Memory(escnn_cache_dir(), verbose=0)
    for name in ("irrep", "_clebsh_gordan", "groups._numerical_thomson"):
        module = importlib.import_module(f"escnn.group.{name}")
        for attr, value in list(vars(module).items()):
            if type(value).__name__ == "MemorizedFunc":
                setattr(module, attr, memory.cache(_seeded(value.func)))
    _CACHE_CONFIGURED = True


@contextlib.contextmanager
def deterministic_escnn():
    """Context in which escnn basis construction is reproducible; restores numpy's RNG afterwards.

    escnn's D_N / O(2) bases draw from numpy's global RNG (numerical Clebsch-Gordan solvers,
    sklearn's randomized_svd), so the global RNG is seeded with ``BASIS_SEED`` inside, and escnn's
    disk-memoised solvers are redirected to ``escnn_cache_dir()`` and seeded per call. escnn also
    memoises groups and representations in memory, per process: bit-identity is guaranteed between
    fresh processes that build the same models in the same order.
    """
    _configure_escnn_cache()
    state = np.random.get_state()
    np.random.seed(BASIS_SEED)
    try:
        yield
    finally:
        np.random.set_state(state)
