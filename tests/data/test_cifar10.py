"""CIFAR-10 source: a tiny archive in the official layout through a local HTTP server, and the real
offline rebuild (slow) when the shared folder's data/make_cifar10_python.py exists (``../shared`` from
the checkout's root, or the folder named by $REPRODUCE_SHARED)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from reproduce.data import cifar10, prepare_dataset
from reproduce.errors import ReproduceError
from tests.data.conftest import damaged_copies
from reproduce.study import DataConfig

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHARED = Path(os.environ.get("REPRODUCE_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
MAKE_SCRIPT = SHARED / "data" / "make_cifar10_python.py"
PER_BATCH = 20


def files(directory) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def _batch(rng, n, bytes_keys):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, n)]
    batch = {"batch_label": "batch", "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(n)]}
    if bytes_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    return batch


def tiny_archive(*, bytes_keys: bool = True, drop: str | None = None) -> bytes:
    """A cifar-10-python.tar.gz with the official member names: 5 train batches and a test batch of
    PER_BATCH images each, batches.meta and readme.html."""
    rng = np.random.default_rng(0)
    members = {f"data_batch_{i}": _batch(rng, PER_BATCH, bytes_keys) for i in range(1, 6)}
    members["test_batch"] = _batch(rng, PER_BATCH, bytes_keys)
    meta = {"label_names": CLASSES, "num_cases_per_batch": PER_BATCH, "num_vis": 3072}
    members["batches.meta"] = {k.encode(): [c.encode() for c in v] if k == "label_names" else v
                               for k, v in meta.items()} if bytes_keys else meta
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, obj in {**members, "readme.html": None}.items():
            if name == drop:
                continue
            raw = b"<html></html>" if obj is None else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return gzip.compress(buf.getvalue(), mtime=0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_arrays(data: bytes):
    """Train/test images and labels decoded independently of the loader."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        def get(name):
            batch = pickle.loads(tar.extractfile(f"cifar-10-batches-py/{name}").read())
            return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        train = [get(f"data_batch_{i}") for i in range(1, 6)]
        test = get("test_batch")
    return (np.concatenate([b["data"] for b in train]), np.concatenate([b["labels"] for b in train]),
            test["data"], np.asarray(test["labels"]))


def test_official_url_when_no_mirror(monkeypatch, tmp_path):
    assert cifar10.resolve_url() == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    calls = []
    monkeypatch.setattr(cifar10, "fetch", lambda url, dest, **kw: calls.append((url, dest, kw)) or dest)
    cifar10.prepare(root=tmp_path)
    url, dest, kw = calls[0]
    assert url == cifar10.URL and dest == tmp_path / "cifar-10-python.tar.gz"
    assert kw["md5"] == "c58f30108f718f92721af3b95e74349a" and "REPRODUCE_CIFAR10_MIRROR" in kw["hint"]


@pytest.mark.parametrize("bytes_keys", [True, False], ids=["py3-bytes-keys", "py2-style-str-keys"])
def test_prepare_via_mirror_and_load(file_server, tmp_path, bytes_keys):
    data = tiny_archive(bytes_keys=bytes_keys)
    file_server.add("cifar-10-python.tar.gz", data)
    path = cifar10.prepare(root=tmp_path / "d", mirror=file_server.base_url, sha256=sha(data))
    assert path == tmp_path / "d" / "cifar-10-python.tar.gz" and files(path.parent) == [path.name]

    splits = cifar10.load(path)
    train_x, train_y, test_x, test_y = expected_arrays(data)
    n, n_val = 5 * PER_BATCH, 5 * PER_BATCH // 10
    assert splits.images("train").shape == (n - n_val, 32, 32, 3)
    assert splits.images("val").shape == (n_val, 32, 32, 3) and splits.images("test").shape == (PER_BATCH, 32, 32, 3)
    assert all(splits.images(s).dtype == np.uint8 and splits.labels(s).dtype == np.int64 for s in ("train", "val", "test"))
    # val = the last 10 % of the training images in archive order
    assert np.array_equal(splits.labels("train")[:, 0], train_y[:n - n_val])
    assert np.array_equal(splits.labels("val")[:, 0], train_y[n - n_val:])
    assert np.array_equal(splits.labels("test")[:, 0], test_y)
    # channel layout: row = R plane, G plane, B plane, each 32x32 row-major
    img = splits.images("val")[1]
    row = train_x[n - n_val + 1]
    assert img[0, 0, 0] == row[0] and img[0, 1, 0] == row[1] and img[1, 0, 0] == row[32]
    assert img[0, 0, 1] == row[1024] and img[31, 31, 2] == row[3071]
    assert splits.info.labels == {str(i): c for i, c in enumerate(CLASSES)}
    assert (splits.info.name, splits.info.task, splits.info.n_channels) == ("cifar10", "multi-class", 3)
    assert splits.info.sha256 == sha(data)

    assert cifar10.load(path, val_size=7).images("val").shape[0] == 7


