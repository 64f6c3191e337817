"""Latency profile: every candidate component timed on this machine, at one input shape.

Components are timed with the interleaved protocol (`profiling.backends.Interleaved`, built on
`profiling.protocol`): every round runs each component once, in the order the cascade runs them
(per position: the segment, on the previous segment's fresh output, then each exit's head,
decision and upsampling; then the tail, the final head and its upsampling), many rounds, so a
burst of load hits every component alike; the estimate is the median. Each head is timed on its
position's feature, each exit decision on its head's native logits, the final head on the tail
output, and the bilinear upsampling of every exit's (and the final head's) native logits to the
input size, which the cascade pays for the exit an image leaves at. The closed loop then times
the deployed cascade on a few forced paths (same protocol) against the summed estimates.

The run is judged (`profiling.verdict`): components still unstable after the protocol's bounded
re-measurement, a pass during which other processes needed this process's cores, or a closed-
loop gap above 10% refuse it (`UnstableProfileError`, nothing stored) unless `keep_noisy`, in
which case its rows are stored marked noisy. Everything a run measured is stored in one
transaction with its quality (`dse_profile_quality`), keyed by (model, device fingerprint,
kind, name, input shape, batch, dtype); a re-run measures only what is missing or noisy.

What runs the components and how samples are taken are injected (`profiling.backends`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy import Engine

from db import repository
from db.records import DeviceRecord
from db.session import session_scope
from profiling.backends import (
    Interleaved,
    Key,
    TimingBackend,
    TimingProtocol,
    TorchEager,
    Workload,
    time_chain,
)
from profiling.closed_loop import (
    PathCheck,
    check_paths,
    choose_paths,
    path_calls,
    path_checks,
    path_components,
)
from profiling.device import device_fingerprint
from profiling.errors import ProfilingError
from profiling.protocol import ProtocolResult
from profiling.timing import LatencyStats, TimingSettings
from profiling.verdict import UnstableProfileError, Verdict, judge, row_quality
from training.flops import network_components
from training.heads import FINAL_EXIT
from training.policy import ExitPolicy

if TYPE_CHECKING:
    from training.network import MessNetwork

ProgressFn = Callable[[int, int, str], None]  # (rounds done, rounds planned, current step)

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
    # Store a run that failed its checks (rows marked noisy) instead of refusing it.
    keep_noisy: bool = False

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
    verdict: Verdict | None = None  # None: nothing was measured (everything stored already)


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
    try:
        x = torch.zeros(1, 3, h, w, device=device, dtype=dtype)
        with torch.inference_mode():
            network.forward_native(x)
    except (RuntimeError, ValueError, MemoryError) as exc:
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


def find_device(engine: Engine, name: str, fingerprint: dict
                ) -> tuple[DeviceRecord | None, list[str]]:
    """The stored device of this name and fingerprint (None: not yet), read only; warns when
    this name was profiled before from another fingerprint."""
    from db.repository import fingerprint_sha256

    warnings: list[str] = []
    sha = fingerprint_sha256(fingerprint)
    with session_scope(engine, readonly=True) as s:
        known = [d for d in repository.list_devices(s) if d.name == name]
    record = next((d for d in known if d.fingerprint_sha256 == sha), None)
    others = [d for d in known if d.fingerprint_sha256 != sha]
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
    only: Collection[Key] | None = None,
) -> LatencyResult:
    """Time every candidate component not yet stored (or stored as noisy) for this model, device
    and input shape, check the closed loop, judge the run, and store it all in one transaction.

    Args:
        engine: the store.
        network: a `MessNetwork`; moved to `device` and `settings.dtype` here.
        model_id: the network's row.
        device_name: the user's name for this machine (`jetson`, `laptop-cpu`).
        input_size: (H, W) of the profiled input.
        device: torch device to time on (CPU by default).
        settings: batch, dtype, threads, timing effort, closed loop, keep_noisy.
        policy: the exit policy the closed loop's cascades decide with (the accuracy
            profile's; None: the network's own decision).
        backend: the runtime that runs the components (torch eager by default).
        protocol: how samples are taken (`Interleaved(settings.timing)` by default).
        progress: called with (rounds done, rounds planned, step) after each timed round.
        only: time only these components (a few-shot profile, `profiling.fewshot_profile`;
            None: every component).

    Raises:
        ProfilingError: an input size the network cannot take.
        UnstableProfileError: the run failed its checks (`profiling.verdict`) and
            `settings.keep_noisy` is False; nothing was stored.
    """
    settings = settings or LatencySettings()
    device = device or torch.device("cpu")
    backend = backend or TorchEager()
    protocol = protocol or Interleaved(settings.timing)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        network.eval().to(device=device, dtype=settings.dtype)
        check_input_size(network, input_size, device, settings.dtype)
        # Torch eager adds nothing to the torch fingerprint; another runtime describes the
        # machine itself (its fingerprint replaces torch's, whose settings it does not use).
        base = (device_fingerprint(device, dtype=settings.dtype, threads=settings.threads)
                if backend.runtime == "torch" else {})
        fingerprint = {**base, **backend.fingerprint()}
        record, warnings = find_device(engine, device_name, fingerprint)
        shape = (settings.batch, 3, *input_size)
        rows = []
        if record is not None:
            with session_scope(engine, readonly=True) as s:
                rows = [r for r in repository.load_latency(
                    s, model_id=model_id, device_id=record.id, input_shape=shape,
                    batch=settings.batch, dtype=settings.dtype_name)]
        # rows stored as noisy are measured again: a quieter run replaces them
        stored = {(r.kind, r.name): r for r in rows if not r.noisy}
        costs = {(c.kind, c.name): c for c in network_components(network, input_size)}
        torch.manual_seed(0)
        x = torch.randn(*shape, device=device, dtype=settings.dtype)
        workload = backend.workload(network, x)
        keys = workload.keys()
        missing = [key for key in keys if key not in stored and (only is None or key in only)]
        paths = _paths_to_check(network, costs, settings, set(stored), measured_now=bool(missing))
        planned = settings.timing.repeat

        def report(stage: str) -> Callable[[int, int, int], None] | None:
            if progress is None:
                return None
            return lambda p, r, n: progress(r, planned, f"{stage} pass {p}: {n} timed")

        policy = policy if policy is not None else network.decision.policy
        estimates = {k: r.estimate_ms for k, r in stored.items()}
        result: ProtocolResult[Key] | None = None
        path_result: ProtocolResult[Any] | None = None
        checks: list[PathCheck] = []
        if missing:
            # the paths run in the same rounds as the components: a change of the machine's
            # speed during the run moves both sides of the closed-loop comparison alike
            calls = path_calls(network, x, paths=paths, policy=policy, backend=backend)
            extra = [(("path", name), call) for _, name, call in calls]
            both = protocol.measure(workload, missing, extra=extra, progress=report(
                "components and closed loop" if extra else "components"))
            result = both.subset(set(missing))
            estimates.update({k: result.estimate_ms(k) for k in missing})
            if calls:
                path_result = both.subset({key for key, _ in extra})
                checks = path_checks(network, estimates, calls,
                                     lambda n: both.samples_ms[("path", n)])
        elif paths:
            checks, path_result = check_paths(
                network, x, estimates, paths=paths, policy=policy, backend=backend,
                protocol=protocol, progress=report("closed loop"))
        verdict = None
        if result is not None or checks:
            verdict = judge(result, {c.name: c.deviation for c in checks}, paths=path_result)
            if not verdict.ok and not settings.keep_noisy:
                raise UnstableProfileError(
                    f"{verdict.line()}; nothing stored: re-run on a quieter machine (fewer "
                    "threads, other jobs stopped), or pass --keep-noisy to store it marked noisy")
        if verdict is not None:
            record = _store_run(engine, device_name, fingerprint, model_id=model_id,
                                shape=shape, settings=settings, result=result,
                                measured=missing, checks=checks, verdict=verdict,
                                network=network, costs=costs)
        elif record is None:  # nothing to measure and nothing stored: cannot happen
            raise ProfilingError("the network has no component to time")
        if verdict is not None and not verdict.ok:
            warnings.append(f"{verdict.line()}; stored marked noisy")
        skipped = tuple(component_key(k, n) for k, n in keys if (k, n) in stored)
        return LatencyResult(device=record, measured=tuple(component_key(*k) for k in missing),
                             skipped=skipped, paths=tuple(checks), warnings=tuple(warnings),
                             verdict=verdict)
    finally:
        torch.set_num_threads(previous_threads)


def _paths_to_check(network: MessNetwork, costs: dict, settings: LatencySettings,
                    stored: set[tuple[str, str]], *, measured_now: bool) -> list[tuple[str, ...]]:
    """The closed-loop paths this run checks: all of them after new component timings (the
    sums they are compared with changed), else those without a stored check.
    `settings.closed_loop` True checks every path, False none."""
    if settings.closed_loop is False:
        return []
    head_gflops = {n: c.gflops for (k, n), c in costs.items() if k == "head"}
    paths = choose_paths(network, head_gflops, max_paths=settings.max_paths)
    if settings.closed_loop or measured_now:
        return paths
    return [p for p in paths if ("path", p[0] if p else FINAL_EXIT) not in stored]


def _store_run(engine: Engine, device_name: str, fingerprint: dict, *, model_id: int,
               shape: tuple[int, ...], settings: LatencySettings,
               result: ProtocolResult[Key] | None, measured: list[Key], checks: list[PathCheck],
               verdict: Verdict, network: MessNetwork, costs: dict) -> DeviceRecord:
    """The device, every component measured now, the path checks and the run's quality, in one
    transaction: a refused or interrupted run leaves nothing half-written."""
    noisy = not verdict.ok
    with session_scope(engine) as s:
        record = repository.upsert_device(s, name=device_name, fingerprint=fingerprint)
        common: dict[str, Any] = dict(model_id=model_id, device_id=record.id,
                                      input_shape=shape, batch=settings.batch,
                                      dtype=settings.dtype_name)
        for key in measured:
            assert result is not None
            cost = costs.get(key)
            repository.upsert_latency(
                s, **common, kind=key[0], name=key[1], samples_ms=list(result.samples_ms[key]),
                gflops=float(cost.gflops) if cost is not None else 0.0,
                params=int(cost.params) if cost is not None else 0,
                noisy=noisy, quality=row_quality(result, key))
        for check in checks:
            parts = [costs.get(k) for k in path_components(network, check.exits, check.taken)]
            repository.upsert_latency(
                s, **common, kind="path", name=check.taken,
                samples_ms=list(check.measured.samples_ms),
                gflops=float(sum(c.gflops for c in parts if c is not None)),
                params=int(sum(c.params for c in parts if c is not None)),
                predicted_ms=float(check.predicted_ms), noisy=noisy)
        quality = dict(verdict.quality)
        if result is None:  # only paths checked now: keep the components' figures
            previous = [q for q in repository.list_profile_quality(
                s, model_id=model_id, device_id=record.id) if q.input_shape == tuple(shape)
                and q.batch == settings.batch and q.dtype == settings.dtype_name]
            if previous:
                quality = {**previous[-1].quality, "closed_loop": quality["closed_loop"]}
        repository.upsert_profile_quality(s, **common, noisy=noisy, quality=quality)
    return record
