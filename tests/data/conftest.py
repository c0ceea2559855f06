"""Fixtures of the data tests: the local HTTP server (tests/http_server.py), no internet, a failing disk."""

from __future__ import annotations

import errno
import os
import socket

import numpy as np
import pytest

from tests.http_server import serve


@pytest.fixture
def file_server(tmp_path_factory):
    """A FileServer on an ephemeral port of 127.0.0.1, serving a fresh directory outside tmp_path."""
    with serve(tmp_path_factory.mktemp("served")) as state:
        yield state


@pytest.fixture
def closed_port_url():
    """A URL on 127.0.0.1 whose port was just released: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No mirror variables from the caller's environment, and no proxy for the local server."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("REPRODUCE_MEDMNIST_MIRROR", raising=False)
    monkeypatch.delenv("REPRODUCE_CIFAR10_MIRROR", raising=False)
    real = socket.create_connection

    def loopback_only(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"test tried to reach {address[0]}: tests must not touch the internet")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)



@pytest.fixture
def failing_disk(monkeypatch):
    """``failing_disk(errno.ENOSPC)``: from now on every fsync of a written file fails with that error,
    as a full (or read-only) disk reports it. The tests run as root, where chmod cannot make a directory
    read-only, so the error is injected where the suite flushes what it wrote."""
    def install(code: int = errno.ENOSPC) -> None:
        def fsync(fd):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(os, "fsync", fsync)
    return install


def damaged_copies(data: bytes, *, flips: int, seed: int = 0) -> list[bytes]:
    """``data`` truncated at 25 points and with ``flips`` single bits flipped (seeded), one copy each."""
    rng = np.random.default_rng(seed)
    damaged = [data[:n] for n in range(0, len(data), len(data) // 25)]
    for i, bit in zip(rng.integers(0, len(data), flips), rng.integers(0, 8, flips)):
        flipped = bytearray(data)
        flipped[i] ^= 1 << int(bit)
        damaged.append(bytes(flipped))
    return damaged