def test_env_mirror(file_server, tmp_path, monkeypatch):
    data = tiny_archive()
    file_server.add("mirrors/cifar/cifar-10-python.tar.gz", data)
    monkeypatch.setenv("REPRODUCE_CIFAR10_MIRROR", file_server.base_url + "/mirrors/cifar/")
    cifar10.prepare(root=tmp_path, sha256=sha(data))
    assert file_server.requests == [("/mirrors/cifar/cifar-10-python.tar.gz", None)]


def test_md5_mismatch_leaves_nothing(file_server, tmp_path):
    file_server.add("cifar-10-python.tar.gz", tiny_archive())
    with pytest.raises(ReproduceError) as err:
        cifar10.prepare(root=tmp_path / "d", mirror=file_server.base_url)
    message = str(err.value)
    assert "CIFAR-10" in message and cifar10.MD5 in message and "REPRODUCE_CIFAR10_MIRROR" in message
    assert files(tmp_path / "d") == []


def test_404_and_truncation(file_server, tmp_path):
    with pytest.raises(ReproduceError, match="HTTP 404"):
        cifar10.prepare(root=tmp_path / "d", mirror=file_server.base_url)
    assert files(tmp_path / "d") == []
    data = tiny_archive()
    file_server.add("cifar-10-python.tar.gz", data)
    file_server.truncate["cifar-10-python.tar.gz"] = 1000
    with pytest.raises(ReproduceError, match="rerunning resumes"):
        cifar10.prepare(root=tmp_path / "d", mirror=file_server.base_url, sha256=sha(data))
    assert files(tmp_path / "d") == ["cifar-10-python.tar.gz.part"]
    del file_server.truncate["cifar-10-python.tar.gz"]
    path = cifar10.prepare(root=tmp_path / "d", mirror=file_server.base_url, sha256=sha(data))
    assert path.read_bytes() == data and file_server.requests[-1][1] == "bytes=1000-"


def test_local_file(tmp_path):
    data = tiny_archive()
    src = tmp_path / "archive.tgz"
    src.write_bytes(data)
    assert cifar10.prepare(root=tmp_path / "d", local_file=src, sha256=sha(data)).read_bytes() == data
    with pytest.raises(ReproduceError, match="md5"):  # without a stated sha256 it must be the official file
        cifar10.prepare(root=tmp_path / "e", local_file=src)
    assert files(tmp_path / "e") == []


def local_options(src, sha256: str) -> DataConfig:
    """A study's data section stating ``src`` as its CIFAR-10 archive with ``sha256``."""
    return DataConfig(local_files={"cifar10": {"path": str(src), "sha256": sha256}})


def test_wrong_stated_sha256_never_deletes_the_verified_copy(tmp_path):
    data = tiny_archive()
    src = tmp_path / "archive.tgz"
    src.write_bytes(data)
    root = tmp_path / "data"
    path = prepare_dataset("cifar10", root=root, options=local_options(src, sha(data)))
    wrong = "0" * 64
    with pytest.raises(ReproduceError) as err:
        prepare_dataset("cifar10", root=root, options=local_options(src, wrong))
    message = str(err.value)
    assert str(src) in message and wrong in message and sha(data) in message
    assert "data.local_files.cifar10.sha256" in message
    assert path.read_bytes() == data and files(path.parent) == [cifar10.FILENAME]


def test_local_file_checksum_advice_names_the_study_field_not_the_mirror(tmp_path):
    src = tmp_path / "archive.tgz"
    src.write_bytes(tiny_archive())
    with pytest.raises(ReproduceError) as err:
        cifar10.prepare(root=tmp_path / "d", local_file=src, sha256="0" * 64)
    assert "data.local_files.cifar10.sha256" in str(err.value)
    assert cifar10.MIRROR_ENV not in str(err.value) and "the mirror" not in str(err.value)


def test_mirror_that_is_not_a_url(tmp_path):
    with pytest.raises(ReproduceError, match="mirror.example.org/cifar/cifar-10-python.tar.gz"):
        cifar10.prepare(root=tmp_path / "d", mirror="mirror.example.org/cifar")
    assert files(tmp_path / "d") == []


