"""What a measurement was taken on: date, command line, versions and the device, recorded with
every benchmark result and calibrated profile. torch is imported by the functions that ask it."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

import maskc


def now() -> str:
    """The current UTC time, to the second, in ISO 8601."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions(command: str | None) -> dict[str, Any]:
    """Date, command line (``sys.argv`` when None), and the versions of Python, torch, CUDA, Triton and maskc."""
    import torch

    env: dict[str, Any] = {
        "date": now(),
        "command": command if command is not None else " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "maskc": maskc.__version__,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    return env


def environment(device, command: str | None) -> dict[str, Any]:
    """:func:`versions`, the platform, numpy, the checkout's git commit and the device: the GPU's
    name, memory, compute capability, cuDNN and driver on CUDA, the processor and threads on CPU."""
    import torch

    env = versions(command)
    env.update({"platform": platform.platform(), "numpy": np.__version__, "maskc_git": _git_head(), "device": str(device)})
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["cudnn"] = torch.backends.cudnn.version()
        env["driver"] = _nvidia_driver()
    else:
        env["gpu"] = None
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
    return env


def _git_head() -> str | None:
    """The commit of the checkout maskc runs from (``+dirty`` with uncommitted changes), if it is one."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001
        return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except Exception:  # noqa: BLE001
        return None
