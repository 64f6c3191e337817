"""Latency profile: every component stored once per device fingerprint, closed loop, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from db import repository
from db.session import session_scope
from profiling.backends import Interleaved
from profiling.closed_loop import choose_paths, predicted_ms
from profiling.errors import ProfilingError
from profiling.latency import LatencySettings, profile_latency
from profiling.load import PassLoad
from profiling.timing import TimingSettings
from profiling.verdict import UnstableProfileError
from training.flops import network_components

FAST = LatencySettings(timing=TimingSettings(warmup=1, repeat=3), max_paths=2, keep_noisy=True)


class SteadyClock:
    """Every timed call takes exactly 0.5 ms (one tick between the two reads): stable samples."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.0005
        return self.now


class NoisyClock(SteadyClock):
    """Timed calls take 0.5 ms, or 1-3 ms on half the runs: a wide spread."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> float:
        self.now += 0.0005 * (1 + (self.rng.uniform(1, 5) if self.rng.uniform() < 0.5 else 0))
        return self.now


class Load:
    def __init__(self, other_cores: float = 0.0) -> None:
        self.other = other_cores

    def start(self) -> None:
        return None

    def stop(self, token: None) -> PassLoad:
        return PassLoad(wall_s=1.0, other_cores=self.other, free_cores=1.0, load_1m=0.7,
                        cpu_mhz=None, contended=self.other > 1.25)


def _quiet(clock=None, load=None) -> Interleaved:
    return Interleaved(TimingSettings(warmup=1, repeat=6), load=load or Load(),
                       clock=clock or SteadyClock())


NO_LOOP = LatencySettings(timing=TimingSettings(warmup=1, repeat=6), closed_loop=False)


def _expected_components(net) -> set[tuple[str, str]]:
    keys = {("segment", p.name) for p in net.positions} | {("segment", "tail"), ("final", "final")}
    keys.add(("upsample", "final"))
    for e in net.exit_ids:
        keys |= {("head", e), ("decision", e), ("upsample", e)}
    return keys


def _rows(engine) -> list:
    with session_scope(engine) as s:
        return [r for d in repository.list_devices(s) for m in repository.list_models(s)
                for r in repository.load_latency(s, model_id=m.id, device_id=d.id)]


def test_every_component_is_timed_once_with_its_flops(engine, tiny_network, model_id) -> None:
    result = profile_latency(engine, tiny_network, model_id=model_id, device_name="laptop-cpu",
                             input_size=(32, 32), settings=NO_LOOP, protocol=_quiet())
    expected = _expected_components(tiny_network)
    assert len(result.measured) == len(expected) and not result.skipped
    assert result.verdict is not None and result.verdict.ok and not result.warnings
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=result.device.id)
        (quality,) = repository.list_profile_quality(s, device_id=result.device.id)
    assert {(r.kind, r.name) for r in rows} == expected
    costs = {(c.kind, c.name): c for c in network_components(tiny_network, (32, 32))}
    for r in rows:
        assert r.input_shape == (1, 3, 32, 32) and r.batch == 1 and r.dtype == "float32"
        assert r.n == 6 and len(r.samples_ms) == 6 and r.p50_ms == pytest.approx(0.5)
        assert r.gflops == pytest.approx(costs[(r.kind, r.name)].gflops)
        assert not r.noisy and r.quality["stable"] and r.quality["rel_spread"] == 0.0
    assert not quality.noisy and quality.quality["components"] == len(expected)
    assert quality.quality["estimator"] == "median" and quality.quality["passes"]
    assert result.device.fingerprint["threads"] == 1

    again = profile_latency(engine, tiny_network, model_id=model_id, device_name="laptop-cpu",
                            input_size=(32, 32), settings=NO_LOOP, protocol=_quiet())
    assert again.measured == () and len(again.skipped) == len(expected)
    assert again.paths == () and again.device.id == result.device.id and not again.warnings
    assert again.verdict is None


def test_the_closed_loop_is_checked_and_stored_with_the_verdict(
        engine, tiny_network, model_id) -> None:
    """Real timings on whatever this machine is doing: the structure, not the verdict."""
    result = profile_latency(engine, tiny_network, model_id=model_id, device_name="laptop-cpu",
                             input_size=(32, 32), settings=FAST)
    assert result.verdict is not None
    noisy = not result.verdict.ok
    assert any("marked noisy" in w for w in result.warnings) == noisy
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=result.device.id)
        (quality,) = repository.list_profile_quality(s, device_id=result.device.id)
    paths = [r for r in rows if r.kind == "path"]
    assert all(r.noisy == noisy for r in rows) and quality.noisy == noisy
    # closed loop: two forced early paths and the final path, each against the summed model
    assert [c.taken for c in result.paths][-1] == "final" and len(result.paths) == 3
    for check in result.paths:
        assert check.measured.n == 3 and check.predicted_ms > 0
    assert sorted(r.name for r in paths) == sorted(c.taken for c in result.paths)
    for check in result.paths:
        (row,) = [r for r in paths if r.name == check.taken]
        assert list(row.samples_ms) == list(check.measured.samples_ms)
        assert row.predicted_ms == pytest.approx(check.predicted_ms)
        assert row.deviation == pytest.approx(check.deviation)
        assert row.gflops > 0
    gaps = {g["path"]: g["deviation"] for g in quality.quality["closed_loop"]}
    assert gaps == pytest.approx({c.name: c.deviation for c in result.paths})


class Recording(Interleaved):
    """The quiet protocol, remembering what each call timed."""

    def __init__(self) -> None:
        super().__init__(TimingSettings(warmup=1, repeat=6), load=Load(), clock=SteadyClock())
        object.__setattr__(self, "calls", [])

    def measure(self, workload, keys, *, extra=(), progress=None):  # type: ignore[no-untyped-def]
        self.calls.append(("measure", len(keys), [k for k, _ in extra]))
        return super().measure(workload, keys, extra=extra, progress=progress)

    def measure_calls(self, calls, device, *, progress=None):  # type: ignore[no-untyped-def]
        self.calls.append(("measure_calls", 0, [n for n, _ in calls]))
        return super().measure_calls(calls, device, progress=progress)


def test_new_components_and_their_paths_are_timed_in_the_same_rounds(
        engine, tiny_network, model_id) -> None:
    """A change of the machine's speed during the run moves both sides of the closed loop: the
    paths run in the components' rounds (one protocol call, no pass of their own)."""
    # the fake clock makes every call 0.5 ms: the gaps fail, the structure is what is tested
    loop = LatencySettings(timing=TimingSettings(warmup=1, repeat=6), max_paths=2,
                           keep_noisy=True)
    protocol = Recording()
    result = profile_latency(engine, tiny_network, model_id=model_id, device_name="laptop-cpu",
                             input_size=(32, 32), settings=loop, protocol=protocol)
    taken = [c.taken for c in result.paths]
    assert protocol.calls == [("measure", len(_expected_components(tiny_network)),
                                [("path", t) for t in taken])]
    rows = _rows(engine)
    assert {r.n for r in rows} == {6} and len([r for r in rows if r.kind == "path"]) == 3
    # the component rows and the quality count components only, the paths are judged apart
    with session_scope(engine) as s:
        (quality,) = repository.list_profile_quality(s, device_id=result.device.id)
    assert quality.quality["components"] == len(_expected_components(tiny_network))
    assert {g["path"] for g in quality.quality["closed_loop"]} == {c.name for c in result.paths}