def test_load_reports_a_damaged_gzip_stream(tmp_path):
    """The first half of the tar compressed intact, then a stored deflate block whose length check fails:
    zlib's own error while the members are read."""
    tar = gzip.decompress(tiny_archive())
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(tar[:len(tar) // 2]) + deflate.flush(zlib.Z_FULL_FLUSH)
    path = tmp_path / "damaged.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + b"\x00\x10\x00\x00\x00" + bytes(16))
    with pytest.raises(ReproduceError, match=f"{path} is not a readable tar archive: .*invalid stored block"):
        cifar10.load(path)


def test_load_reports_any_damage_to_the_archive_as_reproduce_error(tmp_path):
    """Truncations and bit flips (seeded): each archive loads (a flip inside pixel data) or raises
    ReproduceError, never zlib's, tarfile's or pickle's own exceptions."""
    data = tiny_archive()
    damaged = damaged_copies(data, flips=80)
    path = tmp_path / "damaged.tar.gz"
    for blob in damaged:
        path.write_bytes(blob)
        try:
            cifar10.load(path)
        except ReproduceError as e:
            assert str(path) in str(e)


def test_load_rejects_broken_archives(tmp_path):
    missing = tmp_path / "missing.tar.gz"
    missing.write_bytes(tiny_archive(drop="test_batch"))
    with pytest.raises(ReproduceError, match="missing cifar-10-batches-py/test_batch"):
        cifar10.load(missing)
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(ReproduceError, match="not a readable tar"):
        cifar10.load(tmp_path / "junk.tar.gz")


def test_load_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = one_batch_tar(tmp_path / "evil.tar", pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ReproduceError, match="refusing to load"):
        cifar10.load(path)


def test_load_survives_a_damaged_dtype_that_crashes_numpy(tmp_path):
    """One flipped bit in an archive turned a dtype's pickled state into this 6-tuple, on which numpy's
    own dtype.__setstate__ crashes the process (SIGSEGV). The loader builds arrays from checked states:
    it reads the batch (and goes on to report the archive's missing members)."""
    raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    assert raw.count(b"|q\x13NNNJ") == 1
    path = one_batch_tar(tmp_path / "damaged.tar", raw.replace(b"|q\x13NNNJ", b"|q\x13NJ"))
    with pytest.raises(ReproduceError, match="missing cifar-10-batches-py/data_batch_2"):
        cifar10.load(path)
    short = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)
    short = short.replace(b"K\x02M\x00\x0c", b"K\x03M\x00\x0c")   # 3 rows announced, 2 rows of bytes
    path = one_batch_tar(tmp_path / "short.tar", short)
    with pytest.raises(ReproduceError, match="data_batch_1 is not a CIFAR-10 python batch: damaged array"):
        cifar10.load(path)


def one_batch_tar(path, raw: bytes):
    """An uncompressed tar holding ``raw`` as cifar-10-batches-py/data_batch_1."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.slow
@pytest.mark.skipif(not MAKE_SCRIPT.exists(), reason=f"{MAKE_SCRIPT} (offline CIFAR-10 rebuild) not on this machine")
def test_real_offline_cifar10(tmp_path):
    out = tmp_path / "built" / "cifar-10-python.tar.gz"
    out.parent.mkdir()
    run = subprocess.run([sys.executable, str(MAKE_SCRIPT), str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    digest = run.stdout.split()[0]
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == cifar10.OFFLINE_REBUILD_SHA256  # byte-identical rebuild, as its README states

    path = cifar10.prepare(root=tmp_path / "data", local_file=out, sha256=digest)
    splits = cifar10.load(path)
    assert splits.info.sha256 == digest and splits.info.source == str(path)
    sizes = {s: len(splits.images(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 45000, "val": 5000, "test": 10000}
    assert splits.images("train").shape[1:] == (32, 32, 3)
    train_val = np.concatenate([splits.labels("train"), splits.labels("val")])[:, 0]
    assert np.bincount(train_val, minlength=10).tolist() == [5000] * 10
    assert np.bincount(splits.labels("test")[:, 0], minlength=10).tolist() == [1000] * 10
    val_counts = np.bincount(splits.labels("val")[:, 0], minlength=10)
    assert val_counts.min() > 400 and val_counts.max() < 600  # shuffled batches: a near-balanced holdout
    assert list(splits.info.labels.values()) == CLASSES
    mean = splits.images("train").reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, [0.4914, 0.4822, 0.4465], atol=0.005)
