"""Closed loop: does the sum of component timings predict the real cascade?

The search adds up stored component latencies. Here the real `network.cascade` runs end to end
on a handful of forced paths (every image leaves at one kept exit, or none does and the final
exit answers) and the measured time is compared with that sum. A deviation above 10% means the
additive model is off on this device (launch overheads, caches, fusion) and the search's
latencies should be read with care.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from profiling.timing import LatencyStats, TimingSettings, time_callable

if TYPE_CHECKING:
    from training.network import MessNetwork

WARN_DEVIATION = 0.10


@dataclass(frozen=True, kw_only=True)
class PathCheck:
    """One forced path: the exits run, the one taken, measured versus summed mean latency."""

    exits: tuple[str, ...]
    taken: str
    measured: LatencyStats
    predicted_ms: float

    @property
    def deviation(self) -> float:
        """(measured - predicted) / measured; positive when the sum underestimates."""
        return (self.measured.mean_ms - self.predicted_ms) / self.measured.mean_ms

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


def predicted_ms(network, means_ms: dict[tuple[str, str], float], exits: tuple[str, ...],
                 taken: str) -> float:
    """Sum of component means for a path: segments up to the exit taken, heads and decisions of
    the exits run, plus tail and final head when the final exit answers."""
    index = {p.name: p.index for p in network.positions}
    specs = {s.id: s for s in network.exits}
    if taken == "final":
        segments = [p.name for p in network.positions] + ["tail"]
        run = list(exits)
    else:
        last = index[specs[taken].position]
        segments = [p.name for p in network.positions if p.index <= last]
        run = list(exits[: exits.index(taken) + 1])
    total = sum(means_ms[("segment", name)] for name in segments)
    total += sum(means_ms[("head", e)] + means_ms[("decision", e)] for e in run)
    if taken == "final":
        total += means_ms[("final", "final")]
    return total


def check_paths(
    network: MessNetwork, x: torch.Tensor, means_ms: dict[tuple[str, str], float], *,
    settings: TimingSettings, paths: list[tuple[str, ...]],
    progress: Callable[[int, str], None] | None = None,
) -> list[PathCheck]:
    """Time the real cascade on forced paths and compare with the summed component means.

    A path `(e,)` runs with th_pix tiny and th_img = 1: every pixel's top-1 probability is at
    least 1/C, so every image leaves at e. The empty path has no early exit (final answers).
    """
    from training.network import CascadeConfig

    checks = []
    for exits in paths:
        config = CascadeConfig(exits=exits, th_pix=_FORCE_TH_PIX, th_img=1.0)
        with torch.inference_mode():
            result = network.cascade(x, config)
        taken = result.exit_ids[0]
        assert all(t == taken for t in result.exit_ids), f"forced path {exits} split the batch"
        stats = time_callable(partial(network.cascade, x, config), device=x.device,
                              settings=settings)
        checks.append(PathCheck(exits=exits, taken=taken, measured=stats,
                                predicted_ms=predicted_ms(network, means_ms, exits, taken)))
        if progress:
            progress(len(checks), checks[-1].name)
    return checks


_FORCE_TH_PIX = 1e-6
