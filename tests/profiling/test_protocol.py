"""The interleaved protocol with an injected clock and load: order, estimate, flags, re-measuring."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from profiling.load import PassLoad
from profiling.protocol import ProtocolSettings, measure, run_rounds
from profiling.quality import assess_samples


class FakeClock:
    """Time advances only when a fake component 'works' (`advance`)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeLoad:
    """A load probe that reports the given other-process cores for each pass in turn."""

    def __init__(self, *others: float, free: float = 1.0) -> None:
        self.others: Iterator[float] = itertools.chain(others, itertools.repeat(others[-1]))
        self.free = free
        self.passes = 0

    def start(self) -> None:
        return None

    def stop(self, token: None) -> PassLoad:
        self.passes += 1
        other = next(self.others)
        return PassLoad(wall_s=1.0, other_cores=other, free_cores=self.free, load_1m=None,
                        cpu_mhz=None, contended=other > self.free + 0.25)


def components(clock: FakeClock, durations_ms: dict[str, Iterator[float]], calls: list[str]):
    def make(key: str):
        def work() -> None:
            calls.append(key)
            clock.advance(next(durations_ms[key]) / 1e3)
        return work
    return [(key, make(key)) for key in durations_ms]


def steady(ms: float, jitter: float = 0.01, seed: int = 0) -> Iterator[float]:
    rng = np.random.default_rng(seed)
    while True:
        yield ms * (1 + jitter * rng.uniform(-1, 1))


def noisy(ms: float, seed: int = 0) -> Iterator[float]:
    """Half the runs hit by bursts of 1-3x extra time: a wide spread."""
    rng = np.random.default_rng(seed)
    while True:
        yield ms * (1 + (rng.uniform(1, 3) if rng.uniform() < 0.5 else 0.0))


def test_every_round_runs_every_component_once_in_the_given_order() -> None:
    clock, calls = FakeClock(), []
    order = ["segment:a", "head:a/h", "decision:a/h", "segment:tail", "final:final"]
    comps = components(clock, {k: steady(1.0) for k in order}, calls)
    samples = run_rounds(comps, warmup=2, repeat=5, min_time_s=0.0, max_repeat=100,
                         clock=clock)
    assert calls == order * 7  # 2 warm-up rounds, then 5 timed rounds, never one key in a row
    assert all(len(v) == 5 for v in samples.values())
    assert samples["segment:a"][0] == pytest.approx(1.0, rel=0.02)  # milliseconds


def test_min_time_adds_whole_rounds() -> None:
    clock, calls = FakeClock(), []
    comps = components(clock, {"a": steady(10.0), "b": steady(10.0)}, calls)
    samples = run_rounds(comps, warmup=0, repeat=1, min_time_s=0.2, max_repeat=1000,
                         clock=clock)
    assert len(samples["a"]) == len(samples["b"]) == 10  # 10 rounds x 20 ms = 0.2 s


def test_sync_runs_before_each_clock_read() -> None:
    clock, events = FakeClock(), []
    comps = [("x", lambda: events.append("run"))]
    run_rounds(comps, warmup=0, repeat=2, min_time_s=0.0, max_repeat=10,
               sync=lambda: events.append("sync"), clock=clock)
    assert events == ["run", "sync", "run", "sync"]


def test_a_burst_times_only_the_last_run_of_each_component() -> None:
    """Cold first runs (a head after dozens of other components) must not be what is stored:
    within a round each component runs `burst` times in a row and only the last is timed."""
    clock, runs = FakeClock(), {"a": 0, "b": 0}

    def component(name: str):
        def run() -> None:
            runs[name] += 1
            clock.advance(0.009 if runs[name] % 2 == 1 else 0.004)  # cold, then warm
        return run

    samples = run_rounds([("a", component("a")), ("b", component("b"))], warmup=0, repeat=3,
                         min_time_s=0.0, max_repeat=10, clock=clock, burst=2)
    assert runs == {"a": 6, "b": 6}
    assert samples == {"a": pytest.approx([4.0] * 3), "b": pytest.approx([4.0] * 3)}
    assert ProtocolSettings().burst == 2 and ProtocolSettings().as_dict()["burst"] == 2
    with pytest.raises(ValueError, match="burst"):
        ProtocolSettings(burst=0)


