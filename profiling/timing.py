"""Timing harness on torch: warm-up, repeated runs, raw per-run samples in milliseconds.

`measure_torch` runs the interleaved protocol (`profiling.protocol`: every component once per
round, many rounds, median estimate, stability checks, bounded re-measurement) on torch
callables. `time_callable` and `run_protocol` are the older protocol (each callable timed to
completion in turn), kept for single callables and for the benchmark that compares the two.

Why not `torch.utils.benchmark.Timer.blocked_autorange`: it times *blocks* of runs and keeps one
mean per block, so the per-run distribution (p90, p99, max) that the store keeps is lost. A plain
`time.perf_counter` loop gives one sample per run; on CUDA each run is bracketed by
`torch.cuda.synchronize` so a sample is the kernel time, not the launch time. Like the benchmark
module we run under `no_grad` and with a fixed number of threads.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from profiling.load import LoadProbe, SystemLoadProbe
from profiling.ort_probe import keep_heap_allocations as _keep_heap_allocations
from profiling.protocol import ProtocolResult, ProtocolSettings, measure

K = TypeVar("K", bound=Hashable)


# One settings type for both protocols: the interleaved one reads every field, the older one
# (`run_protocol`) only warm-up, repeat, min_time_s and max_repeat.
TimingSettings = ProtocolSettings


@dataclass(frozen=True, kw_only=True)
class LatencyStats:
    """Summary of raw samples of one component, in milliseconds."""

    samples_ms: tuple[float, ...] = field(repr=False)
    n: int = 0
    mean_ms: float = 0.0
    std_ms: float = 0.0
    min_ms: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("samples_ms: need at least one sample")
        if any(not math.isfinite(s) or s < 0 for s in self.samples_ms):
            raise ValueError("samples_ms: samples must be finite and >= 0")

    @classmethod
    def from_samples(cls, samples_ms: list[float] | tuple[float, ...] | np.ndarray) -> LatencyStats:
        arr = np.asarray(samples_ms, dtype=np.float64)
        if arr.size == 0:
            raise ValueError("samples_ms: need at least one sample")
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return cls(
            samples_ms=tuple(float(s) for s in arr),
            n=int(arr.size),
            mean_ms=float(arr.mean()),
            std_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            min_ms=float(arr.min()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            max_ms=float(arr.max()),
        )


@functools.cache
def keep_heap_allocations() -> bool:
    """Stop glibc from returning large activation buffers to the OS after every call.

    Why: by default glibc serves big blocks with mmap and unmaps them on free, with a threshold
    that adapts to the process's history. A network's activations at high resolution then cost
    fresh page faults on some runs and not others, so the same segment measured 3.5 ms in one
    process and 9 ms in the next on this project's CPU (bimodal across processes, steady within
    one). Keeping freed memory in the heap makes every process measure the warm case, which is
    also what a long-running deployment sees; `dse verify` and the latency profile both call
    this, so predicted and measured numbers follow the same rule. Returns True when applied
    (Linux with glibc), False elsewhere (nothing to do there). The mallopt call itself lives in
    the torch-free probe script (`profiling.ort_probe`), which applies the same rule on devices.
    """
    return _keep_heap_allocations()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a clock read after it is honest (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_protocol(
    run: Callable[[bool], float], *, device: torch.device, settings: TimingSettings
) -> None:
    """The timing protocol every measurement follows, around `run(record) -> seconds`.

    Keeps heap allocations, runs `settings.warmup` untimed runs (`record` False), then timed
    runs until both `settings.repeat` runs and `settings.min_time_s` seconds are reached (capped
    at `settings.max_repeat`). `run` takes its own samples; it must synchronize `device` before
    reading the clock.
    """
    keep_heap_allocations()
    with torch.inference_mode():
        for _ in range(settings.warmup):
            run(False)
        synchronize(device)
        spent, runs = 0.0, 0
        while runs < settings.repeat or (
            spent < settings.min_time_s and runs < settings.max_repeat
        ):
            spent += run(True)
            runs += 1


def time_callable(
    fn: Callable[[], object], *, device: torch.device, settings: TimingSettings
) -> LatencyStats:
    """Time `fn()` (no arguments: bind module and input with a lambda) under `run_protocol`."""
    samples: list[float] = []

    def run(record: bool) -> float:
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if record:
            samples.append(elapsed * 1e3)
        return elapsed

    run_protocol(run, device=device, settings=settings)
    return LatencyStats.from_samples(samples)


def time_module(
    module: torch.nn.Module, inputs: torch.Tensor, *, settings: TimingSettings
) -> LatencyStats:
    """Time `module(inputs)` on the inputs' device (the module must already be there)."""
    return time_callable(lambda: module(inputs), device=inputs.device, settings=settings)


def measure_torch(components: Sequence[tuple[K, Callable[[], object]]], *, device: torch.device,
                  settings: ProtocolSettings, load: LoadProbe | None = None,
                  reference: Collection[K] = (), clock: Callable[[], float] = time.perf_counter,
                  progress: Callable[[int, int, int], None] | None = None
                  ) -> ProtocolResult[K]:
    """The interleaved protocol (`profiling.protocol.measure`) on torch callables.

    Heap allocations kept (`keep_heap_allocations`), `inference_mode`, the device synchronized
    before every clock read; the load probe counts `torch.get_num_threads()` cores as this
    measurement's own unless one is given. `clock` is injected by tests.
    """
    keep_heap_allocations()
    probe = load if load is not None else SystemLoadProbe(torch.get_num_threads())
    with torch.inference_mode():
        return measure(components, settings=settings, load=probe, reference=reference,
                       sync=functools.partial(synchronize, device), clock=clock,
                       progress=progress)
