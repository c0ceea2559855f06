"""A trained cell's weights on disk: saved once by the train stage, verified whenever loaded.

The file (``model.pt``, a DVC-cached output of the train stage) holds the state dict of the weights
the cell's metrics describe (the EMA weights where the study uses EMA). Its checksum is taken over
the tensors themselves - name, dtype, shape and bytes, in name order - not over the file, so it
names the weights whatever container torch writes; the file's bytes are deterministic too (written
from memory, so the archive name inside does not depend on the temp file's name), which keeps the
DVC hash of an identical rerun unchanged.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from torch import nn

from reproduce.atomic import write_bytes_atomic
from reproduce.errors import ReproduceError

FORMAT = 1
#: The file name in a cell's result directory (a train-stage output).
WEIGHTS_FILE = "model.pt"


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict, detached, contiguous and on the CPU (what is saved and hashed)."""
    # a copy: on the CPU .to() would alias the live parameters, which training may go on changing
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(state: dict[str, torch.Tensor], path: Path | str) -> str:
    """Write ``state`` atomically to ``path``; returns its ``weights_checksum``."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "state_dict": state}, buffer)
    write_bytes_atomic(path, buffer.getvalue())
    return weights_checksum(state)


#: What to do about a missing or unreadable weights file when the caller knows no better.
RESTORE = "`dvc pull` it, or rerun the cell's train stage (`dvc repro` it)"


def load_weights(model: nn.Module, path: Path | str, *, sha256: str, restore: str = RESTORE) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (built exactly as the cell's) after checking them.

    Raises ReproduceError when the file is missing or unreadable, was written for another model
    (names or shapes differ), or holds weights whose checksum is not ``sha256``; ``restore`` says
    how to get the file back (the cell's own commands, where the caller knows the cell).
    """
    path = Path(path)
    if not path.exists():
        raise ReproduceError(f"{path}: no kept weights; {restore}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state = saved["state_dict"]
    except Exception as e:  # a truncated or foreign file: say which, not how torch failed
        why = str(e).split(". ")[0][:120]
        raise ReproduceError(
            f"{path}: not a readable kept-weights file, truncated or corrupted ({type(e).__name__}: {why}); {restore}"
        ) from None
    actual = weights_checksum(state)
    if actual != sha256:
        raise ReproduceError(
            f"{path}: weights checksum {actual[:12]} is not the {sha256[:12]} its result.json "
            "records; the file was changed or belongs to another run: `dvc checkout` it"
        )
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        raise ReproduceError(
            f"{path}: weights do not fit the cell's model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}, other shapes {wrong[:3]}): the study's model settings changed since training"
        )
    model.load_state_dict(state)
    return model
