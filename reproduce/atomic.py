"""Crash-safe file writing: temp file in the target directory, fsync, rename, fsync the directory.

A process killed at any point leaves either the old file or the new one, never half of one. Used for
results, reports, checkpoints and datasets alike (no heavy imports here). ``read_json`` is the
matching reader: a truncated or corrupt file is named, with what to do, instead of a traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path | str, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temp file next to ``path``, then atomically put it in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and data are meant to be shared
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise
    fsync_dir(path.parent)
    return path


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` about the file being written, not the hidden temp file (a disk-full write names none)."""
    return type(error)(error.errno, error.strerror, str(path)) if error.errno else error


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    return write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, obj, *, default=None) -> Path:
    """Pretty, key-sorted JSON; NaN/inf are refused (they are not JSON)."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=default) + "\n"
    return write_text_atomic(path, text)


def read_json(path: Path | str, *, what: str, remedy: str):
    """The JSON document in ``path`` (UTF-8); ReproduceError naming the file, ``what`` it holds and
    ``remedy`` (what to do) when it is truncated, corrupt or not UTF-8."""
    from reproduce.errors import ReproduceError

    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except ValueError as e:  # json's JSONDecodeError and UnicodeDecodeError both are
        raise ReproduceError(f"{path}: corrupt {what} ({e}); {remedy}") from None


def decode_utf8(raw: bytes, path: Path | str, *, error: type[Exception] | None = None) -> str:
    """``raw`` (the bytes of ``path``) as UTF-8, never the locale's encoding, so every machine reads the
    same file; ``error`` (default ReproduceError) names the line and offset of the first byte that is not."""
    from reproduce.errors import ReproduceError

    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise (error or ReproduceError)(
            f"{path}:{line}: byte 0x{raw[e.start]:02x} at offset {e.start} is not UTF-8; save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`, or your editor's encoding setting)"
        ) from None
