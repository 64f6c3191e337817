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
The closed-loop checks that follow are stored too, as rows of kind "path".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import torch
from sqlalchemy import Engine

from db import repository
from db.records import DeviceRecord
from db.session import session_scope
from profiling.closed_loop import (
    WARN_DEVIATION,
    PathCheck,
    check_paths,
    choose_paths,
    path_components,
)
from profiling.device import device_fingerprint
from profiling.errors import ProfilingError
from profiling.timing import (
    LatencyStats,
    TimingSettings,
    run_protocol,
    synchronize,
    time_callable,
)

if TYPE_CHECKING:
    from training.network import MessNetwork

ProgressFn = Callable[[int, int, str], None]  # (steps done, steps total, current step)

# Threshold the decision is timed with: its cost does not depend on the value.
_TIMING_TH_PIX = 0.9


@dataclass(frozen=True, kw_only=True)
class LatencySettings:
    """Where and how to time: batch, dtype, threads and the timing effort."""

    batch: int = 1
    dtype: torch.dtype = torch.float32
    threads: int = 1
    timing: TimingSettings = field(default_factory=TimingSettings)
    closed_loop: bool | None = None  # None: only when this run measured something
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


def component_runners(network: MessNetwork, x: torch.Tensor) -> dict[tuple[str, str], Callable[[], object]]:
    """A zero-argument callable per (kind, name), each bound to its real input tensor (the
    segments' are for timing one alone; `profile_latency` times them in sequence instead).

    The decision is `network.decision` itself, the module the cascade calls; the upsampling is
    `network.upsample`, the function both cascades call, on the exit's real native logits.
    """
    runners: dict[tuple[str, str], Callable[[], object]] = {}
    features: dict[str, torch.Tensor] = {}
    size = (int(x.shape[-2]), int(x.shape[-1]))
    current = x
    with torch.inference_mode():
        for index, segment in enumerate(network.segments):
            name = network.positions[index].name if index < len(network.positions) else "tail"
            runners[("segment", name)] = partial(segment, current)
            current = segment(current)
            features[name] = current
        if network.final_skip is None:
            runners[("final", "final")] = partial(network.final_head, current)
            final_logits = network.final_head(current)
        else:  # LR-ASPP's final head also reads an earlier feature
            final_in = {"low": features[network.final_skip], "high": current}
            runners[("final", "final")] = partial(network.final_head, final_in)
            final_logits = network.final_head(final_in)
        runners[("upsample", "final")] = partial(network.upsample, final_logits, size)
        for spec in network.exits:
            feature = features[spec.position]
            runners[("head", spec.id)] = partial(network.run_head, spec.id, feature)
            logits = network.run_head(spec.id, feature)
            runners[("decision", spec.id)] = partial(network.decision, logits, _TIMING_TH_PIX)
            runners[("upsample", spec.id)] = partial(network.upsample, logits, size)
    return runners


