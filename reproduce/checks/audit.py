"""What an audited cell's lower bound says about its accountant's epsilon: consistent, or a violation.

The accountant's epsilon is an upper bound; the audit's is a lower bound on the same run. A lower
bound above the upper one is impossible for a correct implementation (up to the audit's 1 -
confidence), so it means the run broke its guarantee: a sample not clipped, noise not added, a
sample rate other than the accounted one. ``reproduce check`` fails on it; the report shows it.
Pure: reads ``CellResult`` objects, never files. Here, not in ``reproduce.audit``: that package is
below training (training writes its records), this module reads training's results.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from reproduce.records.audit import AuditRecord
from reproduce.records.result import CellResult

if TYPE_CHECKING:
    from reproduce.study import Study


def accountant_epsilon(result: CellResult) -> float | None:
    """The epsilon the run claims: its ``epsilon`` metric, else its privacy statement's; None if non-private."""
    epsilon = result.metric("epsilon")
    if epsilon is None and result.privacy.private:
        epsilon = result.privacy.epsilon_spent
    return epsilon


@dataclasses.dataclass(frozen=True)
class AuditVerdict:
    """One audited cell: its measured lower bound against the accountant's epsilon.

    ``epsilon`` is None for a non-private cell (no claim to contradict: the control).
    """

    cell: str
    epsilon: float | None
    record: AuditRecord

    @property
    def violated(self) -> bool:
        return self.record.violates(self.epsilon)

    def message(self) -> str:
        """The verdict in words (a violation says what it means)."""
        a = self.record
        bound = f"audit lower bound epsilon >= {a.epsilon_lower:.4g} ({a.kind} canaries, {a.confidence:g} confidence)"
        if self.epsilon is None:
            return f"{self.cell}: {bound}; non-private, no claim to check (the most m={a.canaries} can show: {a.epsilon_lower_max:.4g})"
        if self.violated:
            return (
                f"VIOLATION {self.cell}: {bound} exceeds the accountant's epsilon {self.epsilon:.4g}: the "
                "implementation breaks its privacy guarantee (a sample not clipped, noise not added, or a "
                "sample rate other than the accounted one); do not publish this epsilon"
            )
        return f"{self.cell}: {bound} <= accountant's epsilon {self.epsilon:.4g}: consistent"


def audit_verdicts(cells, results: dict[str, CellResult]) -> list[AuditVerdict]:
    """One verdict per cell id of ``cells`` (in their order) whose result has an audit record."""
    out = []
    for cell in cells:
        result = results.get(cell)
        if result is None or result.audit is None:
            continue
        out.append(AuditVerdict(cell=cell, epsilon=accountant_epsilon(result), record=result.audit))
    return out


__all__ = ["AuditVerdict", "accountant_epsilon", "audit_verdicts"]


def audit_check(study: Study, results: dict[str, CellResult]) -> list[AuditVerdict]:
    """The audited cells' verdicts (lower bound vs accountant's epsilon), in cell order."""
    return audit_verdicts([c.id for c in study.cells()], results)


def render_audit(study: Study, verdicts: list[AuditVerdict]) -> str:
    """The audit check in words: every violation first and loud, then the consistent cells, then a count."""
    bad = [v for v in verdicts if v.violated]
    lines = [
        f"Privacy audit ({len(verdicts)} of {len(study.cells())} audited cells have a result): "
        "each lower bound against the accountant's epsilon"
    ]
    if bad:
        lines.append(
            f"!!! {len(bad)} PRIVACY VIOLATION(S): the measured lower bound exceeds the accountant's "
            "epsilon, so the run did not do what its privacy proof assumes !!!"
        )
    lines += [f"  {v.message()}" for v in bad]
    lines += [f"  {v.message()}" for v in verdicts if not v.violated]
    lines.append(f"{len(verdicts) - len(bad)} consistent, {len(bad)} violated")
    return "\n".join(lines)


def violation_message(violated: list[str]) -> str | None:
    """The line for stderr when any audited cell violated its guarantee (None when none did)."""
    if not violated:
        return None
    return (
        f"PRIVACY VIOLATION in {len(violated)} audited cell(s) ({', '.join(violated)}): the measured epsilon "
        "lower bound exceeds the accountant's epsilon; the implementation breaks its guarantee"
    )