def test_noisy_samples_are_refused_and_the_store_stays_unchanged(
        engine, tiny_network, model_id) -> None:
    before = _rows(engine)
    with pytest.raises(UnstableProfileError) as info:
        profile_latency(engine, tiny_network, model_id=model_id, device_name="busy",
                        input_size=(32, 32), settings=NO_LOOP,
                        protocol=_quiet(clock=NoisyClock()))
    line = str(info.value)
    assert "unstable after 2 re-measurement(s)" in line and "nothing stored" in line
    assert "--keep-noisy" in line and "\n" not in line
    assert _rows(engine) == before
    with session_scope(engine) as s:
        assert repository.list_devices(s) == []  # not even the device row


def test_a_contended_pass_is_refused_even_with_tight_samples(
        engine, tiny_network, model_id) -> None:
    with pytest.raises(UnstableProfileError, match="used 1.90 of 1 free core"):
        profile_latency(engine, tiny_network, model_id=model_id, device_name="busy",
                        input_size=(32, 32), settings=NO_LOOP,
                        protocol=_quiet(load=Load(other_cores=1.9)))
    with session_scope(engine) as s:
        assert repository.list_devices(s) == []


def test_kept_noisy_rows_are_marked_and_a_quiet_rerun_replaces_them(
        engine, tiny_network, model_id) -> None:
    keep = LatencySettings(timing=NO_LOOP.timing, closed_loop=False, keep_noisy=True)
    first = profile_latency(engine, tiny_network, model_id=model_id, device_name="busy",
                            input_size=(32, 32), settings=keep,
                            protocol=_quiet(clock=NoisyClock(1)))
    assert first.verdict is not None and not first.verdict.ok
    assert any("stored marked noisy" in w for w in first.warnings)
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=first.device.id)
        (quality,) = repository.list_profile_quality(s, device_id=first.device.id)
    noisy = {(r.kind, r.name) for r in rows if r.noisy}
    assert noisy == {(r.kind, r.name) for r in rows} and quality.noisy
    again = profile_latency(engine, tiny_network, model_id=model_id, device_name="busy",
                            input_size=(32, 32), settings=NO_LOOP, protocol=_quiet())
    assert {tuple(k.split(":", 1)) for k in again.measured} == noisy  # all measured again
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=first.device.id)
        (quality,) = repository.list_profile_quality(s, device_id=first.device.id)
    assert not any(r.noisy for r in rows) and not quality.noisy