def time_segments_in_sequence(network: MessNetwork, x: torch.Tensor, *, device: torch.device,
                              settings: TimingSettings) -> dict[str, LatencyStats]:
    """Per segment, samples taken inside whole backbone runs (image -> tail), as the cascade
    runs them; warm-up, repeats and `min_time_s` as in `time_callable`, counted in whole runs."""
    names = [p.name for p in network.positions] + ["tail"]
    samples: list[list[float]] = [[] for _ in names]

    def run(record: bool) -> float:
        feat, spent = x, 0.0
        for i, segment in enumerate(network.segments):
            start = time.perf_counter()
            feat = segment(feat)
            synchronize(device)
            elapsed = time.perf_counter() - start
            spent += elapsed
            if record:
                samples[i].append(elapsed * 1e3)
        return spent

    run_protocol(run, device=device, settings=settings)
    return {name: LatencyStats.from_samples(s) for name, s in zip(names, samples, strict=True)}


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
    progress: ProgressFn | None = None,
) -> LatencyResult:
    """Time every candidate component not yet stored for this model, device and input shape.

    Args:
        engine: the store.
        network: a `MessNetwork`; moved to `device` and `settings.dtype` here.
        model_id: the network's row.
        device_name: the user's name for this machine (`jetson`, `laptop-cpu`).
        input_size: (H, W) of the profiled input.
        device: torch device to time on (CPU by default).
        settings: batch, dtype, threads, timing effort.
        progress: called with (done, total, component key) after each component.

    Raises:
        ProfilingError: an input size the network cannot take.
    """
    settings = settings or LatencySettings()
    device = device or torch.device("cpu")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        network.eval().to(device=device, dtype=settings.dtype)
        check_input_size(network, input_size, device, settings.dtype)
        fingerprint = device_fingerprint(device, dtype=settings.dtype, threads=settings.threads)
        record, warnings = register_device(engine, device_name, fingerprint)
        shape = (settings.batch, 3, *input_size)
        with session_scope(engine) as s:
            stored = {(r.kind, r.name) for r in repository.load_latency(
                s, model_id=model_id, device_id=record.id, input_shape=shape)
                if r.batch == settings.batch and r.dtype == settings.dtype_name}
        costs = {(c.kind, c.name): c for c in network.components(input_size)}
        torch.manual_seed(0)
        x = torch.randn(*shape, device=device, dtype=settings.dtype)
        runners = component_runners(network, x)
        missing = [key for key in runners if key not in stored]
        run_loop = settings.closed_loop if settings.closed_loop is not None else bool(missing)
        head_gflops = {n: c.gflops for (k, n), c in costs.items() if k == "head"}
        paths = choose_paths(network, head_gflops, max_paths=settings.max_paths) if run_loop else []
        total = len(missing) + len(paths)
        measured: list[str] = []
        in_sequence = (time_segments_in_sequence(network, x, device=device, settings=settings.timing)
                       if any(kind == "segment" for kind, _ in missing) else {})
        for done, (kind, name) in enumerate(missing, start=1):
            if kind == "segment":
                stats = in_sequence[name]
            else:
                stats = time_callable(runners[(kind, name)], device=device,
                                      settings=settings.timing)
            _store(engine, model_id, record.id, kind, name, shape, settings, stats,
                   costs[(kind, name)])
            measured.append(component_key(kind, name))
            if progress:
                progress(done, total, component_key(kind, name))
        def path_done(i: int, name: str) -> None:
            if progress:
                progress(len(missing) + i, total, f"path:{name}")

        checks = _closed_loop(engine, network, x, model_id, record.id, shape, settings, paths,
                              path_done)
        for check in checks:
            _store_path(engine, model_id, record.id, shape, settings, check, network, costs)
        warnings += [
            f"the sum of component latencies is {abs(c.deviation):.0%} "
            f"{'below' if c.deviation > 0 else 'above'} the measured cascade on path {c.name} "
            f"({c.predicted_ms:.2f} ms vs {c.measured.mean_ms:.2f} ms); the search's latencies "
            "are off by as much on this device"
            for c in checks if abs(c.deviation) > WARN_DEVIATION
        ]
        skipped = tuple(component_key(k, n) for k, n in runners if (k, n) in stored)
        return LatencyResult(device=record, measured=tuple(measured), skipped=skipped,
                             paths=tuple(checks), warnings=tuple(warnings))
    finally:
        torch.set_num_threads(previous_threads)


def _closed_loop(engine: Engine, network: MessNetwork, x: torch.Tensor, model_id: int, device_id: int,
                 shape: tuple[int, ...], settings: LatencySettings,
                 paths: list[tuple[str, ...]], progress) -> list[PathCheck]:
    if not paths:
        return []
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=device_id,
                                       input_shape=shape, batch=settings.batch,
                                       dtype=settings.dtype_name)
    means = {(r.kind, r.name): r.mean_ms for r in rows}
    return check_paths(network, x, means, settings=settings.timing, paths=paths,
                       progress=progress)


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
