"""Device selection: precedence (flag, environment, user config, auto), clear refusals, recorded facts."""

from __future__ import annotations

import pytest
import torch

from reproduce.device import DeviceError, configure_determinism, device_facts, requested_device, resolve_device
from reproduce.user_config import load_user_config

CUDA = torch.cuda.is_available()


def test_precedence_flag_then_environment_then_user_config_then_auto(monkeypatch, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("run:\n  device: cuda:1\n")
    monkeypatch.setenv("REPRODUCE_CONFIG", str(config))
    monkeypatch.delenv("REPRODUCE_DEVICE", raising=False)
    assert requested_device(None) == "cuda:1"
    monkeypatch.setenv("REPRODUCE_DEVICE", "cpu")
    assert requested_device(None) == "cpu"
    assert requested_device("cuda") == "cuda"
    monkeypatch.delenv("REPRODUCE_DEVICE")
    config.write_text("run:\n  jobs: 2\n")
    assert requested_device(None) == "auto"
    assert load_user_config() == {"jobs": 2}


def test_auto_is_cuda_when_available_else_cpu():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the refusal cannot be shown here")
def test_cuda_requested_where_there_is_none_is_a_usage_error():
    with pytest.raises(DeviceError, match="no CUDA device is available") as e:
        resolve_device("cuda")
    assert e.value.exit_code == 2


def test_unknown_device_spec_is_refused():
    for spec in ("gpu", "cuda:x", "mps"):
        with pytest.raises(DeviceError, match="unknown device"):
            resolve_device(spec)


def test_cpu_facts_and_determinism_is_a_no_op_on_cpu():
    configure_determinism(torch.device("cpu"))
    assert device_facts(torch.device("cpu")) == {"type": "cpu", "torch_threads": torch.get_num_threads()}


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
def test_cuda_facts_and_determinism():
    device = resolve_device("cuda")
    configure_determinism(device)
    facts = device_facts(device)
    assert facts["type"] == "cuda" and facts["name"] and facts["memory_bytes"] > 0 and facts["cuda"]
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.deterministic
    with pytest.raises(DeviceError, match="visible"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_provenance_records_the_facts_of_the_device_used():
    from types import SimpleNamespace

    from reproduce.records.provenance import Provenance
    from reproduce.training.cell import provenance
    from tests.conftest import tiny_study

    cell = tiny_study(name="facts", dataset="bloodmnist", epsilon=8).cells()[0]
    data = SimpleNamespace(name="bloodmnist", sha256="0" * 64, source="stand-in")
    record = provenance(cell=cell, data=data, device=torch.device("cpu"))
    assert record.device == device_facts(torch.device("cpu"))
    assert record.device["torch_threads"] == torch.get_num_threads()
    assert Provenance.from_json(record.to_json()) == record


def test_device_label_reads_old_and_new_records():
    from reproduce.device import device_label

    assert device_label("cpu") == "cpu"
    assert device_label({"type": "cpu", "torch_threads": 2}) == "cpu"
    assert device_label({"type": "cuda", "index": 1, "name": "NVIDIA H200"}) == "cuda:1 NVIDIA H200"


def test_host_tensors_stay_themselves_on_the_cpu():
    from reproduce.device import host_to_device, resident

    t = torch.arange(5)
    assert host_to_device(t, torch.device("cpu")) is t
    (r,) = resident((t,), torch.device("cpu"))
    assert r is t


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
def test_host_tensors_reach_cuda_and_a_training_set_too_big_stays_on_the_host(monkeypatch):
    import reproduce.device as dev

    device = resolve_device("cuda")
    assert torch.equal(dev.host_to_device(torch.arange(5), device).cpu(), torch.arange(5))
    assert dev.resident((torch.zeros(4),), device)[0].device.type == "cuda"
    monkeypatch.setattr(dev, "RESIDENT_SHARE", 0.0)
    assert dev.resident((torch.zeros(4),), device)[0].device.type == "cpu"
