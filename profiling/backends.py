"""Timing backends and timing protocols: what the latency pass runs, and how it takes samples.

A latency measurement is (component, runtime, settings) -> samples. The latency pass
(`profiling.latency.profile_latency`) never calls a network itself: a `TimingBackend` turns the
network and one input into a `Workload` (the backbone segments as a chain, every other component
as a zero-argument call bound to its real input, the round order of the cascade, and the deployed
cascade for the closed loop), and a `TimingProtocol` decides the order of runs and takes the
samples, returning them with their quality (`profiling.protocol.ProtocolResult`). Torch eager
(`TorchEager`) is the backend here; another runtime plugs in by implementing the same methods.
`Interleaved` is the protocol the latency pass uses (`profiling.protocol`: every component once
per round in cascade order, median estimate, spread and load checks, bounded re-measurement).
`InSequence` is the older one (segments timed inside whole backbone runs, every other component
to completion in turn), kept callable for `benchmarks/timing_under_load.py`; its samples get the
same quality figures, so the same verdict applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import torch

from profiling.load import LoadProbe, SystemLoadProbe
from profiling.protocol import ProtocolResult, assess, cascade_order, chain_calls
from profiling.timing import (
    LatencyStats,
    TimingSettings,
    measure_torch,
    run_protocol,
    synchronize,
    time_callable,
)
from training.heads import FINAL_EXIT
from training.onnx_components import TIMING_TH_PIX as ONNX_TIMING_TH_PIX

if TYPE_CHECKING:
    from training.network import MessNetwork

Key = tuple[str, str]  # (component kind, name), as stored: ("segment", "layer2.1")
RoundProgress = Callable[[int, int, int], None]  # (pass, rounds done, components in the pass)

# Threshold the decision is timed with (its cost does not depend on the value): the one the ONNX
# component graphs are exported with, so both runtimes time the same decision.
TIMING_TH_PIX = ONNX_TIMING_TH_PIX


@dataclass(frozen=True, kw_only=True)
class Workload:
    """Everything a protocol times, bound to real inputs.

    Attributes:
        device: where the work runs (a protocol synchronizes it before reading the clock).
        chain: the backbone segments in order, (name, step); step i takes step i-1's output,
            step 0 takes `chain_input`. Timed in sequence.
        chain_input: the image batch the chain starts from.
        calls: every other component (head, decision, final, upsample) as a zero-argument
            call on its real input, keyed by (kind, name).
        order: every key in the order one round runs them (`profiling.protocol.cascade_order`);
            empty: segments first, then the calls.
    """

    device: torch.device
    chain: tuple[tuple[str, Callable[[Any], Any]], ...]
    chain_input: Any
    calls: Mapping[Key, Callable[[], object]] = field(default_factory=dict)
    order: tuple[Key, ...] = ()

    def keys(self) -> list[Key]:
        """Every component of the workload, in round order."""
        if self.order:
            return list(self.order)
        return [("segment", name) for name, _ in self.chain] + list(self.calls)

    def reference(self) -> list[Key]:
        """The whole network: every segment, the final head and its upsampling."""
        return [("segment", name) for name, _ in self.chain] + [
            k for k in (("final", FINAL_EXIT), ("upsample", FINAL_EXIT)) if k in self.calls]


class TimingBackend(Protocol):
    """A runtime that runs the network's components (torch eager, ONNX Runtime, ...)."""

    @property
    def runtime(self) -> str:
        """Its name, e.g. "torch"."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """Keys this runtime adds to the device fingerprint (its name, version, settings), so
        timings of different runtimes never mix."""
        ...

    def workload(self, network: MessNetwork, x: torch.Tensor) -> Workload:
        """The network's components bound to the input `x` (already on its device)."""
        ...

    def cascade_call(self, module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
        """One end-to-end run of a deployed cascade module on `x` (the closed loop times it)."""
        ...


class TimingProtocol(Protocol):
    """How samples are taken: order of runs, warm-up, repeats, and their quality."""

    def measure(self, workload: Workload, keys: Sequence[Key], *,
                extra: Sequence[tuple[Key, Callable[[], object]]] = (),
                progress: RoundProgress | None = None) -> ProtocolResult[Key]:
        """Samples and quality of each of `keys` (a subset of `workload.keys()`), and of the
        `extra` whole calls (the closed loop's cascades), timed in the same rounds after them."""
        ...

    def measure_calls(self, calls: Sequence[tuple[str, Callable[[], object]]],
                      device: torch.device, *, progress: RoundProgress | None = None
                      ) -> ProtocolResult[str]:
        """Samples and quality of whole calls (the closed loop's cascades), by name."""
        ...


@dataclass(frozen=True)
class TorchEager:
    """Torch eager execution of the network's own modules (what training and verify run).

    It adds nothing to the device fingerprint: the fingerprint already names the torch
    version, and stores profiled before backends existed keep their device rows.
    """

    runtime: str = "torch"

    def fingerprint(self) -> dict[str, Any]:
        return {}

    def workload(self, network: MessNetwork, x: torch.Tensor) -> Workload:
        """The decision is `network.decision` itself, the module the cascade calls; the
        upsampling is `network.upsample`, the function both cascades call, on the exit's real
        native logits."""
        calls: dict[Key, Callable[[], object]] = {}
        features: dict[str, torch.Tensor] = {}
        size = [int(x.shape[-2]), int(x.shape[-1])]
        names = [p.name for p in network.positions] + ["tail"]
        current = x
        with torch.inference_mode():
            for name, segment in zip(names, network.segments, strict=True):
                current = segment(current)
                features[name] = current
            if network.final_skip is None:
                final_in: Any = current
            else:  # LR-ASPP's final head also reads an earlier feature
                final_in = {"low": features[network.final_skip], "high": current}
            calls[("final", "final")] = partial(network.final_head, final_in)
            final_logits = network.final_head(final_in)
            calls[("upsample", "final")] = partial(network.upsample, final_logits, size)
            for spec in network.exits:
                feature = features[spec.position]
                calls[("head", spec.id)] = partial(network.run_head, spec.id, feature)
                logits = network.run_head(spec.id, feature)
                calls[("decision", spec.id)] = partial(network.decision, logits, TIMING_TH_PIX)
                calls[("upsample", spec.id)] = partial(network.upsample, logits, size)
        chain = tuple(zip(names, network.segments, strict=True))
        order = cascade_order(names, [(e.id, e.position) for e in network.exits], FINAL_EXIT)
        return Workload(device=x.device, chain=chain, chain_input=x, calls=calls,
                        order=tuple(order))

    def cascade_call(self, module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
        return partial(module, x)


@dataclass(frozen=True)
class Interleaved:
    """Every component once per round, in the cascade's order, many rounds (`profiling.protocol`).

    `load` and `clock` are injected by tests (default: this machine, `time.perf_counter`).
    """

    settings: TimingSettings = field(default_factory=TimingSettings)
    load: LoadProbe | None = None
    clock: Callable[[], float] = time.perf_counter

    def measure(self, workload: Workload, keys: Sequence[Key], *,
                extra: Sequence[tuple[Key, Callable[[], object]]] = (),
                progress: RoundProgress | None = None) -> ProtocolResult[Key]:
        wanted = set(keys)
        with torch.inference_mode():
            calls = {**chain_calls(workload.chain, workload.chain_input), **workload.calls}
        order = workload.keys()
        components = [(k, calls[k]) for k in order if k in wanted] + list(extra)
        return measure_torch(components, device=workload.device, settings=self.settings,
                             load=self.load, reference=workload.reference(), clock=self.clock,
                             progress=progress)

    def measure_calls(self, calls: Sequence[tuple[str, Callable[[], object]]],
                      device: torch.device, *, progress: RoundProgress | None = None
                      ) -> ProtocolResult[str]:
        return measure_torch(list(calls), device=device, settings=self.settings, load=self.load,
                             clock=self.clock, progress=progress)


@dataclass(frozen=True)
class InSequence:
    """The older protocol: segments timed inside whole backbone runs, every other component
    alone, one after the other, each with warm-up and repeats (`profiling.timing.run_protocol`).
    No re-measurement; the samples are judged like the interleaved protocol's."""

    settings: TimingSettings = field(default_factory=TimingSettings)
    load: LoadProbe | None = None

    def measure(self, workload: Workload, keys: Sequence[Key], *,
                extra: Sequence[tuple[Key, Callable[[], object]]] = (),
                progress: RoundProgress | None = None) -> ProtocolResult[Key]:
        probe = self.load or SystemLoadProbe(torch.get_num_threads())
        token = probe.start()
        chained = (time_chain(workload, settings=self.settings)
                   if any(kind == "segment" for kind, _ in keys) else {})
        samples: dict[Key, Sequence[float]] = {}
        for key in keys:
            samples[key] = (chained[key] if key[0] == "segment" else time_callable(
                workload.calls[key], device=workload.device, settings=self.settings)).samples_ms
        for key, call in extra:
            samples[key] = time_callable(call, device=workload.device,
                                         settings=self.settings).samples_ms
        return assess(samples, settings=self.settings, passes=(probe.stop(token),),
                      reference=workload.reference())

    def measure_calls(self, calls: Sequence[tuple[str, Callable[[], object]]],
                      device: torch.device, *, progress: RoundProgress | None = None
                      ) -> ProtocolResult[str]:
        probe = self.load or SystemLoadProbe(torch.get_num_threads())
        token = probe.start()
        samples = {name: time_callable(call, device=device, settings=self.settings).samples_ms
                   for name, call in calls}
        return assess(samples, settings=self.settings, passes=(probe.stop(token),))


def time_chain(workload: Workload, *, settings: TimingSettings) -> dict[Key, LatencyStats]:
    """Per segment, samples taken inside whole chain runs (image -> tail), as the cascade runs
    them; warm-up, repeats and `min_time_s` as in `time_callable`, counted in whole runs."""
    samples: list[list[float]] = [[] for _ in workload.chain]
    device = workload.device

    def run(record: bool) -> float:
        feat, spent = workload.chain_input, 0.0
        for i, (_, step) in enumerate(workload.chain):
            start = time.perf_counter()
            feat = step(feat)
            synchronize(device)
            elapsed = time.perf_counter() - start
            spent += elapsed
            if record:
                samples[i].append(elapsed * 1e3)
        return spent

    run_protocol(run, device=device, settings=settings)
    return {("segment", name): LatencyStats.from_samples(s)
            for (name, _), s in zip(workload.chain, samples, strict=True)}
