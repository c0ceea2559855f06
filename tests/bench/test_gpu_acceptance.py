"""bench/gpu_acceptance.py, the one command for a lent GPU, rehearsed on the CPU so that it cannot rot:
the whole --quick run (a verdict per item, no failure, every figure in the JSON), what it does when
items fail or the budget runs out, and its host-device copy check on synthetic profiler events (the
branch only a GPU reaches)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_acceptance.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GA = _module()


def _run(tmp_path: Path, *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "tmp.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, json.loads(out.read_text())


def _verdicts(stdout: str) -> dict[str, list[str]]:
    """Each item's verdict lines: "<item> <title> PASS|FAIL|SKIP  <figure>  (<seconds> s of <budget> s)"."""
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        m = re.match(r"^([a-h]) (\w+) +(PASS|FAIL|SKIP)  .+  \(\d+\.\d s of \d+ s\)$", line)
        if m:
            assert GA.TITLES[m.group(1)] == m.group(2), line
            found.setdefault(m.group(1), []).append(m.group(3))
    return found


@pytest.mark.slow
def test_the_quick_cpu_rehearsal_passes_every_item_it_can_and_records_every_figure(tmp_path):
    proc, record = _run(tmp_path, "--quick")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    verdicts = _verdicts(proc.stdout)
    assert {k: len(v) for k, v in verdicts.items()} == {k: 1 for k in GA.BUDGET_S}, proc.stdout
    assert "FAIL" not in {v[0] for v in verdicts.values()}, proc.stdout
    assert re.search(r"^summary \(cpu .*--quick\): 6 PASS, 0 FAIL, 2 SKIP in \d+ s", proc.stdout, re.M), proc.stdout
    items = record["items"]
    assert list(items) == list(GA.BUDGET_S) and record["quick"] and record["device"]["type"] == "cpu"
    assert record["summary"] == {"PASS": 6, "FAIL": 0, "SKIP": 2}
    for name, item in items.items():
        assert item["figure"] and item["figures"] and item["seconds"] > 0, (name, item)
        assert item["seconds"] <= item["budget_s"] == GA.BUDGET_S[name][1], (name, item)
    # what needs CUDA says SKIP on the CPU, having run as far as it can without it
    assert items["a"]["status"] == "SKIP" and items["a"]["figures"]["selected"] >= 10
    assert items["a"]["figures"]["skipped"] == items["a"]["figures"]["selected"]
    assert items["h"]["status"] == "SKIP" and items["h"]["figures"]["python_frames"] > 0
    assert any(k.startswith("reproduce/training/loop.py") for k in items["h"]["figures"]["copy_ops_by_suite_frame"])
    assert {n for n, i in items.items() if i["status"] == "PASS"} == set("bcdefg")
    # the figures each item is for
    assert items["b"]["figures"]["cases"] > 0 and items["b"]["figures"]["mismatched"] == 0
    c = items["c"]["figures"]
    assert c["per_sample_grads"]["dp_over_nonprivate"] > 0 and c["epoch_cost"]["bridging_the_gap"]["rows"]
    assert set(c["targets"]) == set(GA.TARGETS) - {"cifar10_cell_gpu_hours"}  # --quick projects one study
    assert all(t["met"] is None for t in c["targets"].values())  # judged on CUDA only
    cells = items["d"]["figures"]["cells"]
    assert set(cells) == set(GA.PAPER_STUDIES)
    for name, cell in cells.items():
        assert cell["cell"] == GA.CELLS[name][0] and cell["device"]["type"] == "cpu", cell
        assert cell["epsilon"] == pytest.approx(float(cell["cell"].split("-")[2]), abs=0.02) and cell["steps"] > 0
    assert all(items["e"]["figures"]["identical"].values())
    f = items["f"]["figures"]
    assert f["killed_exit"] == -9 and f["resumed_after_epoch"] >= 1 and f["epsilon_equal"]
    assert all(check["ok"] for check in f["checked"].values())
    g = items["g"]["figures"]["cells"]
    assert len(g) == 2 and all(s["state"] == "done" and s["device"] == "cpu" for s in g.values())


