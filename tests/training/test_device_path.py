"""The trainer on a device: model, training set, views, noise and evaluation where the model is; the
CPU path bit-identical whether the device is asked for or chosen; CUDA refused where there is none."""

from __future__ import annotations

import pytest
import torch

from reproduce.cli import main
from reproduce.data.stand_in import stand_in
from reproduce.models import build_cell_model
from reproduce.training.cell import run_cell, training_set
from reproduce.training.plain import PlainTrainer
from reproduce.training.private import PrivateTrainer
from tests.conftest import tiny_study

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")


def cell_and_splits(*, private: bool = True, group: str = "e"):
    # Poisson batches of about 4 split into micro-batches of 2; K = 2 views: every part of the step runs.
    study = tiny_study(
        name="device_path",
        model={"widths": [2, 2, 4]},
        training={
            "optimizer": {"momentum": None},
            "batch_size": 4,
            "physical_batch_size": 2,
            "max_train_samples": 64,
            "log_every": 1,
        },
        dataset="bloodmnist",
        group=group,
        epsilon=8 if private else "non-private",
        multiplicity=2,
    )
    (cell,) = study.cells()
    return cell, stand_in(cell.dataset, size=28, seed=0)


def make_trainer(device: torch.device, *, private: bool):
    cell, splits = cell_and_splits(private=private)
    model = build_cell_model(cell, in_channels=splits.info.n_channels, num_classes=splits.info.num_classes).to(device)
    train_set = training_set(splits, max_samples=64, task=splits.info.task, device=device)
    kind = PrivateTrainer if private else PlainTrainer
    return kind.for_cell(cell, model, train_set, task=splits.info.task), train_set


def without_wall_clock(result) -> dict:
    record = result.to_json()
    record.pop("run", None)
    for key in ("train_seconds", "samples_per_second"):
        record["metrics"].pop(key, None)
    return record


@pytest.mark.parametrize("private", [True, False])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])])
def test_everything_of_the_step_is_on_the_trainers_device(device, private):
    device = torch.device(device)
    trainer, train_set = make_trainer(device, private=private)
    assert trainer.device.type == device.type
    assert all(t.device.type == device.type for t in train_set.tensors)  # resident: no per-step copies
    if private:
        assert trainer.optimizer.generator.device.type == device.type  # the noise is drawn there
        assert trainer.dp.loader.batch_sampler.generator.device.type == "cpu"  # indices stay on the host
    assert trainer.views_generator.device.type == "cpu"  # views independent of micro-batches
    steps = 0
    for x, y in trainer.batches():
        assert x.device.type == y.device.type == device.type
        loss, _ = trainer.forward_backward(x, y)
        assert loss.device.type == device.type
        steps += trainer.step()
    assert steps and all(p.device.type == device.type for p in trainer.params)


def test_a_dp_cell_on_the_cpu_asked_for_is_bit_identical_to_the_default_device_here():
    """Here the default (auto) is the CPU: asking for it must not change a single number."""
    if CUDA:
        pytest.skip("the default device is CUDA on this machine")
    cell, splits = cell_and_splits(private=True)
    auto = run_cell(cell, data_root=None, progress=False, splits=splits)
    cpu = run_cell(cell, data_root=None, progress=False, splits=splits, device="cpu")
    assert without_wall_clock(cpu) == without_wall_clock(auto)
    assert cpu.provenance.device["type"] == "cpu"
    assert cpu.metrics["epsilon"] == auto.metrics["epsilon"]


def test_the_environment_chooses_the_device_when_no_flag_does(monkeypatch):
    cell, splits = cell_and_splits(private=False)
    monkeypatch.setenv("REPRODUCE_DEVICE", "cpu")
    result = run_cell(cell, data_root=None, progress=False, splits=splits)
    assert result.provenance.device["type"] == "cpu"
    assert result.provenance.device["torch_threads"] == torch.get_num_threads()


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA device")
def test_train_with_device_cuda_exits_2_with_one_line_and_no_traceback(capsys):
    assert (
        main(
            [
                "train",
                "studies/ci.yaml",
                "--cell",
                "embedded-e-8-1-0",
                "--device",
                "cuda",
                "--out",
                "/nonexistent/never-written",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device 'cuda' requested, but no CUDA device is available")
    assert "\n" not in err and "Traceback" not in err


def test_train_with_an_unknown_device_exits_2(capsys):
    assert main(["train", "studies/ci.yaml", "--cell", "embedded-e-8-1-0", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_a_checkpoint_resumes_only_on_the_device_type_its_noise_was_drawn_on():
    trainer, _ = make_trainer(torch.device("cpu"), private=True)
    state = trainer.state()
    assert state["noise_device"] == "cpu"
    trainer.load_state(state)
    from reproduce.errors import ReproduceError

    with pytest.raises(ReproduceError, match="noise was drawn on cuda"):
        trainer.load_state({**state, "noise_device": "cuda"})


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("group", ["e", "C4"])
def test_a_dp_cell_trains_and_evaluates_on_cuda_and_records_the_gpu(group):
    cell, splits = cell_and_splits(private=True, group=group)
    result = run_cell(cell, data_root=None, progress=False, splits=splits, device="cuda")
    facts = result.provenance.device
    assert facts["type"] == "cuda" and facts["name"] and facts["memory_bytes"] > 0
    assert facts["cuda"] and facts["cudnn"] and facts["tf32"] is False and facts["cudnn_deterministic"]
    cpu = run_cell(cell, data_root=None, progress=False, splits=splits, device="cpu")
    # The accountant is exact on every device; the numbers agree to the study's tolerances, not bits.
    assert result.metrics["epsilon"] == cpu.metrics["epsilon"]
    assert result.privacy == cpu.privacy


@pytest.mark.cuda
@needs_cuda
def test_a_cuda_dp_cell_is_bit_identical_on_rerun():
    cell, splits = cell_and_splits(private=True, group="C4")
    a = run_cell(cell, data_root=None, progress=False, splits=splits, device="cuda")
    b = run_cell(cell, data_root=None, progress=False, splits=splits, device="cuda")
    assert without_wall_clock(a) == without_wall_clock(b)


@pytest.mark.cuda
@needs_cuda
def test_secure_mode_noise_is_drawn_on_the_host_and_lands_on_the_device():
    from reproduce.privacy.secure_rng import os_gaussian_noise

    reference = torch.zeros(5, device="cuda")
    assert os_gaussian_noise(1.0, reference).device.type == "cuda"
