"""Timing harness: raw samples, statistics, repeat and min-time."""

import time

import numpy as np
import pytest
import torch

from profiling.timing import LatencyStats, TimingSettings, time_callable, time_module


def test_stats_from_samples() -> None:
    stats = LatencyStats.from_samples([4.0, 1.0, 3.0, 2.0])
    assert stats.n == 4 and stats.min_ms == 1.0 and stats.max_ms == 4.0
    assert stats.mean_ms == pytest.approx(2.5)
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.std_ms == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert stats.samples_ms == (4.0, 1.0, 3.0, 2.0)
    with pytest.raises(ValueError, match="samples_ms"):
        LatencyStats.from_samples([])


def test_settings_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="repeat"):
        TimingSettings(repeat=0)
    with pytest.raises(ValueError, match="min_time_s"):
        TimingSettings(min_time_s=-1.0)


def test_warmup_and_repeat_counts_and_sample_units() -> None:
    calls = []

    def work() -> None:
        calls.append(1)
        time.sleep(0.002)

    stats = time_callable(work, device=torch.device("cpu"),
                          settings=TimingSettings(warmup=2, repeat=5))
    assert len(calls) == 7 and stats.n == 5
    assert stats.min_ms >= 1.5 and stats.max_ms < 200  # milliseconds, not seconds


def test_min_time_adds_runs() -> None:
    # A busy machine stretches a 1 ms sleep to tens of ms: judge by the total, not the count.
    stats = time_callable(lambda: time.sleep(0.001), device=torch.device("cpu"),
                          settings=TimingSettings(warmup=0, repeat=1, min_time_s=0.2))
    total = sum(stats.samples_ms)
    assert stats.n >= 2 and total >= 200.0
    assert total - stats.samples_ms[-1] < 200.0  # stopped at the first run that reached it


def test_time_module_runs_the_module() -> None:
    conv = torch.nn.Conv2d(3, 4, 3)
    stats = time_module(conv, torch.zeros(1, 3, 16, 16), settings=TimingSettings(repeat=3))
    assert stats.n == 3 and stats.mean_ms > 0


def test_heap_allocations_are_kept_on_linux_glibc() -> None:
    import sys

    from profiling.device import device_fingerprint
    from profiling.timing import keep_heap_allocations

    applied = keep_heap_allocations()
    if sys.platform.startswith("linux"):
        assert applied  # this project's machines run glibc
    fingerprint = device_fingerprint(torch.device("cpu"), dtype=torch.float32, threads=1)
    assert fingerprint["allocator"] == ("heap-kept" if applied else "default")
