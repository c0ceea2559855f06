"""Atomic, self-verifying training checkpoints (resume after SIGKILL, detect corruption).

File layout: 8-byte magic, 64 hex chars of SHA-256 of the payload, then the ``torch.save`` payload.
A truncated or corrupted file fails the checksum and is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import torch

from reproduce.atomic import write_bytes_atomic

MAGIC = b"RPRDCKP1"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically (temp file, fsync, rename), prefixed by the payload's checksum."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    write_bytes_atomic(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload)


def load_checkpoint(path: Path, *, expect_key: str) -> dict | None:
    """The checkpoint's state, or None (with a warning) if absent, corrupt or for another configuration."""
    if not path.exists():
        return None
    raw = path.read_bytes()
    header, digest, payload = raw[:8], raw[8:72], raw[72:]
    if header != MAGIC or hashlib.sha256(payload).hexdigest().encode() != digest:
        warnings.warn(f"checkpoint {path} is corrupt or truncated; restarting the cell from scratch", stacklevel=2)
        path.unlink()
        return None
    state = torch.load(io.BytesIO(payload), weights_only=False)
    if state.get("key") != expect_key:
        warnings.warn(f"checkpoint {path} belongs to another configuration; restarting the cell", stacklevel=2)
        path.unlink()
        return None
    return state
