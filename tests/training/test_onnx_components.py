"""Every latency-model component exported once to ONNX computes what the network computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from profiling.protocol import cascade_order
from training.adapters import build_network, describe_positions
from training.errors import TrainingError
from training.flops import network_components
from training.onnx_components import (
    IMAGE,
    component_key,
    export_components,
    export_order,
    with_producers,
)
from training.policy import ExitDecision

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = (32, 32)


def _network(arch: str = "fcn_resnet18"):
    torch.manual_seed(0)
    names = [p.name for p in describe_positions(arch)]
    return build_network(arch, num_classes=3, head_space=["nocrm-b0-fcn"],
                         positions=names[1:3]).eval()


def _run_all(folder, graphs, image: np.ndarray) -> dict[str, np.ndarray]:
    values = {IMAGE: image}
    for graph in graphs:
        session = ort.InferenceSession(str(folder / graph.file), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i.name for i in graph.inputs]
        feeds = {i.name: values[i.source] for i in graph.inputs}
        for i in graph.inputs:
            assert tuple(values[i.source].shape) == i.shape
        values[graph.key] = session.run(None, feeds)[0]
    return values


@pytest.mark.parametrize("arch", ["fcn_resnet18", "lraspp_mobilenet_v3_large"])
def test_every_component_is_exported_once_and_equals_the_network(arch, tmp_path) -> None:
    network = _network(arch)
    graphs = export_components(network, tmp_path, input_size=SIZE, batch=2)
    assert [(g.kind, g.name) for g in graphs] == export_order(network)
    segments = [p.name for p in network.positions] + ["tail"]
    exits = [(e.id, e.position) for e in network.exits]
    assert export_order(network) == cascade_order(segments, exits)  # the timing round order
    keys = [g.key for g in graphs]
    assert len(set(keys)) == len(keys)
    expected = {component_key(c.kind, c.name) for c in network_components(network, SIZE)}
    expected |= {component_key("upsample", e) for e in (*network.exit_ids, "final")}
    assert set(keys) == expected
    image = np.random.default_rng(3).standard_normal((2, 3, *SIZE), dtype=np.float32)
    values = _run_all(tmp_path, graphs, image)
    x = torch.from_numpy(image)
    with torch.no_grad():
        native = network.forward_native(x)
        full = network(x)
    for exit_id, logits in native.items():
        kind = "final" if exit_id == "final" else "head"
        np.testing.assert_allclose(values[component_key(kind, exit_id)], logits.numpy(),
                                   rtol=0, atol=1e-4)
        np.testing.assert_allclose(values[component_key("upsample", exit_id)],
                                   full[exit_id].numpy(), rtol=0, atol=1e-4)
        if exit_id != "final":  # the decision graph is the shipped one, at the timing threshold
            with torch.no_grad():
                c_img = ExitDecision()(logits, 0.9).numpy()
            np.testing.assert_array_equal(values[component_key("decision", exit_id)], c_img)


def test_a_subset_brings_the_producers_of_its_inputs(tmp_path) -> None:
    network = _network()
    exit_id = network.exit_ids[-1]
    wanted = [("decision", exit_id)]
    order = with_producers(network, wanted)
    position = network.position_of(exit_id).name
    segments = [p.name for p in network.positions]
    upto = segments[: segments.index(position) + 1]
    assert order == [("segment", s) for s in upto] + [("head", exit_id), ("decision", exit_id)]
    graphs = export_components(network, tmp_path, input_size=SIZE, keys=wanted)
    assert [(g.kind, g.name) for g in graphs] == order
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(g.file for g in graphs)
    final = with_producers(network, [("upsample", "final")])
    assert final[-2:] == [("final", "final"), ("upsample", "final")]
    assert ("segment", "tail") in final and not any(k == "head" for k, _ in final)


def test_an_unknown_component_names_close_matches() -> None:
    network = _network()
    with pytest.raises(TrainingError, match="no component head:layer9.9.*close matches"):
        with_producers(network, [("head", "layer9.9/nocrm-b0-fcn")])
