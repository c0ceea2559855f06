"""The trainer's DP path: splitting a logical batch into physical micro-batches changes nothing."""

from __future__ import annotations

import pytest

from reproduce.data.stand_in import stand_in
from reproduce.records.result import CellResult
from reproduce.study import Study
from reproduce.training.cell import run_cell
from tests.conftest import tiny_study


def _study(*, physical: int, group: str, k: int, batch_size: int = 48, steps: int = 4) -> Study:
    """One DP cell on bloodmnist's stand-in: ``steps`` logical batches of ``batch_size``, in micro-batches
    of ``physical``."""
    return tiny_study(
        name="microbatch",
        model={"widths": {"e": [4, 4, 8], "C4": [2, 2, 4]}},
        training={
            "optimizer": {"lr": 0.2},
            "batch_size": batch_size,
            "physical_batch_size": physical,
            "epochs": None,
            "steps": steps,
            "max_train_samples": 240,
        },
        dataset="bloodmnist",
        group=group,
        epsilon=8,
        multiplicity=k,
    )


def _train(physical: int, group: str, k: int) -> CellResult:
    study = _study(physical=physical, group=group, k=k)
    (cell,) = study.cells()
    splits = stand_in(cell.dataset, size=study.data.size, seed=0)
    return run_cell(cell, data_root=None, progress=False, splits=splits)


@pytest.mark.parametrize("group, k", [("C4", 1), ("e", 2)])
def test_micro_batches_give_the_same_private_training_as_whole_batches(group, k):
    """BatchMemoryManager + DPOptimizer clip per physical batch and add noise once per logical batch:
    the same Poisson batches, clipped sums and noise, so the same model up to float summation order."""
    whole, split = _train(48, group, k), _train(7, group, k)  # 7: uneven splits of every Poisson batch
    assert whole.privacy == split.privacy  # same steps, sample rate, noise, epsilon
    assert split.metrics["steps"] == whole.metrics["steps"] == 4
    # (the logged training loss is the last micro-batch's, so it differs by design)
    for name in ("val_acc", "val_auc", "test_acc", "test_auc"):
        assert split.metrics[name] == pytest.approx(whole.metrics[name], rel=1e-4, abs=1e-4), name
    # share of near-zero entries of each applied update (clipped sum + noise): same updates
    # (a tolerance of a few entries: rounding can move an entry across the 1e-5 threshold)
    l0 = [(a.l0_update, b.l0_update, a.l0_clipped, b.l0_clipped) for a, b in zip(whole.steps, split.steps)]
    assert l0 and all(abs(a - b) < 1e-3 and abs(c - d) < 1e-3 for a, b, c, d in l0), l0


def test_empty_poisson_batches_are_noise_only_steps_not_divergence():
    """q = 1/64: about a third of the Poisson batches are empty; each is still one accounted DP step."""
    import torch
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import TensorDataset

    study = _study(physical=1, group="e", k=1, batch_size=1, steps=12)
    (cell,) = study.cells()
    splits = stand_in(cell.dataset, size=study.data.size, seed=0)
    n = len(splits.labels("train"))
    # the trainer's sampler (same generator seed as reproduce.privacy.dp_sgd): empty batches do occur
    loader = DPDataLoader(
        TensorDataset(torch.arange(n)),
        sample_rate=1 / n,
        generator=torch.Generator().manual_seed(cell.seed * 1_000_003 + 1),
    )
    sizes = [len(b[0]) for b, _ in zip(loader, range(12))]
    assert 0 in sizes
    result = run_cell(cell, data_root=None, progress=False, splits=splits)
    assert result.metrics["steps"] == result.privacy.steps == 12


@pytest.mark.parametrize("saved", [True, False], ids=["after an epoch", "before the first epoch ends"])
def test_ctrl_c_exits_130_keeps_the_checkpoint_and_says_how_to_resume(saved, temp_study, tmp_path, monkeypatch, capsys):
    import reproduce.training.cell
    from reproduce.cli import main

    cell = "embedded-e-8-1-0"
    checkpoint = tmp_path / "checkpoints" / "tiny" / f"{cell}.ckpt"

    def interrupted(*args, checkpoint, **kwargs):
        if saved:  # the loop saved an epoch before the user pressed Ctrl-C
            checkpoint.parent.mkdir(parents=True)
            checkpoint.write_bytes(b"epoch 1")
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce.training.cell, "run_cell", interrupted)
    code = main(
        [
            "train",
            str(temp_study()),
            "--cell",
            cell,
            "--checkpoint-dir",
            str(tmp_path / "checkpoints"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 130 and len(err.splitlines()) == 1, err
    assert f"{checkpoint}" in err and "rerun" in err, err
    assert checkpoint.exists() == saved and (checkpoint.read_bytes() == b"epoch 1" if saved else True)
    assert not (tmp_path / "out").exists()
