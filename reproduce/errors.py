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


def file_error(path: Path | str, error: OSError, doing: str, *, elsewhere: str) -> ReproduceError:
    """The ReproduceError for ``error`` while ``doing`` ("read", "write", ...) ``path``: what, where, and what
    to do (``elsewhere``: how to point the command at another place, e.g. "`reproduce fetch --root`")."""
    path = Path(path)
    if error.errno in _DISK_FULL:
        advice = f"Free space on the disk that holds {path.parent}, or {elsewhere}, and rerun."
    elif error.errno in _NOT_ALLOWED:
        target = path if doing == "read" else path.parent
        advice = f"Make {target} {'readable' if doing == 'read' else 'writable'} for you, or {elsewhere}."
    elif error.errno == errno.ENOENT:
        advice = "Check the path."
    else:
        advice = "Check that path and its disk, then rerun."
    return ReproduceError(f"Could not {doing} {path}: {error.strerror or error}. {advice}")
