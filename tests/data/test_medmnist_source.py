"""MedMNIST source: INFO-derived table, prepare() through a local HTTP server, load()."""

from __future__ import annotations

import hashlib
import io
import os
import re

import numpy as np
import pytest

from reproduce.data import medmnist_source as mm
from reproduce.errors import ReproduceError
from tests.data.conftest import damaged_copies

FLAGS_2D = ["pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
            "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist"]
COUNTS = {"train": 7, "val": 3, "test": 5}


def files(directory) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def tiny_npz(flag: str, size: int = 28, seed: int = 0) -> bytes:
    """An npz in MedMNIST layout (grey images N x S x S, RGB N x S x S x 3, labels N x L)."""
    meta = mm.info(flag, size)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in COUNTS.items():
        shape = (n, size, size) if meta.n_channels == 1 else (n, size, size, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if meta.task == "multi-label, binary-class":
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, meta.num_classes), dtype=np.uint8)
        else:
            arrays[f"{split}_labels"] = rng.integers(0, meta.num_classes, (n, 1), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_all_2d_flags_at_all_sizes_resolve_to_https_and_md5():
    assert list(mm.flags()) == FLAGS_2D
    assert mm.FLAGS == mm.flags()   # the names studies validate against, offline
    assert mm.SIZES == (28, 64, 128, 224)
    for flag in FLAGS_2D:
        for size in mm.SIZES:
            r = mm.remote(flag, size)
            assert r.url.startswith("https://"), r.url
            assert re.fullmatch(r"[0-9a-f]{32}", r.md5), (flag, size, r.md5)
            assert r.filename == (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
            assert set(r.n_samples) == {"train", "val", "test"} and min(r.n_samples.values()) > 0
    md5s = {mm.remote(f, s).md5 for f in FLAGS_2D for s in mm.SIZES}
    assert len(md5s) == 48  # every file has its own checksum: the size keys were read correctly


def test_values_come_from_medmnist_info():
    from medmnist.info import INFO  # the package __init__ is fine to run in a test

    for flag in FLAGS_2D:
        meta, entry = mm.info(flag), INFO[flag]
        assert (meta.task, meta.n_channels, meta.labels) == (entry["task"], entry["n_channels"], entry["label"])
        assert mm.remote(flag, 28).url == entry["url"] and mm.remote(flag, 28).md5 == entry["MD5"]
        assert mm.remote(flag, 128).url == entry["url_128"] and mm.remote(flag, 128).md5 == entry["MD5_128"]
        assert mm.remote(flag).n_samples == entry["n_samples"]
    assert mm.info("chestmnist").task == "multi-label, binary-class" and mm.info("chestmnist").num_classes == 14
    assert mm.info("retinamnist").task == "ordinal-regression"
    assert mm.info("breastmnist").task == "binary-class" and mm.info("breastmnist").n_channels == 1


def test_unknown_flag_3d_flag_and_size_are_rejected():
    for flag, size in (("nosuchmnist", 28), ("organmnist3d", 28), ("bloodmnist", 32)):
        with pytest.raises(ReproduceError):
            mm.remote(flag, size)


def test_official_url_when_no_mirror(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(mm, "fetch", lambda url, dest, **kw: calls.append((url, dest, kw)) or dest)
    mm.prepare("bloodmnist", root=tmp_path, size=64)
    url, dest, kw = calls[0]
    assert url == mm.remote("bloodmnist", 64).url
    assert url.startswith("https://zenodo.org/") and url.split("?")[0].endswith("/bloodmnist_64.npz")
    assert dest == tmp_path / "bloodmnist_64.npz" and kw["md5"] == mm.remote("bloodmnist", 64).md5
    assert "REPRODUCE_MEDMNIST_MIRROR" in kw["hint"]


def test_prepare_via_mirror_kwarg_and_load(file_server, tmp_path):
    data = tiny_npz("bloodmnist")
    file_server.add("bloodmnist.npz", data)
    path = mm.prepare("bloodmnist", root=tmp_path / "d", mirror=file_server.base_url + "/", sha256=sha(data))
    assert path == tmp_path / "d" / "bloodmnist.npz" and path.read_bytes() == data
    assert file_server.requests == [("/bloodmnist.npz", None)]
    splits = mm.load(path, flag="bloodmnist")
    assert splits.images("train").shape == (7, 28, 28, 3) and splits.images("train").dtype == np.uint8
    assert splits.labels("test").shape == (5, 1) and splits.labels("test").dtype == np.int64
    assert splits.info.sha256 == sha(data) and splits.info.source == str(path)
    assert splits.info.num_classes == 8 and splits.info.name == "bloodmnist"


def test_prepare_via_env_mirror_with_path_prefix(file_server, tmp_path, monkeypatch):
    data = tiny_npz("pneumoniamnist", size=64)
    file_server.add("mirror/medmnist/pneumoniamnist_64.npz", data)
    monkeypatch.setenv("REPRODUCE_MEDMNIST_MIRROR", file_server.base_url + "/mirror/medmnist")
    assert mm.resolve_url("pneumoniamnist", 64) == file_server.base_url + "/mirror/medmnist/pneumoniamnist_64.npz"
    path = mm.prepare("pneumoniamnist", root=tmp_path, size=64, sha256=sha(data))
    splits = mm.load(path, flag="pneumoniamnist", size=64)
    assert splits.images("val").shape == (3, 64, 64, 1)  # grey images get a channel axis


def test_mirror_kwarg_overrides_env(file_server, tmp_path, monkeypatch, closed_port_url):
    data = tiny_npz("bloodmnist")
    file_server.add("bloodmnist.npz", data)
    monkeypatch.setenv("REPRODUCE_MEDMNIST_MIRROR", closed_port_url)
    mm.prepare("bloodmnist", root=tmp_path, mirror=file_server.base_url, sha256=sha(data))
    assert file_server.requests == [("/bloodmnist.npz", None)]


def test_mirror_file_checked_against_official_md5(file_server, tmp_path):
    file_server.add("bloodmnist.npz", tiny_npz("bloodmnist"))  # not the official bytes
    with pytest.raises(ReproduceError) as err:
        mm.prepare("bloodmnist", root=tmp_path / "d", mirror=file_server.base_url)
    message = str(err.value)
    assert "bloodmnist" in message and mm.remote("bloodmnist").md5 in message
    assert "REPRODUCE_MEDMNIST_MIRROR" in message and "local_file" in message and "sha256" in message
    assert files(tmp_path / "d") == []


def test_study_states_the_sha256_of_what_its_mirror_serves(file_server, tmp_path):
    from reproduce.data import prepare_dataset
    from reproduce.study import DataConfig
    data = tiny_npz("bloodmnist")
    file_server.add("bloodmnist.npz", data)
    options = DataConfig(mirror=file_server.base_url, mirror_sha256={"bloodmnist": sha(data)})
    assert prepare_dataset("bloodmnist", root=tmp_path, options=options).read_bytes() == data
    wrong = DataConfig(mirror=file_server.base_url, mirror_sha256={"bloodmnist": "0" * 64})
    with pytest.raises(ReproduceError, match="expected checksum"):
        prepare_dataset("bloodmnist", root=tmp_path / "other", options=wrong)
    with pytest.raises(ValueError, match="mirror_sha256"):
        DataConfig(mirror_sha256={"nosuchmnist": sha(data)})


def test_mirror_404(file_server, tmp_path):
    with pytest.raises(ReproduceError) as err:
        mm.prepare("dermamnist", root=tmp_path / "d", size=128, mirror=file_server.base_url)
    message = str(err.value)
    assert "404" in message and "dermamnist" in message and file_server.url("dermamnist_128.npz") in message
    assert files(tmp_path / "d") == []


def test_refused_mirror(closed_port_url, tmp_path):
    with pytest.raises(ReproduceError, match="octmnist.*REPRODUCE_MEDMNIST_MIRROR"):
        mm.prepare("octmnist", root=tmp_path / "d", mirror=closed_port_url)
    assert files(tmp_path / "d") == []


def test_local_file_with_sha256(tmp_path):
    data = tiny_npz("chestmnist")
    src = tmp_path / "mine.npz"
    src.write_bytes(data)
    path = mm.prepare("chestmnist", root=tmp_path / "d", local_file=src, sha256=sha(data))
    assert path == tmp_path / "d" / "chestmnist.npz" and path.read_bytes() == data
    splits = mm.load(path, flag="chestmnist")
    assert splits.labels("train").shape == (7, 14) and splits.images("train").shape == (7, 28, 28, 1)
    assert splits.info.task == "multi-label, binary-class"


def test_local_file_wrong_checksum_leaves_nothing(tmp_path):
    src = tmp_path / "mine.npz"
    src.write_bytes(tiny_npz("bloodmnist"))
    with pytest.raises(ReproduceError, match="stated checksum"):
        mm.prepare("bloodmnist", root=tmp_path / "d", local_file=src, sha256="0" * 64)
    with pytest.raises(ReproduceError, match="md5"):  # no sha256: must be the official file
        mm.prepare("bloodmnist", root=tmp_path / "d", local_file=src)
    assert files(tmp_path / "d") == []
    with pytest.raises(ReproduceError, match="not both"):
        mm.prepare("bloodmnist", root=tmp_path / "d", local_file=src, mirror="http://127.0.0.1:9")


def test_local_file_checksum_advice_names_the_study_field_not_the_mirror(tmp_path):
    src = tmp_path / "mine.npz"
    src.write_bytes(tiny_npz("bloodmnist"))
    with pytest.raises(ReproduceError) as err:
        mm.prepare("bloodmnist", root=tmp_path / "d", local_file=src, sha256="0" * 64)
    assert "data.local_files.bloodmnist.sha256" in str(err.value) and mm.MIRROR_ENV not in str(err.value)


def test_load_reports_any_damage_to_the_npz_as_reproduce_error(tmp_path):
    """Truncations and bit flips (seeded) of a compressed npz: each loads (a flip inside pixel data) or
    raises ReproduceError, never zlib's, zipfile's or numpy's own exceptions."""
    data = tiny_npz("bloodmnist")
    damaged = damaged_copies(data, flips=150)
    path = tmp_path / "damaged.npz"
    for blob in damaged:
        path.write_bytes(blob)
        try:
            mm.load(path, flag="bloodmnist")
        except ReproduceError as e:
            assert str(path) in str(e)


def test_official_file_must_have_official_counts(tmp_path, monkeypatch):
    """A file whose MD5 is INFO's is checked against INFO's sample counts (INFO patched for the test)."""
    data = tiny_npz("bloodmnist")
    path = tmp_path / "bloodmnist.npz"
    path.write_bytes(data)
    table = {flag: dict(entry) for flag, entry in mm._info_table().items()}
    table["bloodmnist"]["MD5"] = hashlib.md5(data).hexdigest()
    monkeypatch.setattr(mm, "_info_table", lambda: table)
    with pytest.raises(ReproduceError, match="the official bloodmnist has 11959"):
        mm.load(path, flag="bloodmnist")
    table["bloodmnist"]["n_samples"] = dict(COUNTS)
    splits = mm.load(path, flag="bloodmnist")
    assert splits.info.source == mm.remote("bloodmnist").url


def test_load_rejects_wrong_layout(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(tiny_npz("bloodmnist"))
    with pytest.raises(ReproduceError, match="expected uint8 \\[N, 64, 64, 3\\]"):
        mm.load(path, flag="bloodmnist", size=64)
    with pytest.raises(ReproduceError, match="expected uint8 \\[N, 28, 28\\]"):
        mm.load(path, flag="pneumoniamnist")  # RGB file read as a grey flag
    with pytest.raises(ReproduceError, match="outside 0..1"):
        mm.load(_retag(tmp_path, "dermamnist", "breastmnist"), flag="breastmnist")
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ReproduceError, match="missing train_labels"):
        mm.load(tmp_path / "partial.npz", flag="pneumoniamnist")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ReproduceError, match="not a readable npz"):
        mm.load(tmp_path / "junk.npz", flag="bloodmnist")


def _retag(tmp_path, source_flag, target_flag):
    """dermamnist labels (0..6) in a grey file: valid shapes for breastmnist, labels out of range."""
    arrays = dict(np.load(io.BytesIO(tiny_npz(source_flag, seed=3))))
    for split in COUNTS:
        arrays[f"{split}_images"] = arrays[f"{split}_images"][..., 0]
        arrays[f"{split}_labels"][:] = 5
    path = tmp_path / f"{target_flag}.npz"
    np.savez(path, **arrays)
    return path
