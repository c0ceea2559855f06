"""Where a cell trains: device selection, determinism settings, and the facts provenance records.

The device is not a study field: it does not change what a cell means, only how fast (and, on GPU,
in which rounding) it is computed. Precedence: ``reproduce train --device``, then
``$REPRODUCE_DEVICE``, then ``device:`` in the user config's ``run:`` section
(``reproduce.user_config``), then ``auto`` (CUDA when available, else the CPU).

Determinism (``configure_determinism``): on CUDA, TF32 is off for matmuls and cuDNN (per-sample
gradients are compared with brute force at 1e-4 relative; TF32 rounds to 10 mantissa bits), cuDNN
picks deterministic algorithms and does not benchmark, and cuBLAS gets a fixed workspace so its
reductions are repeatable. What stays different: results on a GPU are bit-identical only for the
same GPU model, driver, CUDA/cuDNN and torch versions; they differ from the CPU's in the last bits,
which noisy DP training amplifies (the study's tolerances, not bit equality, compare across devices).

What lives on the device (``reproduce.training.cell.run_cell``): the model with escnn's hidden bases, the
training set when it fits (``resident``), the views, the noise and evaluation. Random draws that must
not depend on micro-batching (the views' integers, the Poisson sample) stay on seeded CPU generators,
as on the CPU today, and reach the device through ``host_to_device`` (pinned, asynchronous).
"""

from __future__ import annotations

import os
import re

import torch

from reproduce.errors import ReproduceError

DEVICE_ENV = "REPRODUCE_DEVICE"
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceError(ReproduceError):
    """A device that was asked for but does not exist here (a usage error: exit code 2)."""

    exit_code = 2


def requested_device(flag: str | None = None, *, config: dict | None = None) -> str:
    """The device spec in force: the flag, else ``$REPRODUCE_DEVICE``, else the user config, else "auto"."""
    if flag:
        return flag
    if os.environ.get(DEVICE_ENV):
        return os.environ[DEVICE_ENV]
    if config is None:
        from reproduce.user_config import load_user_config

        config = load_user_config()
    return config.get("device") or "auto"


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device that exists here (DeviceError otherwise)."""
    spec = str(spec).strip().lower()
    if not _SPEC.match(spec):
        raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} requested, but no CUDA device is available here "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                "use --device cpu or auto"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {spec!r} requested, but only {torch.cuda.device_count()} CUDA device(s) "
                f"are visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
            )
        device = torch.device("cuda", index)
    return device


def configure_determinism(device: torch.device) -> None:
    """Make CUDA kernels as repeatable and as exact as they can be (no-op on the CPU)."""
    if device.type != "cuda":
        return
    # Must be set before cuBLAS creates its handle; deterministic reductions need a fixed workspace.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (random draws, indices) on ``device`` without stalling the host.

    From pageable memory a CUDA copy waits for the stream to drain; pinned and non-blocking it is
    queued behind the kernels that come before it. The CPU gets ``t`` itself.
    """
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


#: share of the free device memory a training set may take to be held there
RESIDENT_SHARE = 0.25


def resident(tensors: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The training set's tensors on ``device`` when they fit in ``RESIDENT_SHARE`` of its free
    memory (MedMNIST, CIFAR-10: batches are then gathered by index on the device, with no per-step
    copies); otherwise left on the host, and the trainer copies each micro-batch."""
    if device.type != "cuda":
        return tuple(t.to(device) for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    if sum(t.numel() * t.element_size() for t in tensors) > RESIDENT_SHARE * free:
        return tensors
    return tuple(t.to(device) for t in tensors)


def device_facts(device: torch.device) -> dict:
    """What provenance records about the device a cell actually ran on."""
    facts = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(
            index=device.index or 0,
            name=props.name,
            memory_bytes=int(props.total_memory),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
        )
    return facts


def device_label(facts: dict | str) -> str:
    """One line for reports: "cpu", or "cuda:0 NVIDIA H200" (older results recorded a plain string)."""
    if isinstance(facts, str):
        return facts
    if facts.get("type") != "cuda":
        return str(facts.get("type"))
    return f"cuda:{facts.get('index', 0)} {facts.get('name', '')}".strip()