def test_rounds_follow_the_cascade_and_segments_feed_each_other(tiny_network) -> None:
    from profiling.backends import TorchEager

    workload = TorchEager().workload(tiny_network.eval(), torch.randn(1, 3, 32, 32))
    order = workload.keys()
    segments = [k for k in order if k[0] == "segment"]
    assert segments == [("segment", p.name) for p in tiny_network.positions] + [
        ("segment", "tail")]
    assert order[-2:] == [("final", "final"), ("upsample", "final")]
    for e in tiny_network.exits:  # each exit right after its position's segment, in that order
        i = order.index(("head", e.id))
        assert order[i + 1:i + 3] == [("decision", e.id), ("upsample", e.id)]
        assert order.index(("segment", e.position)) < i < order.index(segments[
            segments.index(("segment", e.position)) + 1])
    seen: list[int] = []
    hooks = [seg.register_forward_pre_hook(lambda _m, args, i=i: seen.append(args[0].shape[1]))
             for i, seg in enumerate(tiny_network.segments)]
    try:
        _quiet().measure(workload, segments)
    finally:
        for h in hooks:
            h.remove()
    # each segment got its predecessor's output (channels of the previous feature)
    channels = [3] + [p.channels for p in tiny_network.positions]
    assert seen[:len(channels)] == channels


def test_another_fingerprint_under_the_same_name_warns_and_stays_apart(
        engine, tiny_network, model_id) -> None:
    first = profile_latency(engine, tiny_network, model_id=model_id, device_name="box",
                            input_size=(32, 32), settings=NO_LOOP, protocol=_quiet())
    two = LatencySettings(threads=2, timing=NO_LOOP.timing, closed_loop=False)
    second = profile_latency(engine, tiny_network, model_id=model_id, device_name="box",
                             input_size=(32, 32), settings=two, protocol=_quiet())
    assert second.device.id != first.device.id
    assert any("another fingerprint" in w and "threads" in w for w in second.warnings)
    assert len(second.measured) == len(first.measured)  # nothing reused across fingerprints


def test_predicted_path_sums_the_right_components(tiny_network) -> None:
    means = {key: 1.0 for key in _expected_components(tiny_network)}
    means[("segment", "tail")] = 10.0
    exit_id = f"{tiny_network.positions[1].name}/nocrm-b0-fcn"
    means[("upsample", exit_id)] = 0.25
    means[("upsample", "final")] = 0.5
    # two segments, one head, one decision, and that exit's upsampling
    assert predicted_ms(tiny_network, means, (exit_id,), exit_id) == 4.25
    # every segment (3 + tail), the final head and its upsampling, plus the head and decision
    # run on the way (but not that exit's upsampling: the image did not leave there)
    assert predicted_ms(tiny_network, means, (exit_id,), "final") == 3 + 10 + 1 + 0.5 + 2
    heads = {e: (0.0 if e.endswith("crm8-b1-rdi-fcn") else 1.0) for e in tiny_network.exit_ids}
    paths = choose_paths(tiny_network, heads, max_paths=2)
    assert paths[-1] == () and len(paths) == 3
    assert all(p[0].endswith("crm8-b1-rdi-fcn") for p in paths[:-1])


def test_input_size_too_small_is_refused_before_writing(engine, tiny_network, model_id) -> None:
    with pytest.raises(ProfilingError, match="cannot take input size 1x1"):
        profile_latency(engine, tiny_network, model_id=model_id, device_name="x",
                        input_size=(1, 1), settings=FAST)
    with session_scope(engine) as s:
        assert repository.list_devices(s) == []


def test_threads_are_restored(engine, tiny_network, model_id) -> None:
    before = torch.get_num_threads()
    profile_latency(engine, tiny_network, model_id=model_id, device_name="x",
                    input_size=(32, 32), settings=LatencySettings(
                        threads=2, timing=FAST.timing, closed_loop=False, keep_noisy=True))
    assert torch.get_num_threads() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_is_its_own_profile(engine, model_id) -> None:
    from training.adapters import build_network

    torch.manual_seed(0)
    net = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                        positions=["layer2.1"]).eval()
    cuda = torch.device("cuda")
    half = LatencySettings(dtype=torch.float16, timing=FAST.timing, max_paths=1, keep_noisy=True)
    result = profile_latency(engine, net, model_id=model_id, device_name="gpu",
                             input_size=(64, 64), device=cuda, settings=half)
    assert result.device.fingerprint["gpu"] and result.device.fingerprint["dtype"] == "float16"
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=result.device.id)
    assert rows and all(r.dtype == "float16" for r in rows)


def test_segments_are_timed_in_sequence_one_sample_per_backbone_run(tiny_network) -> None:
    from profiling.latency import time_segments_in_sequence

    calls: list[int] = []
    hooks = [seg.register_forward_hook(lambda *_, i=i: calls.append(i))
             for i, seg in enumerate(tiny_network.segments)]
    x = torch.randn(1, 3, 32, 32)
    stats = time_segments_in_sequence(tiny_network.eval(), x, device=torch.device("cpu"),
                                      settings=TimingSettings(warmup=1, repeat=4))
    for hook in hooks:
        hook.remove()
    names = [p.name for p in tiny_network.positions] + ["tail"]
    assert list(stats) == names and all(s.n == 4 for s in stats.values())
    # five whole runs (one warm-up): every segment right after the one before it
    assert calls == list(range(len(names))) * 5