def test_clean_samples_are_not_flagged() -> None:
    clock, calls = FakeClock(), []
    comps = components(clock, {"seg": steady(5.0), "head": steady(1.0, seed=1),
                               "decision": steady(0.02, jitter=0.5, seed=2)}, calls)
    load = FakeLoad(0.1)
    result = measure(comps, settings=ProtocolSettings(warmup=1, repeat=30), load=load,
                     reference=["seg"], clock=clock)
    assert result.stable and result.unstable == []
    assert load.passes == 1  # nothing re-measured
    assert result.estimate_ms("seg") == pytest.approx(5.0, rel=0.01)
    # the tiny decision is judged against 2% of the 5 ms reference, not its own 0.02 ms
    assert result.quality["decision"].floor_ms == pytest.approx(0.1, rel=0.02)


def test_noisy_samples_are_flagged_after_bounded_remeasurement() -> None:
    clock, calls = FakeClock(), []
    comps = components(clock, {"seg": steady(5.0), "head": noisy(1.0)}, calls)
    load = FakeLoad(0.0)
    settings = ProtocolSettings(warmup=0, repeat=20, max_remeasure=2, burst=1)
    result = measure(comps, settings=settings, load=load, reference=["seg"], clock=clock)
    assert result.unstable == ["head"]
    q = result.quality["head"]
    assert not q.stable and q.rel_spread > 0.10 and "spread" in (q.reason or "")
    assert load.passes == 3
    # the stable component was measured in the first pass only; the noisy one in every pass
    assert calls.count("seg") == 20 and calls.count("head") == 60


def test_a_transient_burst_is_remeasured_away() -> None:
    clock, calls = FakeClock(), []

    def burst_then_quiet() -> Iterator[float]:
        gen = noisy(1.0, seed=3)
        for _ in range(20):
            yield next(gen)
        yield from steady(1.0)

    comps = components(clock, {"seg": steady(5.0), "head": burst_then_quiet()}, calls)
    result = measure(comps, settings=ProtocolSettings(warmup=0, repeat=20), load=FakeLoad(0.0),
                     reference=["seg"], clock=clock)
    assert result.stable
    assert result.estimate_ms("head") == pytest.approx(1.0, rel=0.02)
    assert len(result.passes) == 2


def test_a_contended_pass_flags_everything_even_with_a_tight_spread() -> None:
    clock, calls = FakeClock(), []
    comps = components(clock, {"seg": steady(10.0), "head": steady(2.0)}, calls)
    result = measure(comps, settings=ProtocolSettings(warmup=0, repeat=10, max_remeasure=1),
                     load=FakeLoad(1.9, free=1.0), clock=clock)
    assert set(result.unstable) == {"seg", "head"}
    assert all("cores" in (q.reason or "") for q in result.quality.values())
    assert result.summary()["contended"] is True and len(result.passes) == 2
    # the load clears on the re-measurement: everything passes
    clock, calls = FakeClock(), []
    comps = components(clock, {"seg": steady(10.0), "head": steady(2.0)}, calls)
    result = measure(comps, settings=ProtocolSettings(warmup=0, repeat=10, max_remeasure=1),
                     load=FakeLoad(1.9, 0.2, free=1.0), clock=clock)
    assert result.stable and result.summary()["contended"] is False


def test_median_ignores_bursts_the_mean_does_not() -> None:
    rng = np.random.default_rng(0)
    x = np.full(40, 4.0) + rng.uniform(0, 0.04, 40)
    x[::5] *= 3  # a burst on one round in five
    q = assess_samples(x, threshold=0.1)
    assert q.median_ms == pytest.approx(4.0, rel=0.01)
    assert x.mean() > 1.3 * q.median_ms
    assert q.outliers == pytest.approx(0.2)


@pytest.mark.parametrize("kwargs, field", [
    ({"repeat": 0}, "repeat"), ({"min_time_s": -1.0}, "min_time_s"),
    ({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"),
    ({"max_remeasure": -1}, "max_remeasure"), ({"warmup": -1}, "warmup"),
])
def test_settings_name_the_bad_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ProtocolSettings(**kwargs)


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        measure([("a", lambda: None), ("a", lambda: None)], settings=ProtocolSettings(),
                load=FakeLoad(0.0))


def test_chain_calls_feed_each_step_the_previous_output() -> None:
    from profiling.protocol import chain_calls

    seen: list[tuple[str, int]] = []

    def step(name: str, add: int):
        def run(value: int) -> int:
            seen.append((name, value))
            return value + add
        return run

    calls = chain_calls([("a", step("a", 1)), ("b", step("b", 10))], 0)
    assert seen == [("a", 0), ("b", 1)]  # primed once
    seen.clear()
    assert calls[("segment", "b")]() == 11 and calls[("segment", "a")]() == 1
    assert seen == [("b", 1), ("a", 0)]
