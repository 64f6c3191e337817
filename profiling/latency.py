"""Latency profile: every candidate component timed on this machine, at one input shape.

The backbone segments are timed in sequence, the way every cascade runs them: one run is the
whole backbone from the image, with a sample taken around each segment, so a segment is timed
with the caches the previous one left behind (a segment timed alone and repeated keeps its
weights hot and looked ~10% cheaper than inside the cascade on a CPU). Each head is timed on its
position's feature, each exit decision on its head's native logits, the final head on the tail
output, and the bilinear upsampling of every exit's (and the final head's) native logits to the
input size, which the cascade pays for the exit an image leaves at. One row per component is
committed as soon as it is measured, keyed by (model, device fingerprint, kind, name, input
shape, batch, dtype), so an interrupted run continues and a re-run measures only what is missing.
The closed-loop checks that follow are stored too, one row of kind "path" each as it is done; a
re-run that finds every component stored completes the checks that are missing.

What runs the components and how samples are taken are injected (`profiling.backends`): torch
eager and the in-sequence protocol by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from sqlalchemy import Engine

from db import repository
from db.records import DeviceRecord
from db.session import session_scope
from profiling.backends import (
    InSequence,
    TimingBackend,
    TimingProtocol,
    TorchEager,
    Workload,
    time_chain,
)
from profiling.closed_loop import (
    WARN_DEVIATION,
    PathCheck,
    check_paths,
    choose_paths,
    path_components,
)
from profiling.device import device_fingerprint
from profiling.errors import ProfilingError
from profiling.timing import LatencyStats, TimingSettings
from training.flops import network_components
from training.heads import FINAL_EXIT
from training.policy import ExitPolicy

if TYPE_CHECKING:
    from training.network import MessNetwork

ProgressFn = Callable[[int, int, str], None]  # (steps done, steps total, current step)

@dataclass(frozen=True, kw_only=True)
class LatencySettings:
    """Where and how to time: batch, dtype, threads and the timing effort."""

    batch: int = 1
    dtype: torch.dtype = torch.float32
    threads: int = 1
    timing: TimingSettings = field(default_factory=TimingSettings)
    # None: every path after new component timings, else the paths not checked yet;
    # True: every path; False: none.
    closed_loop: bool | None = None
    max_paths: int = 4

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("batch: must be >= 1")
        if self.threads < 1:
            raise ValueError("threads: must be >= 1")
        if self.max_paths < 1:
            raise ValueError("max_paths: must be >= 1")
        if self.dtype not in (torch.float32, torch.float16):
            raise ValueError("dtype: must be torch.float32 or torch.float16")

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass(frozen=True, kw_only=True)
class LatencyResult:
    """What a run did: the device row, components timed now, those already stored, warnings."""

    device: DeviceRecord
    measured: tuple[str, ...]
    skipped: tuple[str, ...]
    paths: tuple[PathCheck, ...] = ()
    warnings: tuple[str, ...] = ()


def component_key(kind: str, name: str) -> str:
    """Display key of a component, e.g. `segment:layer2.1`, `head:layer2.1/nocrm-b0-fcn`."""
    return f"{kind}:{name}"


def check_input_size(network: MessNetwork, input_size: tuple[int, int], device: torch.device,
                     dtype: torch.dtype = torch.float32) -> None:
    """Refuse input sizes the backbone cannot take: smaller than its deepest stride, or failing.

    Padding lets most backbones run on tiny inputs, but below the deepest stride the last
    features are padding only and their timings mean nothing.

    Raises:
        ProfilingError: naming the smallest size that works.
    """
    h, w = input_size
    stride = max((p.stride for p in network.positions), default=1)
    if h < stride or w < stride:
        raise ProfilingError(
            f"the network cannot take input size {h}x{w}: its deepest stride is {stride}; "
            f"use --input-size of at least {stride}x{stride}"
        )
    x = torch.zeros(1, 3, h, w, device=device, dtype=dtype)
    try:
        with torch.inference_mode():
            network.forward_native(x)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProfilingError(
            f"the network cannot take input size {h}x{w} ({first}); try another --input-size"
        ) from exc


def time_segments_in_sequence(network: MessNetwork, x: torch.Tensor, *, device: torch.device,
                              settings: TimingSettings) -> dict[str, LatencyStats]:
    """Per segment, samples taken inside whole backbone runs (image -> tail), as the cascade
    runs them (`profiling.backends.time_chain` on torch eager)."""
    names = [p.name for p in network.positions] + ["tail"]
    workload = Workload(device=device, chain=tuple(zip(names, network.segments, strict=True)),
                        chain_input=x)
    return {name: stats for (_, name), stats in time_chain(workload, settings=settings).items()}


def register_device(engine: Engine, name: str, fingerprint: dict) -> tuple[DeviceRecord, list[str]]:
    """Store the device; warn when this name was profiled before from another fingerprint."""
    warnings: list[str] = []
    with session_scope(engine) as s:
        known = [d for d in repository.list_devices(s) if d.name == name]
        record = repository.upsert_device(s, name=name, fingerprint=fingerprint)
    others = [d for d in known if d.fingerprint_sha256 != record.fingerprint_sha256]
    if others:
        changed = sorted(
            k for k in set(fingerprint) | set(others[-1].fingerprint)
            if fingerprint.get(k) != others[-1].fingerprint.get(k)
        )
        warnings.append(
            f"device '{name}' was profiled before with another fingerprint "
            f"(differs in: {', '.join(changed)}); the two are kept apart"
        )
    return record, warnings


def profile_latency(
    engine: Engine,
    network: MessNetwork,
    *,
    model_id: int,
    device_name: str,
    input_size: tuple[int, int],
    device: torch.device | None = None,
    settings: LatencySettings | None = None,
    policy: ExitPolicy | None = None,
    backend: TimingBackend | None = None,
    protocol: TimingProtocol | None = None,
    progress: ProgressFn | None = None,
) -> LatencyResult:
    """Time every candidate component not yet stored for this model, device and input shape,
    then the closed-loop paths not yet checked.

    Args:
        engine: the store.
        network: a `MessNetwork`; moved to `device` and `settings.dtype` here.
        model_id: the network's row.
        device_name: the user's name for this machine (`jetson`, `laptop-cpu`).
        input_size: (H, W) of the profiled input.
        device: torch device to time on (CPU by default).
        settings: batch, dtype, threads, timing effort, closed loop.
        policy: the exit policy the closed loop's cascades decide with (the accuracy
            profile's; None: the network's own decision).
        backend: the runtime that runs the components (torch eager by default).
        protocol: how samples are taken (`InSequence(settings.timing)` by default).
        progress: called with (done, total, component key) after each component and path.

    Raises:
        ProfilingError: an input size the network cannot take.
    """
    settings = settings or LatencySettings()
    device = device or torch.device("cpu")
    backend = backend or TorchEager()
    protocol = protocol or InSequence(settings.timing)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        network.eval().to(device=device, dtype=settings.dtype)
        check_input_size(network, input_size, device, settings.dtype)
        fingerprint = {**device_fingerprint(device, dtype=settings.dtype, threads=settings.threads),
                       **backend.fingerprint()}
        record, warnings = register_device(engine, device_name, fingerprint)
        shape = (settings.batch, 3, *input_size)
        with session_scope(engine) as s:
            stored = {(r.kind, r.name) for r in repository.load_latency(
                s, model_id=model_id, device_id=record.id, input_shape=shape)
                if r.batch == settings.batch and r.dtype == settings.dtype_name}
        costs = {(c.kind, c.name): c for c in network_components(network, input_size)}
        torch.manual_seed(0)
        x = torch.randn(*shape, device=device, dtype=settings.dtype)
        workload = backend.workload(network, x)
        keys = workload.keys()
        missing = [key for key in keys if key not in stored]
        paths = _paths_to_check(network, costs, settings, stored, measured_now=bool(missing))
        total = len(missing) + len(paths)
        measured: list[str] = []

        def component_done(key: tuple[str, str], stats: LatencyStats) -> None:
            _store(engine, model_id, record.id, key[0], key[1], shape, settings, stats,
                   costs[key])
            measured.append(component_key(*key))
            if progress:
                progress(len(measured), total, component_key(*key))

        if missing:
            protocol.measure(workload, missing, component_done)
        checks = _closed_loop(
            engine, network, x, model_id=model_id, device_id=record.id, shape=shape,
            settings=settings, paths=paths, costs=costs,
            policy=policy if policy is not None else network.decision.policy,
            backend=backend, protocol=protocol,
            progress=(lambda i, name: progress(len(missing) + i, total, f"path:{name}"))
            if progress else None,
        )
        warnings += [
            f"the sum of component latencies is {abs(c.deviation):.0%} "
            f"{'below' if c.deviation > 0 else 'above'} the measured cascade on path {c.name} "
            f"({c.predicted_ms:.2f} ms vs {c.measured.mean_ms:.2f} ms); the search's latencies "
            "are off by as much on this device"
            for c in checks if abs(c.deviation) > WARN_DEVIATION
        ]
        skipped = tuple(component_key(k, n) for k, n in keys if (k, n) in stored)
        return LatencyResult(device=record, measured=tuple(measured), skipped=skipped,
                             paths=tuple(checks), warnings=tuple(warnings))
    finally:
        torch.set_num_threads(previous_threads)


def _paths_to_check(network: MessNetwork, costs: dict, settings: LatencySettings,
                    stored: set[tuple[str, str]], *, measured_now: bool) -> list[tuple[str, ...]]:
    """The closed-loop paths this run checks: all of them after new component timings (the
    sums they are compared with changed), else those without a stored check, so a pass killed
    between the component timings and the checks completes them on its next run.
    `settings.closed_loop` True checks every path, False none."""
    if settings.closed_loop is False:
        return []
    head_gflops = {n: c.gflops for (k, n), c in costs.items() if k == "head"}
    paths = choose_paths(network, head_gflops, max_paths=settings.max_paths)
    if settings.closed_loop or measured_now:
        return paths
    return [p for p in paths if ("path", p[0] if p else FINAL_EXIT) not in stored]


def _closed_loop(engine: Engine, network: MessNetwork, x: torch.Tensor, *, model_id: int,
                 device_id: int, shape: tuple[int, ...], settings: LatencySettings,
                 paths: list[tuple[str, ...]], costs: dict, policy: ExitPolicy,
                 backend: TimingBackend, protocol: TimingProtocol,
                 progress: Callable[[int, str], None] | None) -> list[PathCheck]:
    """Check each path against the stored component means; commit each check as it is done."""
    if not paths:
        return []
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=device_id,
                                       input_shape=shape, batch=settings.batch,
                                       dtype=settings.dtype_name)
    means = {(r.kind, r.name): r.mean_ms for r in rows}
    checks: list[PathCheck] = []

    def path_done(check: PathCheck) -> None:
        _store_path(engine, model_id, device_id, shape, settings, check, network, costs)
        checks.append(check)
        if progress:
            progress(len(checks), check.name)

    check_paths(network, x, means, paths=paths, policy=policy, backend=backend,
                protocol=protocol, done=path_done)
    return checks


def _store_path(engine: Engine, model_id: int, device_id: int, shape: tuple[int, ...],
                settings: LatencySettings, check: PathCheck, network: MessNetwork,
                costs: dict) -> None:
    """One closed-loop check as a latency row of kind "path" (name: the exit taken); a later
    check of the same path replaces it."""
    parts = [costs.get(key) for key in path_components(network, check.exits, check.taken)]
    with session_scope(engine) as s:
        repository.upsert_latency(
            s, model_id=model_id, device_id=device_id, kind="path", name=check.taken,
            input_shape=shape, batch=settings.batch, dtype=settings.dtype_name,
            samples_ms=list(check.measured.samples_ms),
            gflops=float(sum(c.gflops for c in parts if c is not None)),
            params=int(sum(c.params for c in parts if c is not None)),
            predicted_ms=float(check.predicted_ms),
        )


def _store(engine: Engine, model_id: int, device_id: int, kind: str, name: str,
           shape: tuple[int, ...], settings: LatencySettings, stats: LatencyStats,
           cost) -> None:
    with session_scope(engine) as s:  # one transaction per component: resumable
        repository.upsert_latency(
            s, model_id=model_id, device_id=device_id, kind=kind, name=name,
            input_shape=shape, batch=settings.batch, dtype=settings.dtype_name,
            samples_ms=list(stats.samples_ms),
            gflops=float(cost.gflops) if cost is not None else 0.0,
            params=int(cost.params) if cost is not None else 0,
        )
