"""Which machine a latency profile was measured on: the torch device and its fingerprint.

A device name (`jetson`, `laptop-cpu`) is the user's word; the fingerprint is what makes two
measurements comparable. The store keys devices on both, so the same name measured on other
hardware or software is kept apart instead of silently mixed.
"""

from __future__ import annotations

import os
import platform

import torch

from profiling.errors import ProfilingError

# Machine facts have one home, the torch-free probe script (it runs where mess-dse cannot).
from profiling.ort_probe import cpu_model, power_mode
from profiling.timing import keep_heap_allocations

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def resolve_device(kind: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` as a torch device, checking that it exists here.

    Raises:
        ProfilingError: for an unknown kind or CUDA requested where there is none.
    """
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda" or kind.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ProfilingError(
                f"{kind} requested but this machine has no CUDA device; use --compute cpu"
            )
        dev = torch.device(kind)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ProfilingError(
                f"{kind} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    raise ProfilingError(f"unknown compute device {kind!r}; use cpu or cuda")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Profile dtype; float16 only on CUDA (CPU half-precision convolutions are not a deployment).

    Raises:
        ProfilingError: for an unknown dtype or float16 without CUDA.
    """
    if name not in DTYPES:
        raise ProfilingError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    if name == "float16" and device.type != "cuda":
        raise ProfilingError("--dtype float16 needs a CUDA device; use --dtype float32 on CPU")
    return DTYPES[name]


def device_fingerprint(device: torch.device, *, dtype: torch.dtype, threads: int) -> dict:
    """What makes timings on this machine comparable: hardware, software, threads, dtype.

    Only stable facts go in (no hostname, no load), so re-profiling the same machine maps to
    the same fingerprint and re-uses the stored rows.
    """
    fingerprint: dict = {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "compute": device.type,
        "threads": int(threads),
        "dtype": str(dtype).removeprefix("torch."),
        "gpu": None,
        "cuda": None,
        "cudnn": None,
        # Timings taken under another allocator rule are not comparable (profiling.timing).
        "allocator": "heap-kept" if keep_heap_allocations() else "default",
    }
    if device.type == "cuda":
        fingerprint["gpu"] = torch.cuda.get_device_name(device)
        fingerprint["cuda"] = torch.version.cuda
        cudnn = torch.backends.cudnn.version()
        fingerprint["cudnn"] = int(cudnn) if cudnn is not None else None
    power = power_mode()
    if power is not None:
        fingerprint["power_mode"] = power
    return fingerprint
