"""Verified downloads and local copies into the data directory (urllib only).

``fetch`` writes into ``<dest>.part`` next to the destination, checks the checksum, then fsyncs and
renames the file into place (``os.replace``), so a file under its final name has always been verified.

What is left behind when something goes wrong (the rule the tests check):

* HTTP error status (404, 500, ...), checksum mismatch, a local file that does not match: nothing
  new. No ``<dest>.part`` is left, and ``<dest>`` is as it was (absent, or the file that was there).
* A transfer that broke off (fewer bytes than Content-Length, connection reset or timed out mid-body):
  the bytes received so far stay in ``<dest>.part`` and the error says so; the next call sends an HTTP
  ``Range`` request and resumes after them (it starts over if the server ignores ``Range``). Resumed
  bytes are still checked: a wrong prefix ends in a checksum mismatch, which deletes the ``.part``.
* No connection at all (refused, DNS, timeout before a response): no ``.part`` is created; one left by
  an earlier broken transfer is kept for the next attempt.
* The data directory cannot be written (read-only, disk full): the ``.part`` is deleted, which frees
  its space, and ``<dest>`` is as it was; the error names the file and what to do.

An existing ``<dest>`` is verified first and returned without network access if it matches. One that
does not match stays where it is until a verified file replaces it (one rename): a study stating
another checksum must not cost the copy that is there. Two processes fetching the same file at the
same time are not coordinated: run one fetch per file (the DVC fetch stage does).

Every ``OSError`` of the data directory becomes a ``ReproduceError`` naming the file (``file_error``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from tqdm import tqdm

from reproduce.atomic import fsync_dir, write_atomic
from reproduce import errors
from reproduce.errors import ReproduceError

CHUNK = 1 << 20
USER_AGENT = "reproduce/0.1 (python urllib)"
DEFAULT_HINT = ("Check the URL or mirror, or obtain the file by other means and pass it as a local file "
                "together with its sha256.")
_HEX_LENGTH = {"md5": 32, "sha256": 64}


def local_file_hint(dataset: str) -> str:
    """What to do when a study's local file does not have the checksum the study states for it."""
    return (f"If the local file is the one you mean, put its sha256 into the study's "
            f"data.local_files.{dataset}.sha256; otherwise point data.local_files.{dataset}.path at the right file.")


def file_error(path: Path | str, error: OSError, doing: str) -> ReproduceError:
    """The ReproduceError for ``error`` while ``doing`` ("read", "write", ...) ``path`` of the data directory."""
    return errors.file_error(path, error, doing, elsewhere="use another data directory "
                             "(`reproduce fetch --root`, `reproduce train --data-root`)")


# ----------------------------------------------------------------------------------------- checksums

