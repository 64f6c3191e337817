"""The timing protocol: interleaved rounds, a robust estimate, stability checks, re-measurement.

Timing each component to completion in turn lets a burst of load land on one component and
not the others, biasing it against the rest. Here every component runs once per *round*, in the
order the caller gives (the cascade's order, for a latency profile), and many rounds are taken,
so a burst hits all components alike and the median (see `profiling.quality`) ignores it unless
it lasts for more than half the rounds.

After a pass, each component's spread is judged (`assess_samples`) and the pass's load is read
(`profiling.load`); components that fail (or all of them, when other processes needed this
process's cores) are measured again in a fresh pass of their own, at most `max_remeasure` times.
Whatever is still unstable after that is reported; the caller decides (the latency profile
refuses to store it unless told to keep it, marked noisy).

Nothing here imports torch: a backend (torch eager, ONNX Runtime, a test's fake) passes one
zero-argument callable per component and a `sync` hook that waits for queued device work before
the clock is read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from profiling.load import LoadProbe, PassLoad
from profiling.quality import ComponentQuality, assess_samples

K = TypeVar("K", bound=Hashable)

DEFAULT_THRESHOLD = 0.10
# A component cheaper than this share of the reference (the whole network) is judged against it.
DEFAULT_FLOOR_SHARE = 0.02


def _noop() -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class ProtocolSettings:
    """How to measure and what counts as stable.

    warmup: untimed rounds first. repeat: timed rounds, at least. min_time_s: keep taking rounds
    until the timed rounds add up to this many seconds (capped at max_repeat rounds).
    threshold: the largest allowed spread, IQR / max(median, floor), in (0, 1).
    max_remeasure: extra passes over the components that failed it. floor_share: the floor, as a
    share of the summed medians of the caller's reference components (the whole network).
    """

    warmup: int = 3
    repeat: int = 20
    min_time_s: float = 0.0
    max_repeat: int = 10_000
    threshold: float = DEFAULT_THRESHOLD
    max_remeasure: int = 2
    floor_share: float = DEFAULT_FLOOR_SHARE
    # Runs of a component in a row within a round; only the last is timed. With 1, every
    # component follows dozens of others and is timed with cold caches: on this CPU heads and
    # decisions then took 1.5x their time in a cascade and cheap configurations were
    # over-predicted by a median 25-27% (README, "Torch eager vs ONNX Runtime").
    burst: int = 2

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError("warmup: must be >= 0")
        if self.repeat < 1:
            raise ValueError("repeat: must be >= 1")
        if not math.isfinite(self.min_time_s) or self.min_time_s < 0:
            raise ValueError("min_time_s: must be a finite number >= 0")
        if self.max_repeat < self.repeat:
            raise ValueError("max_repeat: must be >= repeat")
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError("threshold: the stability threshold must be in (0, 1)")
        if self.max_remeasure < 0:
            raise ValueError("max_remeasure: must be >= 0")
        if not 0.0 <= self.floor_share < 1.0:
            raise ValueError("floor_share: must be in [0, 1)")
        if self.burst < 1:
            raise ValueError("burst: must be >= 1")

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": "interleaved", "estimator": "median", "warmup": self.warmup,
                "repeat": self.repeat, "min_time_s": self.min_time_s,
                "threshold": self.threshold, "max_remeasure": self.max_remeasure,
                "floor_share": self.floor_share, "burst": self.burst}


@dataclass(frozen=True, kw_only=True)
class ProtocolResult(Generic[K]):
    """Samples and quality per component (in the caller's order), and the load of each pass."""

    samples_ms: Mapping[K, tuple[float, ...]] = field(repr=False)
    quality: Mapping[K, ComponentQuality]
    passes: tuple[PassLoad, ...]
    settings: ProtocolSettings

    @property
    def unstable(self) -> list[K]:
        return [k for k, q in self.quality.items() if not q.stable]

    @property
    def stable(self) -> bool:
        return not self.unstable

    def estimate_ms(self, key: K) -> float:
        """The number the search uses for `key`: the median of its samples."""
        return self.quality[key].median_ms

    def subset(self, keys: Collection[K]) -> ProtocolResult[K]:
        """The same passes, only `keys`: the components and the closed-loop cascades timed in
        the same rounds are judged and stored apart."""
        return ProtocolResult(samples_ms={k: v for k, v in self.samples_ms.items() if k in keys},
                              quality={k: q for k, q in self.quality.items() if k in keys},
                              passes=self.passes, settings=self.settings)

    def summary(self) -> dict[str, Any]:
        """Figures to store with a profile and to show: spread, unstable count, load per pass."""
        spreads = sorted(q.rel_spread for q in self.quality.values())
        worst = max(self.quality.items(), key=lambda kv: kv[1].rel_spread, default=None)
        return {
            **self.settings.as_dict(),
            "components": len(self.quality),
            "unstable": len(self.unstable),
            "median_rel_spread": spreads[len(spreads) // 2] if spreads else 0.0,
            "max_rel_spread": spreads[-1] if spreads else 0.0,
            "worst": str(worst[0]) if worst else None,
            "passes": [p.as_dict() for p in self.passes],
            "contended": any(p.contended for p in self.passes[-1:]),
        }


def cascade_order(segments: Sequence[str], exits: Sequence[tuple[str, str]],
                  final: str = "final") -> list[tuple[str, str]]:
    """One round's order: what a cascade that keeps every exit runs, with each upsampling next
    to its head. Per backbone position: its segment, then each exit there (head, decision,
    upsample); after the tail segment the final head and its upsampling.

    Args:
        segments: segment names in backbone order, the tail last.
        exits: (exit id, position name) in the network's order.
        final: the final exit's name.
    """
    at: dict[str, list[str]] = {}
    for exit_id, position in exits:
        if position not in segments:
            raise ValueError(f"exit {exit_id!r}: unknown position {position!r}")
        at.setdefault(position, []).append(exit_id)
    order: list[tuple[str, str]] = []
    for name in segments:
        order.append(("segment", name))
        for exit_id in at.get(name, ()):
            order += [("head", exit_id), ("decision", exit_id), ("upsample", exit_id)]
    return [*order, ("final", final), ("upsample", final)]


def chain_calls(chain: Sequence[tuple[str, Callable[[Any], Any]]], chain_input: Any,
                kind: str = "segment") -> dict[tuple[str, str], Callable[[], object]]:
    """Zero-argument calls for a chain of steps (the backbone segments): step i runs on the
    latest output of step i - 1, so within a round each segment sees what the one before it
    just produced, as in the cascade. The chain runs once here, so any subset can be timed;
    call it where the backend wants (torch: under `inference_mode`).
    """
    outputs: list[Any] = [chain_input]
    for _, step in chain:
        outputs.append(step(outputs[-1]))

    def call(i: int, step: Callable[[Any], Any]) -> Callable[[], object]:
        def run() -> object:
            outputs[i + 1] = step(outputs[i])
            return outputs[i + 1]
        return run

    return {(kind, name): call(i, step) for i, (name, step) in enumerate(chain)}


def run_rounds(components: Sequence[tuple[K, Callable[[], object]]], *, warmup: int,
               repeat: int, min_time_s: float, max_repeat: int,
               sync: Callable[[], None] = _noop,
               clock: Callable[[], float] = time.perf_counter,
               on_round: Callable[[int], None] | None = None,
               burst: int = 1) -> dict[K, list[float]]:
    """Time every component once per round, in the given order; `warmup` untimed rounds first.

    Rounds continue until `repeat` rounds and `min_time_s` seconds of timed work (capped at
    `max_repeat` rounds). `sync()` runs after each call, before the clock is read;
    `on_round(rounds done)` after each timed round. Each component runs `burst` times in a row
    and only the last run is timed (warm caches, as in a cascade).
    """
    samples: dict[K, list[float]] = {key: [] for key, _ in components}
    for _ in range(warmup):
        for _key, fn in components:
            fn()
        sync()
    spent, rounds = 0.0, 0
    while rounds < repeat or (spent < min_time_s and rounds < max_repeat):
        for key, fn in components:
            if burst > 1:
                for _ in range(burst - 1):
                    fn()
                sync()
            start = clock()
            fn()
            sync()
            elapsed = clock() - start
            spent += elapsed
            samples[key].append(elapsed * 1e3)
        rounds += 1
        if on_round is not None:
            on_round(rounds)
    return samples


def measure(components: Sequence[tuple[K, Callable[[], object]]], *,
            settings: ProtocolSettings, load: LoadProbe,
            reference: Collection[K] = (), sync: Callable[[], None] = _noop,
            clock: Callable[[], float] = time.perf_counter,
            progress: Callable[[int, int, int], None] | None = None) -> ProtocolResult[K]:
    """Interleaved passes with bounded re-measurement of what is unstable.

    Args:
        components: (key, zero-argument callable), in the order one round runs them.
        settings: rounds, threshold and re-measurement bound.
        load: brackets each pass (`profiling.load.SystemLoadProbe` on a real machine).
        reference: keys whose summed medians are the whole workload (e.g. the network's
            segments and final head); `settings.floor_share` of it is the floor spreads are
            judged against. Empty: no floor.
        sync: waits for queued device work (a GPU); called before each clock read.
        clock: seconds, monotonic (injected by tests).
        progress: `progress(pass, rounds done, components in the pass)` after each round.

    Returns:
        The last pass's samples of each component, their quality, and every pass's load.
    """
    keys = [k for k, _ in components]
    if len(set(keys)) != len(keys):
        raise ValueError("components: keys must be unique")
    samples: dict[K, tuple[float, ...]] = {}
    contended: dict[K, bool] = {}
    passes: list[PassLoad] = []
    todo = list(components)
    quality: dict[K, ComponentQuality] = {}
    for attempt in range(settings.max_remeasure + 1):
        on_round: Callable[[int], None] | None = None
        if progress is not None:
            def on_round(rounds: int, a: int = attempt, n: int = len(todo),
                         report: Callable[[int, int, int], None] = progress) -> None:
                report(a + 1, rounds, n)
        token = load.start()
        taken = run_rounds(todo, warmup=settings.warmup, repeat=settings.repeat,
                           min_time_s=settings.min_time_s, max_repeat=settings.max_repeat,
                           sync=sync, clock=clock, on_round=on_round, burst=settings.burst)
        passes.append(load.stop(token))
        for key, values in taken.items():
            samples[key] = tuple(values)
            contended[key] = passes[-1].contended
        quality = _assess(keys, samples, contended, settings, reference)
        if attempt == settings.max_remeasure:
            break
        todo = [(k, fn) for k, fn in components if not quality[k].stable]
        if not todo:
            break
    return ProtocolResult(samples_ms={k: samples[k] for k in keys}, quality=quality,
                          passes=tuple(passes), settings=settings)


def assess(samples_ms: Mapping[K, Sequence[float]], *, settings: ProtocolSettings,
           passes: Sequence[PassLoad], reference: Collection[K] = ()) -> ProtocolResult[K]:
    """Judge samples taken some other way (the older protocol) like `measure` judges its own:
    one pass, no re-measurement; a contended pass makes every component unstable."""
    samples = {k: tuple(float(v) for v in values) for k, values in samples_ms.items()}
    contended = {k: bool(passes and passes[-1].contended) for k in samples}
    return ProtocolResult(samples_ms=samples,
                          quality=_assess(list(samples), samples, contended, settings, reference),
                          passes=tuple(passes), settings=settings)


def _assess(keys: list[K], samples: Mapping[K, tuple[float, ...]], contended: Mapping[K, bool],
            settings: ProtocolSettings, reference: Collection[K]) -> dict[K, ComponentQuality]:
    total = sum(float(np.median(samples[k])) for k in reference if k in samples)
    floor = settings.floor_share * total
    return {k: assess_samples(samples[k], threshold=settings.threshold, floor_ms=floor,
                              contended=contended[k]) for k in keys}
