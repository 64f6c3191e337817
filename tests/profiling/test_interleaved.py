"""The interleaved protocol on a real tiny network: the round runs what the cascade runs."""

from __future__ import annotations

import pytest
import torch

from profiling.load import PassLoad
from profiling.protocol import ProtocolSettings, cascade_order, measure
from profiling.timing import measure_torch
from profiling.verdict import UnstableProfileError, judge


class QuietLoad:
    def start(self) -> None:
        return None

    def stop(self, token: None) -> PassLoad:
        return PassLoad(wall_s=1.0, other_cores=0.0, free_cores=1.0, load_1m=0.5, cpu_mhz=None,
                        contended=False)


def _segments(net) -> list[str]:
    return [p.name for p in net.positions] + ["tail"]


def test_round_order_is_the_cascade_order(tiny_network) -> None:
    """Hooks on the real modules record what `network.cascade` runs when no image leaves;
    the protocol's order, restricted to the same exits and to module calls, is identical."""
    net = tiny_network
    kept = []  # one exit per position: a valid cascade keeping every position
    for position in net.positions:
        kept.append(next(e.id for e in net.exits if e.position == position.name))
    calls: list[tuple[str, str]] = []
    handles = []
    for name, segment in zip(_segments(net), net.segments, strict=True):
        handles.append(segment.register_forward_hook(
            lambda *_, n=name: calls.append(("segment", n))))
    for exit_id in kept:
        handles.append(net.head(exit_id).register_forward_hook(
            lambda *_, e=exit_id: calls.append(("head", e))))
    handles.append(net.decision.register_forward_hook(
        lambda *_: calls.append(("decision", "?"))))
    handles.append(net.final_head.register_forward_hook(
        lambda *_: calls.append(("final", "final"))))
    from training.network import CascadeConfig

    try:
        with torch.inference_mode():
            result = net.cascade(torch.randn(1, 3, 32, 32),
                                 CascadeConfig(exits=tuple(kept), th_pix=1.0, th_img=1.0))
    finally:
        for h in handles:
            h.remove()
    assert result.exit_ids == ["final"]  # nobody left: every kept exit and the final ran
    order = cascade_order(_segments(net), [(e, net.position_of(e).name) for e in kept])
    expected = [(k, "?" if k == "decision" else n) for k, n in order if k != "upsample"]
    assert calls == expected
    full = cascade_order(_segments(net), [(e.id, e.position) for e in net.exits])
    from training.flops import network_components

    assert len(full) == len(set(full)) == len(network_components(net, (32, 32)))


def test_unknown_position_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown position"):
        cascade_order(["a", "tail"], [("b/h", "b")])


def test_measure_torch_times_real_modules_in_milliseconds(tiny_network) -> None:
    x = torch.randn(1, 3, 32, 32)
    seg = tiny_network.segments[0]
    result = measure_torch([("seg", lambda: seg(x)), ("relu", lambda: torch.relu(x))],
                           device=torch.device("cpu"),
                           settings=ProtocolSettings(warmup=1, repeat=5, max_remeasure=0),
                           load=QuietLoad(), reference=["seg"])
    assert [len(v) for v in result.samples_ms.values()] == [5, 5]
    assert 0 < result.estimate_ms("seg") < 1000
    assert not torch.is_inference_mode_enabled()


def _fake_result(stable: bool):
    samples = {"a": [1.0] * 10, "b": [1.0, 2.0, 3.0] * 3 if not stable else [1.0] * 9}
    fns = []
    it = {k: iter(v) for k, v in samples.items()}
    clock = [0.0]

    def make(k):
        def run() -> None:
            clock[0] += next(it[k]) / 1e3
        return run
    fns = [(k, make(k)) for k in samples]
    return measure(fns, settings=ProtocolSettings(warmup=0, repeat=3, max_remeasure=0),
                   load=QuietLoad(), clock=lambda: clock[0])


def test_verdict_names_the_figures_and_refuses() -> None:
    bad = judge(_fake_result(stable=False), {"final": 0.02})
    assert not bad.ok and "1 of 2 components unstable" in bad.line()
    assert "\n" not in bad.line() and "spread" in bad.line()
    gap = judge(_fake_result(stable=True), {"final": 0.02, "a/h": -0.21})
    assert not gap.ok and "a/h -21%" in gap.line() and "final" not in gap.line().split(":")[-1]
    good = judge(_fake_result(stable=True), {"final": 0.05})
    assert good.ok and good.quality["closed_loop"] == [{"path": "final", "deviation": 0.05}]
    assert UnstableProfileError.exit_code == 3
