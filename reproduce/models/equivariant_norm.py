"""DP-compatible equivariant group normalisation over whole feature fields.

Per-sample statistics only (no running statistics, so no cross-sample leakage under DP) and no
affine parameters (an affine scale per channel would break equivariance; per field it would be a
parameter outside the conv/linear layers whose per-sample gradients opacus computes).
"""

from __future__ import annotations

from itertools import islice

import numpy as np
import torch
from torch import nn


def num_norm_groups(num_fields: int, preferred: int = 8) -> int:
    """Largest divisor of ``num_fields`` not above ``preferred`` (8 as in the authors' config)."""
    return max(d for d in range(1, min(preferred, num_fields) + 1) if num_fields % d == 0)


def invariant_projector(rep) -> np.ndarray:
    """Projector onto the invariant (trivial-isotypic) subspace of an escnn representation.

    P = Q[:, t] Q^-1[t, :] with t the positions of the trivial irreps in the change of basis Q.
    P rho(g) = rho(g) P = P, so subtracting P-projected means keeps equivariance. For a regular
    representation P = 11^T/|G| (plain group norm); for irreps without a trivial part P = 0.
    """
    trivial = rep.group.trivial_representation.id
    cols, pos = [], 0
    for irrep_id in rep.irreps:
        size = rep.group.irrep(*irrep_id).size
        if irrep_id == trivial:
            cols.append(pos)
        pos += size
    q, q_inv = rep.change_of_basis, rep.change_of_basis_inv
    return q[:, cols] @ q_inv[cols, :]


class FieldGroupNorm(nn.Module):
    """Group norm whose groups are sets of whole fields, equivariant for orthogonal field types.

    Fields are split into ``num_groups`` groups (8, reduced to a divisor of the field count). Per
    sample and group, the mean of the invariant component is subtracted (over fields and pixels)
    and the result divided by its root mean square. The squared norm is invariant because escnn's
    representations are orthogonal (checked at construction). Also used as ScaleNorm.

    Args:
        field_type: escnn FieldType whose fields all share one representation.
        num_groups: preferred number of groups.
        eps: added to the variance.
    """

    def __init__(self, field_type, num_groups: int = 8, eps: float = 1e-5):
        super().__init__()
        reps = field_type.representations
        rep = reps[0]
        if any(r.name != rep.name for r in reps):
            raise ValueError("FieldGroupNorm needs fields of a single representation")
        for g in islice(rep.group.testing_elements(), 8):
            m = rep(g)
            if not np.allclose(m @ m.T, np.eye(rep.size), atol=1e-6):
                raise ValueError(f"representation {rep.name} is not orthogonal")
        self.num_fields, self.field_size = len(reps), rep.size
        self.num_groups = num_norm_groups(self.num_fields, num_groups)
        self.eps = eps
        proj = torch.tensor(invariant_projector(rep), dtype=torch.get_default_dtype())
        # Non-persistent: derived from the architecture, so checkpoints hold learned state only.
        self.register_buffer("projector", proj, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = x.reshape(b, self.num_groups, self.num_fields // self.num_groups, self.field_size, h, w)
        # mean(P x) = P mean(x): average first, project the d-vector after.
        mean = torch.einsum("ij,bgj->bgi", self.projector, y.mean(dim=(2, 4, 5)))
        y = y - mean[:, :, None, :, None, None]
        var = y.pow(2).mean(dim=(2, 3, 4, 5), keepdim=True)
        return (y * torch.rsqrt(var + self.eps)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}x{self.field_size}, groups={self.num_groups}, eps={self.eps}"
