"""Latency profile: every component stored once per device fingerprint, closed loop, bad input."""

from __future__ import annotations

import pytest
import torch

from db import repository
from db.session import session_scope
from profiling.closed_loop import choose_paths, predicted_ms
from profiling.errors import ProfilingError
from profiling.latency import LatencySettings, profile_latency
from profiling.timing import TimingSettings
from training.flops import network_components

FAST = LatencySettings(timing=TimingSettings(warmup=1, repeat=3), max_paths=2)


def _expected_components(net) -> set[tuple[str, str]]:
    keys = {("segment", p.name) for p in net.positions} | {("segment", "tail"), ("final", "final")}
    keys.add(("upsample", "final"))
    for e in net.exit_ids:
        keys |= {("head", e), ("decision", e), ("upsample", e)}
    return keys


def test_every_component_is_timed_once_with_its_flops(engine, tiny_network, model_id) -> None:
    result = profile_latency(engine, tiny_network, model_id=model_id, device_name="laptop-cpu",
                             input_size=(32, 32), settings=FAST)
    expected = _expected_components(tiny_network)
    assert len(result.measured) == len(expected) and not result.skipped
    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=result.device.id)
    paths = [r for r in rows if r.kind == "path"]
    rows = [r for r in rows if r.kind != "path"]
    assert {(r.kind, r.name) for r in rows} == expected
    costs = {(c.kind, c.name): c for c in network_components(tiny_network, (32, 32))}
    for r in rows:
        assert r.input_shape == (1, 3, 32, 32) and r.batch == 1 and r.dtype == "float32"
        assert r.n == 3 and len(r.samples_ms) == 3 and r.min_ms <= r.p50_ms <= r.max_ms
        assert r.gflops == pytest.approx(costs[(r.kind, r.name)].gflops)
    assert result.device.fingerprint["threads"] == 1
    # closed loop: two forced early paths and the final path, each against the summed model
    assert [c.taken for c in result.paths][-1] == "final" and len(result.paths) == 3
    for check in result.paths:
        assert check.measured.n == 3 and check.predicted_ms > 0
    # ... and stored as rows of kind "path": the measured cascade and the sum it was compared to
    assert sorted(r.name for r in paths) == sorted(c.taken for c in result.paths)
    for check in result.paths:
        (row,) = [r for r in paths if r.name == check.taken]
        assert list(row.samples_ms) == list(check.measured.samples_ms)
        assert row.predicted_ms == pytest.approx(check.predicted_ms)
        assert row.deviation == pytest.approx(check.deviation)
        assert row.gflops > 0

    again = profile_latency(engine, tiny_network, model_id=model_id, device_name="laptop-cpu",
                            input_size=(32, 32), settings=FAST)
    assert again.measured == () and len(again.skipped) == len(expected)
    assert again.paths == () and again.device.id == result.device.id and not again.warnings


def test_another_fingerprint_under_the_same_name_warns_and_stays_apart(
        engine, tiny_network, model_id) -> None:
    first = profile_latency(engine, tiny_network, model_id=model_id, device_name="box",
                            input_size=(32, 32), settings=FAST)
    two = LatencySettings(threads=2, timing=FAST.timing, closed_loop=False)
    second = profile_latency(engine, tiny_network, model_id=model_id, device_name="box",
                             input_size=(32, 32), settings=two)
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
                        threads=2, timing=FAST.timing, closed_loop=False))
    assert torch.get_num_threads() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_is_its_own_profile(engine, model_id) -> None:
    from training.adapters import build_network

    torch.manual_seed(0)
    net = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                        positions=["layer2.1"]).eval()
    cuda = torch.device("cuda")
    half = LatencySettings(dtype=torch.float16, timing=FAST.timing, max_paths=1)
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
