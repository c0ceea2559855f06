"""Verified downloads and local copies into the data directory (urllib only).

``fetch`` writes into ``<dest>.part`` next to the destination, checks the checksum, then fsyncs and
renames the file into place (``os.replace``), so a file under its final name has always been verified.

What is left behind when something goes wrong (the rule the tests check):

* HTTP error status (404, 500, ...), checksum mismatch, a local file that does not match: nothing.
  Neither ``<dest>.part`` nor ``<dest>`` exists afterwards.
* A transfer that broke off (fewer bytes than Content-Length, connection reset or timed out mid-body):
  the bytes received so far stay in ``<dest>.part`` and the error says so; the next call sends an HTTP
  ``Range`` request and resumes after them (it starts over if the server ignores ``Range``). Resumed
  bytes are still checked: a wrong prefix ends in a checksum mismatch, which deletes the ``.part``.
* No connection at all (refused, DNS, timeout before a response): no ``.part`` is created; one left by
  an earlier broken transfer is kept for the next attempt.

An existing ``<dest>`` is verified first and returned without network access if it matches; one that
does not match is deleted and fetched afresh. Two processes fetching the same file at the same time are
not coordinated: run one fetch per file (the DVC fetch stage does).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from reproduce.atomic import fsync_dir
from reproduce.errors import ReproduceError

CHUNK = 1 << 20
USER_AGENT = "reproduce/0.1 (python urllib)"
DEFAULT_HINT = ("Check the URL or mirror, or obtain the file by other means and pass it as a local file "
                "together with its sha256.")
_HEX_LENGTH = {"md5": 32, "sha256": 64}


# ----------------------------------------------------------------------------------------- checksums

def hash_file(path: Path | str, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of one file for several algorithms, reading it once."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


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


def _install(part: Path, dest: Path) -> Path:
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def _existing_ok(dest: Path, expected: dict[str, str]) -> bool:
    """True if ``dest`` holds the expected bytes; a non-matching ``dest`` is deleted."""
    if not dest.exists():
        return False
    if _mismatch(expected, hash_file(dest, tuple(expected))) is None:
        return True
    _remove(dest)
    return False


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
    broken transfers and checksum mismatches; see the module docstring for what stays on disk.
    """
    expected = _expected(md5, sha256)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _existing_ok(dest, expected):
        return dest
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
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        kept = (f" The partial download {part} was kept; rerunning resumes it." if part.exists() else "")
        raise ReproduceError(f"Could not connect to download {what} from {url}: {reason}.{kept} {hint}") from None

    with response:
        status = getattr(response, "status", None) or 200  # file:// responses have no status
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206 and _range_start(response.headers.get("Content-Range")) == offset:
            hashers = _new_hashers(expected)
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    for h in hashers.values():
                        h.update(chunk)
            mode = "ab"
        else:  # no .part, or the server ignored Range: start over
            offset, mode, hashers = 0, "wb", _new_hashers(expected)
        total = None if length is None else offset + length
        received, broken = offset, None
        with open(part, mode) as f, _progress(total, offset, what) as bar:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except http.client.IncompleteRead as e:  # chunked transfers report what they had read
                if e.partial:
                    f.write(e.partial)
                    for h in hashers.values():
                        h.update(e.partial)
                    received += len(e.partial)
                broken = e
            except OSError as e:  # connection reset, timeout in the middle of the body
                broken = e
            f.flush()
            os.fsync(f.fileno())

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

    Uses ``<dest>.part`` and an atomic rename like ``fetch``; on a mismatch nothing is left at
    ``dest``. If ``src`` is ``dest`` itself it is only verified (and never deleted).
    """
    expected = _expected(md5, sha256)
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise ReproduceError(f"Local file {src} for {what} does not exist or is not a file.")
    if dest.exists() and dest.resolve() == src.resolve():
        problem = _mismatch(expected, hash_file(dest, tuple(expected)))
        if problem is not None:
            raise ReproduceError(f"Local file {src} for {what} does not have the stated checksum ({problem}).")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _existing_ok(dest, expected):
        return dest
    part = _part_path(dest)
    hashers = _new_hashers(expected)
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except BaseException:
        _remove(part)
        raise
    problem = _mismatch(expected, _digests(hashers))
    if problem is not None:
        _remove(part)
        raise ReproduceError(f"Local file {src} for {what} does not have the stated checksum ({problem}); "
                             f"nothing was copied. {hint}")
    return _install(part, dest)
