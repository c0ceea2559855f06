"""Atomic, self-verifying training checkpoints (resume after SIGKILL, detect corruption).

File layout: 8-byte magic, 64 hex chars of SHA-256 of the payload, then the ``torch.save`` payload.
A truncated or corrupted file fails the checksum and is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import torch

MAGIC = b"RPRDCKP1"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
