"""The one exception type the suite raises for problems a user can fix, and how a file system error becomes one."""

from __future__ import annotations

import errno
from pathlib import Path


class ReproduceError(Exception):
    """A problem with the user's input or environment; the CLI prints it without a traceback."""

    exit_code = 1


class StudyError(ReproduceError):
    """An invalid study file; exit code 2 as the issue tracker specifies."""

    exit_code = 2


# File system errors a user meets, grouped by what to do about them.
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def file_error(path: Path | str | None, error: OSError, doing: str, *, elsewhere: str) -> ReproduceError:
    """The ReproduceError for ``error`` while ``doing`` ("read", "write", "create the directory", or "use" when
    it is not known which) ``path``: what, where, and what to do (``elsewhere``: how to point the command at
    another place, e.g. "use another data directory (`reproduce fetch --root`)")."""
    what = f"Could not {doing} {path}" if path else "A file operation failed"
    return ReproduceError(f"{what}: {error.strerror or error}. {_advice(path, error, doing, elsewhere)}")


def _advice(path: Path | str | None, error: OSError, doing: str, elsewhere: str) -> str:
    path = Path(path) if path else None
    if error.errno in _DISK_FULL:
        disk = f"the disk that holds {path.parent}" if path else "the disk"
        return f"Free space on {disk}, or {elsewhere}, and rerun."
    if error.errno in _NOT_ALLOWED:
        if path is None or doing == "use":
            return f"Check the permissions{f' of {path}' if path else ''}, or {elsewhere}."
        target = path if doing == "read" else path.parent
        return f"Make {target} {'readable' if doing == 'read' else 'writable'} for you, or {elsewhere}."
    if error.errno == errno.ENOENT:
        return "Check the path."
    return "Check that path and its disk, then rerun."
