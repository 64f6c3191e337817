"""`dse profile` as a library call: `run_profile(db, ProfileRequest(...)) -> ProfileOutcome`.

One profile is: register the model and its exits, the accuracy pass (once per model and
calibration set), the latency pass on this machine (components, then the closed-loop checks),
and the per-exit path summary. Everything the user could get wrong (checkpoint, input size,
data, CUDA, dtype) is checked before the store is opened, so a mistake leaves nothing written.
Every unit of work is committed as it is done (accuracy chunks; the latency pass as one
transaction once judged, `profiling.latency`), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy import Engine

from db import repository
from db.records import ExitInput, ExitSummary, check_name
from db.session import open_store, session_scope
from profiling.accuracy import AccuracyResult, AccuracySettings, check_compatible, profile_accuracy
from profiling.backends import TimingBackend, TimingProtocol
from profiling.closed_loop import path_components
from profiling.device import resolve_device, resolve_dtype
from profiling.errors import ProfilingError
from profiling.fewshot_profile import (
    FewShot,
    FewShotResult,
    References,
    read_plan,
    store_predictions,
)
from profiling.latency import LatencyResult, LatencySettings, check_input_size, profile_latency
from profiling.timing import TimingSettings
from training.checkpoint import (
    describe_network,
    load_checkpoint,
    training_warnings,
    weights_sha256,
)
from training.flops import Component, network_components
from training.heads import FINAL_EXIT
from training.policy import ExitPolicy

if TYPE_CHECKING:
    from profiling.onnxruntime_backend import OnnxRuntimeBackend  # noqa: F401
    from training.network import MessNetwork

# (pass, done, total or None while unknown, current step): "accuracy" counts images,
# "latency" counts timed rounds of the current pass (components, re-measurements, closed loop).
ProfileProgress = Callable[[str, int, int | None, str], None]


RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True, kw_only=True)
class ProfileRequest:
    """Everything `dse profile` asks for.

    Attributes:
        checkpoint: file from `dse train`.
        device: the user's name for this machine (`laptop-cpu`, `jetson`).
        data, data_root, split, limit: the calibration set (default data: the checkpoint's).
        input_size: (H, W); None: the checkpoint's.
        accuracy, latency: which passes to run (at least one).
        compute: torch device kind, "cpu" or "cuda[:N]".
        dtype: "float32", or "float16" on CUDA (latency pass).
        threads: torch threads of the latency pass (None: torch's current number).
        timing: warm-up, repeats and minimum time per component.
        batch: batch of the latency pass; batch_size: images per forward of the accuracy pass.
        name: model name in the store (None: the checkpoint's file name).
        arch_trust: the traced `fx:` architecture the checkpoint may build (it imports and runs
            code, so only when the user names it; see `training.checkpoint.load_checkpoint`).
        policy: the exit policy to profile (None: the network's own decision, the default).
        backend, protocol: timing backend and protocol of the latency pass (None: the
            `runtime`'s backend, interleaved with `timing`).
        keep_noisy: store a latency run that failed its checks (rows marked noisy) instead of
            refusing it (`profiling.verdict.UnstableProfileError`, nothing stored).
        runtime: "torch" (eager, the default) or "onnxruntime" (every component exported to
            ONNX and run by ONNX Runtime with `threads`, `optimization` and `provider`).
        optimization: ONNX Runtime graph optimisation level (disable, basic, extended, all).
        provider: ONNX Runtime execution provider.
        few_shot: measure only K components and predict the rest from reference devices'
            full profiles (`profiling.fewshot_profile`); None: measure every component.
    """

    checkpoint: Path
    device: str
    data: str | None = None
    data_root: str | None = None
    split: str = "val"
    limit: int | None = None
    input_size: tuple[int, int] | None = None
    accuracy: bool = True
    latency: bool = True
    compute: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    timing: TimingSettings = field(default_factory=TimingSettings)
    batch: int = 1
    batch_size: int = 8
    name: str | None = None
    policy: ExitPolicy | None = None
    backend: TimingBackend | None = None
    protocol: TimingProtocol | None = None
    keep_noisy: bool = False
    runtime: str = "torch"
    optimization: str = "all"
    provider: str = "CPUExecutionProvider"
    arch_trust: str | None = None
    few_shot: FewShot | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        for name in ("batch", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads: must be >= 1")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime: must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        check_name(self.device, field="device")
        check_name(self.name if self.name is not None else self.checkpoint.stem, field="name")


@dataclass(frozen=True, kw_only=True)
class ExitRow:
    """One exit's path from the input: mIoU, GFLOPs and p50 ms of backbone to the exit, its head
    and decision, and the upsampling of its logits (the final exit: whole backbone, final head)."""

    exit: str
    position: str
    miou: float | None
    gflops: float
    p50_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"exit": self.exit, "position": self.position, "miou": self.miou,
                "gflops": self.gflops, "p50_ms": self.p50_ms}


@dataclass(frozen=True, kw_only=True)
class ProfileOutcome:
    """What a profile did and the per-exit summary the CLI prints."""

    model_id: int
    device: str
    policy: ExitPolicy
    accuracy: AccuracyResult | None
    latency: LatencyResult | None
    rows: tuple[ExitRow, ...]
    # What the profile rests on that the user may not know (untrained exit heads, an unfinished
    # training run): `training.checkpoint.training_warnings`.
    warnings: tuple[str, ...] = ()
    few_shot: FewShotResult | None = None  # a few-shot profile: what was measured, predicted


def exit_inputs(network: MessNetwork, costs: Mapping[tuple[str, str], Component],
                input_size: tuple[int, int]) -> list[ExitInput]:
    """The exit rows of a network: every candidate exit and "final", with the head's cost."""
    shape = (1, 3, *input_size)
    exits = [
        ExitInput(exit_id=e.id, position=e.position, position_index=network.position_of(e.id).index,
                  head={"id": e.head.id, "crm": e.head.crm, "blocks": e.head.blocks,
                        "rdi": e.head.rdi, "kind": e.head.kind},
                  params=costs[("head", e.id)].params, gflops=costs[("head", e.id)].gflops,
                  input_shape=shape)
        for e in network.exits
    ]
    final = costs[("final", FINAL_EXIT)]
    exits.append(ExitInput(exit_id=FINAL_EXIT, position="tail",
                           position_index=len(network.positions), head={"id": FINAL_EXIT},
                           params=final.params, gflops=final.gflops, input_shape=shape))
    return exits


def register_model(engine: Engine, network: MessNetwork, name: str, input_size: tuple[int, int]
                   ) -> tuple[int, dict[tuple[str, str], Component]]:
    """Model and exit rows (head GFLOPs/params at this input shape); returns id and costs."""
    costs = {(c.kind, c.name): c for c in network_components(network, input_size)}
    exits = exit_inputs(network, costs, input_size)
    with session_scope(engine) as s:
        model = repository.upsert_model(
            s, name=name, arch=network.arch, architecture=describe_network(network),
            weights_sha256=weights_sha256(network), num_classes=network.num_classes,
        )
        repository.upsert_exits(s, model.id, exits)
    return model.id, costs


def run_profile(db: str, request: ProfileRequest, *,
                progress: ProfileProgress | None = None,
                warn: Callable[[str], None] | None = None) -> ProfileOutcome:
    """Profile a checkpoint: accuracy on a calibration split, then latency on this machine.

    Args:
        db: store URL or SQLite path (created when missing, after every check passed).
        request: what to profile.
        progress: called as the passes advance (see `ProfileProgress`).
        warn: called with each of the outcome's `warnings` as soon as the request passed every
            check, before the long work (which the user may then stop).

    Raises:
        ProfilingError, TrainingError: a user mistake, before anything is written.
        StorageError: the store cannot be opened or written.
    """
    if not request.accuracy and not request.latency:
        raise ProfilingError("nothing to do: --no-accuracy and --no-latency together; drop one")
    if request.few_shot is not None and not request.latency:
        raise ProfilingError("--few-shot is a latency profile; drop --no-latency")
    network, meta = load_checkpoint(request.checkpoint, trust_arch=request.arch_trust)
    size = request.input_size or (int(meta["input_size"][0]), int(meta["input_size"][1]))
    torch_device = resolve_device(request.compute)
    torch_dtype = resolve_dtype(request.dtype, torch_device)
    policy = request.policy or network.decision.policy
    network.decision = policy.decision()
    check_input_size(network, size, torch.device("cpu"))
    dataset = None
    if request.accuracy:
        from training.data import build_dataset

        dataset = build_dataset(request.data or str(meta["dataset"]), root=request.data_root,
                                split=request.split, input_size=size, size=request.limit)
        check_compatible(network, dataset)
    lat_settings = LatencySettings(batch=request.batch, dtype=torch_dtype, timing=request.timing,
                                   threads=request.threads or torch.get_num_threads(),
                                   keep_noisy=request.keep_noisy)
    owned = None  # a backend made here, closed here (ONNX Runtime's exported graphs)
    if request.backend is None and request.latency and request.runtime == "onnxruntime":
        owned = onnxruntime_backend(request, threads=lat_settings.threads)
    backend = request.backend or owned
    plan: tuple[References, list[tuple[str, str]]] | None = None
    if request.few_shot is not None:
        try:  # the references are checked before anything is written
            plan = _few_shot_plan(db, request, network, size, lat_settings,
                                  backend.runtime if backend is not None else request.runtime)
        except BaseException:
            if owned is not None:
                owned.close()
            raise
        # the closed loop compares real cascades with summed estimates: most are predicted here
        lat_settings = dataclasses.replace(lat_settings, closed_loop=False)
    engine = open_store(db, create=True)
    warnings = tuple(training_warnings(meta, request.checkpoint))
    if plan is not None:
        warnings += plan[0].warnings
    if warn is not None:
        for warning in warnings:
            warn(warning)
    try:
        model_id, costs = register_model(engine, network, request.name or request.checkpoint.stem,
                                         size)
        accuracy = None
        if dataset is not None:
            accuracy = profile_accuracy(
                engine, network, dataset, model_id=model_id, device=torch_device,
                settings=AccuracySettings(batch_size=request.batch_size),
                progress=(lambda done, total: progress("accuracy", done, total, "images"))
                if progress else None,
            )
            summaries = accuracy.summaries
        else:
            summaries = _stored_summaries(engine, model_id)
        latency = None
        few: FewShotResult | None = None
        p50: dict[tuple[str, str], float] = {}
        if request.latency:
            if progress:
                progress("latency", 0, None, "")
            latency = profile_latency(
                engine, network, model_id=model_id, device_name=request.device, input_size=size,
                device=torch_device, settings=lat_settings, policy=policy,
                backend=backend, protocol=request.protocol,
                progress=(lambda done, total, step: progress("latency", done, total, step))
                if progress else None,
                only=None if plan is None else plan[1],
            )
            if progress:
                progress("latency", request.timing.repeat, request.timing.repeat, "done")
            shape = (request.batch, 3, *size)
            if plan is not None:
                with session_scope(engine) as s:
                    few = store_predictions(s, plan[0], model_id=model_id,
                                            device_id=latency.device.id, input_shape=shape,
                                            batch=request.batch, dtype=lat_settings.dtype_name)
            p50 = _stored_p50(engine, model_id, latency, shape, lat_settings)
    finally:
        engine.dispose()
        if owned is not None:
            owned.close()
    return ProfileOutcome(model_id=model_id, device=request.device, policy=policy,
                          accuracy=accuracy, latency=latency,
                          rows=tuple(exit_rows(network, costs, summaries, p50)), warnings=warnings,
                          few_shot=few)


def _few_shot_plan(db: str, request: ProfileRequest, network: MessNetwork,
                   size: tuple[int, int], settings: LatencySettings, runtime: str
                   ) -> tuple[References, list[tuple[str, str]]]:
    """The references (checked) and the K components to measure, read from the existing store
    (a few-shot profile needs its references there, so a missing store is an error)."""
    assert request.few_shot is not None
    expected = {(c.kind, c.name) for c in network_components(network, size)}
    engine = open_store(db)
    try:
        return read_plan(engine, request.few_shot, weights_sha256=weights_sha256(network),
                         model_name=request.name or request.checkpoint.stem,
                         input_shape=(request.batch, 3, *size), batch=request.batch,
                         dtype=settings.dtype_name, runtime=runtime, device_name=request.device,
                         expected=expected)
    finally:
        engine.dispose()


def onnxruntime_backend(request: ProfileRequest, *, threads: int) -> OnnxRuntimeBackend:
    """The ONNX Runtime backend a request asks for, checked before anything is written.

    Raises:
        ProfilingError: not float32 on the CPU, onnx or onnxruntime missing, a bad optimisation
            level or an execution provider this machine lacks.
    """
    from profiling.onnxruntime_backend import OnnxRuntimeBackend, runtime_settings
    from training._onnx_export import check_onnx_available
    from training.errors import TrainingError

    if request.compute != "cpu" or request.dtype != "float32":
        raise ProfilingError("--runtime onnxruntime times float32 graphs fed from the CPU; use "
                             "--compute cpu --dtype float32 (choose the device with --provider)")
    try:
        check_onnx_available()
    except TrainingError as exc:
        raise ProfilingError(str(exc)) from exc
    return OnnxRuntimeBackend(runtime_settings(threads=threads, optimization=request.optimization,
                                               provider=request.provider))


def exit_rows(network: MessNetwork, costs: Mapping[tuple[str, str], Component],
              summaries: Mapping[str, ExitSummary], p50: Mapping[tuple[str, str], float]
              ) -> list[ExitRow]:
    """Per exit, the path an image leaving there pays (`closed_loop.path_components`)."""
    rows = []
    for exit_id in (*network.exit_ids, FINAL_EXIT):
        if exit_id == FINAL_EXIT:
            parts, position = path_components(network, (), FINAL_EXIT), "tail"
        else:
            parts = path_components(network, (exit_id,), exit_id)
            position = network.position_of(exit_id).name
        summary = summaries.get(exit_id)
        rows.append(ExitRow(
            exit=exit_id, position=position,
            miou=summary.miou if summary is not None else None,
            gflops=sum(costs[k].gflops for k in parts),
            p50_ms=sum(p50[k] for k in parts) if all(k in p50 for k in parts) else None,
        ))
    return rows


def _stored_summaries(engine: Engine, model_id: int) -> dict[str, ExitSummary]:
    """Summaries of the newest complete accuracy profile of the model, if any (for the table)."""
    with session_scope(engine) as s:
        profiles = repository.find_accuracy_profiles(s, model_id, complete_only=True)
    return dict(profiles[0].summaries) if profiles else {}


def _stored_p50(engine: Engine, model_id: int, lat: LatencyResult, shape: tuple[int, ...],
                settings: LatencySettings) -> dict[tuple[str, str], float]:
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=lat.device.id,
                                       input_shape=shape, batch=settings.batch,
                                       dtype=settings.dtype_name, include_predicted=True)
    return {(r.kind, r.name): r.p50_ms for r in rows}