def test_failing_and_timed_out_items_still_give_a_verdict_a_summary_and_the_json(tmp_path):
    # a's pytest (importing torch, escnn and every test module) needs more than the 4 s: it is killed at
    # its timeout, and the budget is then spent for b
    proc, record = _run(tmp_path, "--quick", "--items", "a", "b", "--budget-s", "4", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    verdicts = _verdicts(proc.stdout)
    assert verdicts == {"a": ["FAIL"], "b": ["FAIL"]}, proc.stdout
    assert re.match(r"timed out after \d s", record["items"]["a"]["figure"]), record["items"]["a"]
    assert record["items"]["b"]["figure"] == "not run: the 4 s budget is spent", record["items"]["b"]
    assert record["summary"] == {"PASS": 0, "FAIL": 2, "SKIP": 0} and "summary (cpu" in proc.stdout
    assert (tmp_path / "tmp.logs" / "a.log").exists()


def test_the_h100_budget_fits_the_eight_minutes():
    assert sum(gpu for gpu, _ in GA.BUDGET_S.values()) <= GA.TOTAL_BUDGET_S == 480
    assert set(GA.BUDGET_S) == set(GA.ITEMS) == set(GA.TITLES)


class _Kernel:
    def __init__(self, name):
        self.name = name


class _Event:
    """Enough of torch.autograd.profiler_util.FunctionEvent: name, device type, parent, kernels, stack."""

    def __init__(self, name, parent=None, kernels=(), device="DeviceType.CPU", stack=()):
        self.name, self.cpu_parent, self.device_type, self.stack = name, parent, device, list(stack)
        self.kernels = [_Kernel(k) for k in kernels]


def test_the_copy_check_tells_designed_from_other_host_device_copies():
    """The CUDA branch of item h on events shaped as torch's profiler gives them (Python frames as
    ``file.py(line): function`` parents; a copy's kernels on the op that launched it)."""
    outer = _Event("bench/gpu_acceptance.py(700): profiled_train")
    loop = _Event("/srv/repo/reproduce/training/loop.py(72): train", outer)
    views = _Event(
        "/srv/repo/reproduce/device.py(93): host_to_device", _Event("reproduce/data/augment.py(54): _crop", loop)
    )
    engine = _Event("reproduce/privacy/fast_engine.py(127): backward", loop)
    events = [
        outer,
        loop,
        views,
        engine,
        _Event("aten::copy_", _Event("aten::_to_copy", _Event("aten::to", views)), ["Memcpy HtoD (Pinned -> Device)"]),
        _Event("aten::copy_", views, ["Memcpy HtoD (Pageable -> Device)"]),
        _Event(
            "aten::_local_scalar_dense",
            _Event("aten::item", _Event("aten::is_nonzero", loop)),
            ["Memcpy DtoH (Device -> Pageable)"],
        ),
        _Event("aten::copy_", _Event("aten::to", engine), ["Memcpy DtoH (Device -> Pageable)"]),
        _Event("aten::copy_", engine, ["Memcpy DtoD (Device -> Device)"]),  # device-internal: not counted
        _Event("Memcpy HtoD (Pinned -> Device)", device="DeviceType.CUDA"),
        _Event("Memcpy DtoD (Device -> Device)", device="DeviceType.CUDA"),
    ]
    found = GA.classify_copies(events)
    assert found["copy_sites_from"] == "ops with copy kernels"
    assert found["designed_copies"] == {
        "reproduce/device.py:93 host_to_device (aten::to, Memcpy HtoD (Pinned -> Device))": 1,
        "reproduce/device.py:93 host_to_device (aten::copy_, Memcpy HtoD (Pageable -> Device))": 1,
        "reproduce/training/loop.py:72 train (aten::item, Memcpy DtoH (Device -> Pageable))": 1,
    }
    assert found["undesigned_copies"] == {
        "reproduce/privacy/fast_engine.py:127 backward (aten::to, Memcpy DtoH (Device -> Pageable))": 1
    }
    assert found["pageable_host_to_device"] == 1
    assert found["copies_by_kind"] == {"Memcpy HtoD (Pinned -> Device)": 1, "Memcpy DtoD (Device -> Device)": 1}
    # without kernels on the ops, the runtime calls stand in
    runtime = [loop, engine, _Event("cudaMemcpyAsync", _Event("aten::copy_", engine))]
    found = GA.classify_copies(runtime)
    assert found["copy_sites_from"] == "runtime calls"
    assert found["undesigned_copies"] == {
        "reproduce/privacy/fast_engine.py:127 backward (aten::copy_, cudaMemcpy* (kind unknown))": 1
    }
    assert GA.classify_copies([loop])["designed_copies"] == {} == GA.classify_copies([loop])["undesigned_copies"]


def test_the_docs_give_each_items_budget_as_the_script_has_it():
    rows = re.findall(
        r"^\| ([a-h]) `(\w+)` \|.*\| (\d+) s \|$", (REPO / "docs" / "gpus-and-slurm.md").read_text(), re.M
    )
    assert {item: (title, int(s)) for item, title, s in rows} == {
        item: (GA.TITLES[item], gpu) for item, (gpu, _) in GA.BUDGET_S.items()
    }
