"""Closed loop: does the sum of component timings predict the real cascade?

The search adds up stored component latencies. Here the deployed cascade (training.cascade's
pruned `CascadeModule`, what `dse export` writes and `dse verify` times) runs end to end on a
handful of forced paths (every image leaves at one kept exit, or none does and the final exit
answers) and the measured time is compared with that sum, both as medians (the estimate the
search uses, `profiling.quality`). When components are timed, the paths are timed in the same
rounds, after them: a machine whose speed drifts over minutes (this VM's did by 10-20%) then
moves both sides of the comparison alike. A gap above 10% means the additive model is off on this
device (launch overheads, caches, fusion): the latency pass refuses to store the profile unless
told to keep it (`profiling.verdict`). The checks are stored as latency rows of kind "path".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from db.records import CLOSED_LOOP_TOLERANCE
from profiling.backends import RoundProgress, TimingBackend, TimingProtocol
from profiling.protocol import ProtocolResult
from profiling.timing import LatencyStats
from training.cascade import build_cascade_module
from training.heads import FINAL_EXIT
from training.policy import ExitPolicy

if TYPE_CHECKING:
    from training.network import MessNetwork

WARN_DEVIATION = CLOSED_LOOP_TOLERANCE


@dataclass(frozen=True, kw_only=True)
class PathCheck:
    """One forced path: the exits run, the one taken, measured versus summed latency (medians)."""

    exits: tuple[str, ...]
    taken: str
    measured: LatencyStats
    predicted_ms: float

    @property
    def deviation(self) -> float:
        """(measured - predicted) / measured, on medians; positive when the sum underestimates."""
        return (self.measured.p50_ms - self.predicted_ms) / self.measured.p50_ms

    @property
    def name(self) -> str:
        return self.taken if self.exits else "final (no early exit)"


def choose_paths(network: MessNetwork, head_gflops: dict[str, float], *, max_paths: int = 4
                 ) -> list[tuple[str, ...]]:
    """A handful of paths spread along the backbone, each leaving at the cheapest head there.

    Returns 1-tuples of exit ids (every image leaves at that exit) and the empty tuple (no
    early exit: the final exit answers).
    """
    if max_paths < 1:
        raise ValueError("max_paths: must be >= 1")
    cheapest: dict[str, tuple[float, str]] = {}
    for spec in network.exits:
        gflops = head_gflops[spec.id]
        if spec.position not in cheapest or gflops < cheapest[spec.position][0]:
            cheapest[spec.position] = (gflops, spec.id)
    ordered = [cheapest[p.name][1] for p in network.positions if p.name in cheapest]
    if len(ordered) > max_paths:
        step = (len(ordered) - 1) / (max_paths - 1) if max_paths > 1 else 0
        ordered = [ordered[round(i * step)] for i in range(max_paths)]
    return [(e,) for e in ordered] + [()]


def path_components(network: MessNetwork, exits: tuple[str, ...], taken: str
                    ) -> list[tuple[str, str]]:
    """The (kind, name) components an image pays on a path: segments up to the exit taken,
    heads and decisions of the exits run, tail and final head when the final exit answers, and
    the upsampling of the answering exit's logits (only that one)."""
    index = {p.name: p.index for p in network.positions}
    specs = {s.id: s for s in network.exits}
    if taken == FINAL_EXIT:
        segments = [p.name for p in network.positions] + ["tail"]
        run = list(exits)
    else:
        last = index[specs[taken].position]
        segments = [p.name for p in network.positions if p.index <= last]
        run = list(exits[: exits.index(taken) + 1])
    parts = [("segment", name) for name in segments]
    parts += [(kind, e) for e in run for kind in ("head", "decision")]
    if taken == FINAL_EXIT:
        parts.append(("final", FINAL_EXIT))
    parts.append(("upsample", taken))
    return parts


def predicted_ms(network: MessNetwork, estimates_ms: dict[tuple[str, str], float],
                 exits: tuple[str, ...], taken: str) -> float:
    """Sum of component estimates for a path (`path_components`): what the search predicts."""
    return sum(estimates_ms[key] for key in path_components(network, exits, taken))


def path_calls(network: MessNetwork, x: torch.Tensor, *, paths: list[tuple[str, ...]],
               policy: ExitPolicy, backend: TimingBackend
               ) -> list[tuple[tuple[str, ...], str, Callable[[], object]]]:
    """One deployed cascade per forced path: (exits, the exit every image takes, its call).

    A path `(e,)` runs with th_pix tiny and th_img = 1: every pixel's top-1 probability is at
    least 1/C, so every image leaves at e. The empty path has no early exit (final answers).
    The cascade decides with `policy`, the stored accuracy profile's, as export and verify do.
    """
    calls = []
    for exits in paths:
        module = build_cascade_module(
            network, exits=[*exits, FINAL_EXIT], th_pix=[_FORCE_TH_PIX] * len(exits), th_img=1.0,
            input_size=(int(x.shape[-2]), int(x.shape[-1])), policy=policy,
        )
        with torch.inference_mode():
            _, exit_index = module(x)
        name = module.exit_ids[int(exit_index[0])]
        assert bool((exit_index == exit_index[0]).all()), f"forced path {exits} split the batch"
        calls.append((exits, name, backend.cascade_call(module, x)))
    return calls


def path_checks(network: MessNetwork, estimates_ms: dict[tuple[str, str], float],
                calls: list[tuple[tuple[str, ...], str, Callable[[], object]]],
                samples_ms: Callable[[str], Sequence[float]]) -> list[PathCheck]:
    """Each path's measured samples (by the name of the exit taken) against its summed
    components."""
    return [PathCheck(exits=exits, taken=name,
                      measured=LatencyStats.from_samples(tuple(samples_ms(name))),
                      predicted_ms=predicted_ms(network, estimates_ms, exits, name))
            for exits, name, _ in calls]


def check_paths(
    network: MessNetwork, x: torch.Tensor, estimates_ms: dict[tuple[str, str], float], *,
    paths: list[tuple[str, ...]], policy: ExitPolicy, backend: TimingBackend,
    protocol: TimingProtocol, progress: RoundProgress | None = None,
) -> tuple[list[PathCheck], ProtocolResult[str]]:
    """Time the deployed cascade on forced paths (`path_calls`) in a pass of their own and
    compare with the summed component estimates (used when every component is already stored;
    new components are timed in the same rounds as their paths, `profiling.latency`).
    Returns the checks and the protocol's result (the paths' own spread and load).
    """
    calls = path_calls(network, x, paths=paths, policy=policy, backend=backend)
    result = protocol.measure_calls([(name, call) for _, name, call in calls], x.device,
                                    progress=progress)
    return path_checks(network, estimates_ms, calls, lambda n: result.samples_ms[n]), result


_FORCE_TH_PIX = 1e-6