def hash_file(path: Path | str, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of one file for several algorithms, reading it once; ReproduceError if unreadable."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    _hash_into(hashers, path)
    return {name: h.hexdigest() for name, h in hashers.items()}


def _hash_into(hashers: dict, path: Path | str, copy_to: IO[bytes] | None = None) -> None:
    """Feed the bytes of ``path`` to ``hashers`` (and write them to ``copy_to``); ReproduceError if unreadable.

    OSErrors of ``copy_to`` propagate: the caller knows which file that is.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise file_error(path, e, "read") from e
    with f:
        while chunk := _read_chunk(f, path):
            if copy_to is not None:
                copy_to.write(chunk)
            for h in hashers.values():
                h.update(chunk)


def _read_chunk(f: IO[bytes], path: Path | str) -> bytes:
    try:
        return f.read(CHUNK)
    except OSError as e:
        raise file_error(path, e, "read") from e


def sha256_file(path: Path | str) -> str:
    return hash_file(path, ("sha256",))["sha256"]


def md5_file(path: Path | str) -> str:
    return hash_file(path, ("md5",))["md5"]


def _expected(md5: str | None, sha256: str | None) -> dict[str, str]:
    """The checksums a file must have; at least one is required (this module only does verified copies)."""
    expected = {name: value.strip().lower() for name, value in (("md5", md5), ("sha256", sha256))
                if value is not None}
    if not expected:
        raise ValueError("a verified download needs md5= or sha256=")
    for name, value in expected.items():
        if len(value) != _HEX_LENGTH[name] or any(c not in "0123456789abcdef" for c in value):
            raise ReproduceError(f"{name} checksum {value!r} is not {_HEX_LENGTH[name]} hexadecimal digits")
    return expected


def _mismatch(expected: dict[str, str], actual: dict[str, str]) -> str | None:
    """A description of the first differing checksum, or None when all match."""
    for name, value in expected.items():
        if actual[name] != value:
            return f"{name} is {actual[name]}, expected {value}"
    return None


def _new_hashers(expected: dict[str, str]) -> dict:
    return {name: hashlib.new(name) for name in expected}


def _digests(hashers: dict) -> dict[str, str]:
    return {name: h.hexdigest() for name, h in hashers.items()}


# --------------------------------------------------------------------------------------------- URLs

def url_filename(url: str) -> str:
    """The last path segment of a URL, without query: ``.../bloodmnist.npz?download=1`` -> ``bloodmnist.npz``."""
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    if not name:
        raise ValueError(f"URL {url!r} does not end in a file name")
    return name


def mirror_url(url: str, mirror: str | None) -> str:
    """``<mirror>/<filename>``: the mirror base replaces scheme, host, path prefix and query of ``url``."""
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + url_filename(url)


# ------------------------------------------------------------------------------------ file plumbing

def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise file_error(directory, e, "create the directory") from e


def _install(part: Path, dest: Path) -> Path:
    try:
        os.replace(part, dest)
    except OSError as e:
        _remove(part)
        raise file_error(dest, e, "write") from e
    fsync_dir(dest.parent)
    return dest


def _existing(dest: Path, expected: dict[str, str]) -> tuple[bool, str]:
    """(whether ``dest`` is already the expected file, the errors' note on a mismatching one).

    Never deletes: a mismatching ``dest`` is replaced only by a verified file.
    """
    if not dest.exists():
        return False, ""
    actual = hash_file(dest, tuple(expected))
    if _mismatch(expected, actual) is None:
        return True, ""
    has = ", ".join(f"{name} {value}" for name, value in actual.items())
    return False, f"The file already at {dest} ({has}) was left as it is. "


def _progress(total: int | None, initial: int, what: str) -> tqdm:
    # disable=None: tqdm switches itself off when stderr is not a terminal (logs, CI, pytest)
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=what, disable=None, leave=False)


# ------------------------------------------------------------------------------------------ fetch

def fetch(url: str, dest: Path | str, *, md5: str | None = None, sha256: str | None = None, what: str,
          hint: str = DEFAULT_HINT, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already has the expected checksum; return ``dest``.

    ``what`` names the data in error messages (e.g. "MedMNIST bloodmnist (28 px)"), ``hint`` says what
    the user can do about a failure. Raises ``ReproduceError`` on HTTP errors, refused connections,
    broken transfers, checksum mismatches and files that cannot be written; see the module docstring
    for what stays on disk.
    """
    expected = _expected(md5, sha256)
    dest = Path(dest)
    _make_dir(dest.parent)
    present, kept = _existing(dest, expected)
    if present:
        return dest
    hint = kept + hint  # every failure below leaves dest as it was
    part = _part_path(dest)
    for _attempt in range(2):  # a second attempt only after a 416 on a .part that turned out wrong
        if _download(url, part, expected, what=what, hint=hint, timeout=timeout):
            return _install(part, dest)
    raise ReproduceError(f"Could not download {what} from {url}: the server keeps refusing the byte range. {hint}")


def _download(url: str, part: Path, expected: dict[str, str], *, what: str, hint: str,
              timeout: float) -> bool:
    """One attempt: True when ``part`` is complete and verified, False to start over without Range."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # asked for bytes after the end: the .part may already be whole
            if _mismatch(expected, hash_file(part, tuple(expected))) is None:
                return True
            _remove(part)
            return False
        _remove(part)
        raise ReproduceError(f"Could not download {what} from {url}: HTTP {e.code} {e.reason}. {hint}") from None
    except ValueError as e:  # not a URL urllib can open, e.g. a mirror without http://
        raise ReproduceError(f"Cannot download {what} from {url!r}: {e}. {hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        kept = (f" The partial download {part} was kept; rerunning resumes it." if part.exists() else "")
        raise ReproduceError(f"Could not connect to download {what} from {url}: {reason}.{kept} {hint}") from None

    try:
        with response:
            received, total, hashers, broken = _receive(response, part, offset, expected, what)
    except OSError as e:  # the .part's own errors (disk full, read-only); the connection's end as `broken`
        _remove(part)  # frees the space; a resume has nothing to gain from a file that could not be written
        raise file_error(part, e, "write") from e
    if broken is not None or (total is not None and received < total):
        # urllib's read(n) returns b"" at an early end of a Content-Length body instead of raising
        of = f" of {total}" if total is not None else ""
        raise ReproduceError(
            f"The download of {what} from {url} broke off after {received}{of} bytes"
            f"{f' ({broken})' if broken is not None else ''}. The partial file {part} was kept: "
            f"rerunning resumes the transfer. If it keeps failing: {hint}")
    problem = _mismatch(expected, _digests(hashers))
    if problem is not None:
        _remove(part)
        raise ReproduceError(f"The file downloaded for {what} from {url} does not have the expected checksum "
                             f"({problem}); it was deleted. {hint}")
    return True


def _receive(response, part: Path, offset: int, expected: dict[str, str], what: str
             ) -> tuple[int, int | None, dict, Exception | None]:
    """Write the body into ``part`` while hashing it, appending when the server resumed at ``offset``.

    Returns (bytes in ``part``, bytes expected or None, the hashers, the error that broke the transfer
    or None). An ``OSError`` raised here is the file's, not the connection's.
    """
    status = getattr(response, "status", None) or 200  # file:// responses have no status
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    hashers = _new_hashers(expected)
    if offset and status == 206 and _range_start(response.headers.get("Content-Range")) == offset:
        _hash_into(hashers, part)
        mode = "ab"
    else:  # no .part, or the server ignored Range: start over
        offset, mode = 0, "wb"
    total = None if length is None else offset + length
    received, broken = offset, None
    with open(part, mode) as f, _progress(total, offset, what) as bar:
        while broken is None:
            chunk, broken = _read(response)
            if not chunk:
                break
            f.write(chunk)
            for h in hashers.values():
                h.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    return received, total, hashers, broken


def _read(response) -> tuple[bytes, Exception | None]:
    """The next chunk of the body, and the error that ended the transfer (with the bytes read before it)."""
    try:
        return response.read(CHUNK), None
    except http.client.IncompleteRead as e:  # chunked transfers report what they had read
        return e.partial or b"", e
    except OSError as e:  # connection reset, timeout in the middle of the body
        return b"", e


def _range_start(content_range: str | None) -> int | None:
    """First byte of ``Content-Range: bytes START-END/TOTAL``."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    start = content_range[6:].split("-", 1)[0].strip()
    return int(start) if start.isdigit() else None


# ------------------------------------------------------------------------------------- local files

def copy_verified(src: Path | str, dest: Path | str, *, md5: str | None = None, sha256: str | None = None,
                  what: str, hint: str = DEFAULT_HINT) -> Path:
    """Copy a local file into the data directory, checking the checksum of the bytes written.

    Writes a temp file next to ``dest`` and renames it into place once verified
    (``reproduce.atomic.write_atomic``): on any failure ``dest`` is as it was, and a ``dest`` with
    other bytes is replaced only by a verified copy. If ``src`` is ``dest`` itself it is only verified
    (and never deleted). ``hint`` says what to do about a mismatch (``local_file_hint``).
    """
    expected = _expected(md5, sha256)
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise ReproduceError(f"Local file {src} for {what} does not exist or is not a file.")
    if dest.exists() and dest.resolve() == src.resolve():
        problem = _mismatch(expected, hash_file(dest, tuple(expected)))
        if problem is not None:
            raise ReproduceError(f"Local file {src} for {what} does not have the stated checksum ({problem}). {hint}")
        return dest
    _make_dir(dest.parent)
    present, kept = _existing(dest, expected)
    if present:
        return dest

    def write(fout) -> None:
        hashers = _new_hashers(expected)
        _hash_into(hashers, src, copy_to=fout)
        problem = _mismatch(expected, _digests(hashers))
        if problem is not None:  # raised inside write_atomic: its temp file goes, dest stays
            raise ReproduceError(f"Local file {src} for {what} does not have the stated checksum ({problem}); "
                                 f"nothing was copied. {kept}{hint}")

    try:
        return write_atomic(dest, write)
    except OSError as e:  # reading src is reported by _hash_into: this is the data directory's
        raise file_error(dest, e, "write") from e
