"""reproduce.data.download against a real HTTP server on 127.0.0.1 (see conftest.py)."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from reproduce.data import download
from reproduce.data.download import copy_verified, fetch, md5_file, mirror_url, sha256_file, url_filename
from reproduce.errors import ReproduceError

PAYLOAD = bytes(range(256)) * 4000  # 1 MB, bigger than one read chunk would be at 64 KiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def files(directory) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(download, "CHUNK", 64 * 1024)


@pytest.fixture
def served(file_server):
    file_server.add("blob.bin", PAYLOAD)
    return file_server


def test_checksum_helpers(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(PAYLOAD)
    assert md5_file(path) == MD5 and sha256_file(path) == SHA


def test_fetch_success_md5(served, tmp_path):
    dest = tmp_path / "data" / "blob.bin"
    assert fetch(served.url("blob.bin"), dest, md5=MD5, what="blob") == dest
    assert dest.read_bytes() == PAYLOAD
    assert files(dest.parent) == ["blob.bin"]
    assert served.requests == [("/blob.bin", None)]


def test_fetch_success_sha256_upper_case(served, tmp_path):
    dest = tmp_path / "data" / "blob.bin"
    fetch(served.url("blob.bin"), dest, sha256=SHA.upper(), what="blob")
    assert dest.read_bytes() == PAYLOAD


def test_existing_verified_file_needs_no_network(served, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.write_bytes(PAYLOAD)
    fetch("http://127.0.0.1:9/never", dest, md5=MD5, what="blob")
    assert served.requests == []


def test_existing_corrupt_file_is_replaced(served, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"stale")
    fetch(served.url("blob.bin"), dest, sha256=SHA, what="blob")
    assert dest.read_bytes() == PAYLOAD


def test_checksum_required_and_validated(tmp_path):
    with pytest.raises(ValueError):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", what="x")
    with pytest.raises(ReproduceError, match="64 hexadecimal"):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc", what="x")


def test_md5_mismatch_leaves_nothing(served, tmp_path):
    data = tmp_path / "data"
    with pytest.raises(ReproduceError) as err:
        fetch(served.url("blob.bin"), data / "blob.bin", md5="0" * 32, what="bloodmnist", hint="HINT")
    message = str(err.value)
    assert "bloodmnist" in message and served.url("blob.bin") in message and "checksum" in message
    assert MD5 in message and "HINT" in message
    assert files(data) == []


def test_http_404_leaves_nothing(file_server, tmp_path):
    data = tmp_path / "data"
    with pytest.raises(ReproduceError) as err:
        fetch(file_server.url("missing.npz"), data / "missing.npz", md5=MD5, what="pathmnist", hint="HINT")
    message = str(err.value)
    assert "404" in message and "pathmnist" in message and file_server.url("missing.npz") in message
    assert "HINT" in message
    assert files(data) == []


def test_http_500_deletes_a_stale_partial(served, tmp_path):
    served.status["blob.bin"] = 500
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:1000])
    with pytest.raises(ReproduceError, match="HTTP 500"):
        fetch(served.url("blob.bin"), tmp_path / "blob.bin", md5=MD5, what="blob")
    assert files(tmp_path) == []


def test_connection_refused_leaves_nothing(closed_port_url, tmp_path):
    data = tmp_path / "data"
    url = closed_port_url + "/blob.bin"
    with pytest.raises(ReproduceError) as err:
        fetch(url, data / "blob.bin", md5=MD5, what="octmnist", hint="HINT")
    message = str(err.value)
    assert "octmnist" in message and url in message and "HINT" in message and "connect" in message
    assert files(data) == []


def test_connection_refused_keeps_an_earlier_partial(closed_port_url, tmp_path):
    part = tmp_path / "blob.bin.part"
    part.write_bytes(PAYLOAD[:1000])
    with pytest.raises(ReproduceError, match="rerunning resumes"):
        fetch(closed_port_url + "/blob.bin", tmp_path / "blob.bin", md5=MD5, what="blob")
    assert part.read_bytes() == PAYLOAD[:1000] and files(tmp_path) == ["blob.bin.part"]


def test_truncated_body_keeps_partial_then_rerun_resumes(served, tmp_path):
    dest = tmp_path / "data" / "blob.bin"
    served.truncate["blob.bin"] = 300_000
    with pytest.raises(ReproduceError) as err:
        fetch(served.url("blob.bin"), dest, md5=MD5, what="dermamnist")
    message = str(err.value)
    assert "broke off after 300000 of 1024000 bytes" in message and "rerunning resumes" in message
    assert "dermamnist" in message and served.url("blob.bin") in message
    # documented behaviour: only the .part with the bytes received so far stays, never the final name
    assert files(dest.parent) == ["blob.bin.part"]
    assert (dest.parent / "blob.bin.part").read_bytes() == PAYLOAD[:300_000]

    del served.truncate["blob.bin"]
    fetch(served.url("blob.bin"), dest, md5=MD5, what="dermamnist")
    assert dest.read_bytes() == PAYLOAD and files(dest.parent) == ["blob.bin"]
    assert served.requests[-1] == ("/blob.bin", "bytes=300000-")


def test_resume_partial_file_via_range(served, tmp_path):
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:123_457])
    fetch(served.url("blob.bin"), dest, sha256=SHA, what="blob")
    assert dest.read_bytes() == PAYLOAD and files(tmp_path) == ["blob.bin"]
    assert served.requests == [("/blob.bin", "bytes=123457-")]


def test_server_ignoring_range_restarts(served, tmp_path):
    served.ignore_range.add("blob.bin")
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    fetch(served.url("blob.bin"), dest, md5=MD5, what="blob")
    assert dest.read_bytes() == PAYLOAD and files(tmp_path) == ["blob.bin"]
    assert served.requests == [("/blob.bin", "bytes=5000-")]


def test_complete_partial_answered_416_is_used(served, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD)
    fetch(served.url("blob.bin"), tmp_path / "blob.bin", md5=MD5, what="blob")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD and files(tmp_path) == ["blob.bin"]


def test_oversized_wrong_partial_restarts_after_416(served, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(b"y" * (len(PAYLOAD) + 10))
    fetch(served.url("blob.bin"), tmp_path / "blob.bin", md5=MD5, what="blob")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD
    assert served.requests == [("/blob.bin", f"bytes={len(PAYLOAD) + 10}-"), ("/blob.bin", None)]


def test_resume_onto_wrong_prefix_fails_checksum_and_cleans_up(served, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(b"z" * 1000)
    with pytest.raises(ReproduceError, match="checksum"):
        fetch(served.url("blob.bin"), tmp_path / "blob.bin", md5=MD5, what="blob")
    assert files(tmp_path) == []
    fetch(served.url("blob.bin"), tmp_path / "blob.bin", md5=MD5, what="blob")  # a rerun starts afresh
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_mirror_url_replaces_everything_up_to_the_file_name():
    official = "https://zenodo.org/records/10519652/files/bloodmnist_64.npz?download=1"
    assert url_filename(official) == "bloodmnist_64.npz"
    assert mirror_url(official, None) == official
    assert mirror_url(official, "http://host:8/a/b/") == "http://host:8/a/b/bloodmnist_64.npz"
    assert mirror_url(official, "file:///srv/mirror") == "file:///srv/mirror/bloodmnist_64.npz"


def test_copy_verified(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "data" / "blob.bin"
    assert copy_verified(src, dest, sha256=SHA, what="blob") == dest
    assert dest.read_bytes() == PAYLOAD and files(dest.parent) == ["blob.bin"]
    assert src.exists()


def test_copy_verified_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    data = tmp_path / "data"
    with pytest.raises(ReproduceError, match="stated checksum"):
        copy_verified(src, data / "blob.bin", sha256="1" * 64, what="blob")
    assert files(data) == []
    with pytest.raises(ReproduceError, match="does not exist"):
        copy_verified(tmp_path / "nope", data / "blob.bin", sha256=SHA, what="blob")


def test_existing_file_stays_when_the_download_does_not_verify(served, tmp_path):
    """A study stating another checksum must not cost the copy that is there (it was verified once)."""
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"verified earlier")
    with pytest.raises(ReproduceError, match=f"{dest}.*was left as it is"):
        fetch(served.url("blob.bin"), dest, sha256="1" * 64, what="blob")
    assert dest.read_bytes() == b"verified earlier" and files(tmp_path) == ["blob.bin"]


def test_copy_verified_mismatch_keeps_the_existing_copy(tmp_path):
    src, dest = tmp_path / "src.bin", tmp_path / "data" / "blob.bin"
    src.write_bytes(PAYLOAD)
    copy_verified(src, dest, sha256=SHA, what="blob")
    with pytest.raises(ReproduceError) as err:
        copy_verified(src, dest, sha256="1" * 64, what="blob")
    assert str(src) in str(err.value) and SHA in str(err.value) and "1" * 64 in str(err.value)
    assert dest.read_bytes() == PAYLOAD and files(dest.parent) == ["blob.bin"]


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "Free space"), (errno.EROFS, "Make")])
def test_a_failing_disk_during_fetch_leaves_nothing(served, tmp_path, failing_disk, code, advice):
    failing_disk(code)
    dest = tmp_path / "data" / "blob.bin"
    with pytest.raises(ReproduceError) as err:
        fetch(served.url("blob.bin"), dest, sha256=SHA, what="blob")
    assert str(err.value).startswith(f"Could not write {dest}.part: {os.strerror(code)}. {advice}")
    assert files(dest.parent) == []


def test_a_failing_disk_during_a_local_copy_keeps_the_old_file(tmp_path, failing_disk):
    src, dest = tmp_path / "src.bin", tmp_path / "data" / "blob.bin"
    src.write_bytes(PAYLOAD)
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    failing_disk(errno.ENOSPC)
    with pytest.raises(ReproduceError, match=f"Could not write {dest}: No space left on device"):
        copy_verified(src, dest, sha256=SHA, what="blob")
    assert dest.read_bytes() == b"old" and files(dest.parent) == ["blob.bin"]


def test_a_data_directory_that_is_a_file(served, tmp_path):
    (tmp_path / "data").write_bytes(b"")
    with pytest.raises(ReproduceError, match=f"Could not create the directory {tmp_path / 'data'}"):
        fetch(served.url("blob.bin"), tmp_path / "data" / "blob.bin", sha256=SHA, what="blob")
