"""ONNX Runtime as a timing backend: the latency model's components and the deployed cascade,
run by onnxruntime instead of torch eager.

Each component is exported once (training.onnx_components) into a private temporary folder and
loaded with the probe's own session factory (profiling.ort_probe: threads, graph optimisation
level, execution provider), so a profile measured here and one imported from `probe.py` on a
device run the same graphs the same way and carry the same fingerprint. The closed loop times
what `dse export --format onnx` ships: the cascade module exported to per-stage graphs and run
by its numpy runner (training.onnx_runner).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from profiling import ort_probe
from profiling.errors import ProfilingError

if TYPE_CHECKING:
    from training.network import MessNetwork

Key = tuple[str, str]
RUNTIME = "onnxruntime"


def runtime_settings(*, threads: int, optimization: str = "all",
                     provider: str = ort_probe.DEFAULT_PROVIDER,
                     spinning: bool = False) -> ort_probe.RuntimeSettings:
    """Checked ONNX Runtime settings; ProfilingError (one line) for a bad value or a machine
    without onnxruntime or without the provider."""
    try:
        settings = ort_probe.RuntimeSettings(threads=threads, optimization=optimization,
                                             provider=provider, spinning=spinning)
        ort_probe.session_factory(settings)  # onnxruntime and the provider are here
    except ort_probe.ProbeError as exc:
        raise ProfilingError(str(exc)) from exc
    return settings


def runtime_of(fingerprint: dict[str, Any]) -> str:
    """The runtime a device fingerprint was measured with (torch fingerprints predate the key)."""
    return str(fingerprint.get("runtime", "torch"))


@dataclass(kw_only=True)
class OrtComponents:
    """Every requested component as a loaded ONNX Runtime session bound to its real input.

    ``chain`` holds the backbone segments as steps (array -> array) in order, for in-sequence
    timing; ``calls`` every component (segments included) as a zero-argument run on its input.
    Keep the object alive while timing: it owns the folder the graphs were exported to.
    """

    settings: ort_probe.RuntimeSettings
    order: list[Key]
    chain: list[tuple[str, Callable[[np.ndarray], np.ndarray]]]
    chain_input: np.ndarray
    calls: dict[Key, Callable[[], object]]
    _folder: tempfile.TemporaryDirectory = field(repr=False)

    def close(self) -> None:
        self._folder.cleanup()


def load_components(network: MessNetwork, x: torch.Tensor, settings: ort_probe.RuntimeSettings,
                    *, keys: Sequence[Key] | None = None) -> OrtComponents:
    """Export ``keys`` (default all; their producers are added) and load them under
    ``settings``, fed from the image batch ``x`` (float32, on the CPU).

    Raises:
        ProfilingError: onnx/onnxruntime missing or a component ONNX cannot express.
    """
    from training.errors import TrainingError
    from training.onnx_components import IMAGE, export_components

    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ProfilingError("ONNX Runtime timing runs float32 on the CPU; use --dtype float32 "
                             "--compute cpu with --runtime onnxruntime")
    folder = tempfile.TemporaryDirectory(prefix="mess-ort-")
    try:
        image = x.detach().numpy()
        graphs = export_components(network, folder.name, input_size=(int(x.shape[-2]),
                                   int(x.shape[-1])), batch=int(x.shape[0]), keys=keys)
        manifest = {"components": [g.as_dict() for g in graphs]}
        make = ort_probe.session_factory(settings)
        runs = ort_probe.component_runs(folder.name, manifest, make, image=image)
    except TrainingError as exc:
        folder.cleanup()
        raise ProfilingError(str(exc)) from exc
    except ort_probe.ProbeError as exc:
        folder.cleanup()
        raise ProfilingError(str(exc)) from exc
    calls: dict[Key, Callable[[], object]] = {}
    chain: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = []
    for graph, (_, session, feeds) in zip(graphs, runs, strict=True):
        calls[(graph.kind, graph.name)] = partial(session, feeds)
        if graph.kind == "segment":
            chain.append((graph.name, partial(_step, session, graph.inputs[0].name)))
    assert not chain or graphs[0].inputs[0].source == IMAGE
    return OrtComponents(settings=settings, order=[(g.kind, g.name) for g in graphs],
                         chain=chain, chain_input=image, calls=calls, _folder=folder)


def _step(session: Callable[[dict], list], name: str, feature: np.ndarray) -> np.ndarray:
    return session({name: feature})[0]


class OrtCascade:
    """A deployed cascade module exported as ``dse export --format onnx`` writes it and run by
    the shipped numpy runner under ``settings``: ``(images [N, 3, H, W] tensor) -> (logits
    tensor, exit index tensor [N])``, the contract of training.export's CascadeModule, so
    `dse verify` and the closed loop time it like the torch module."""

    def __init__(self, module: torch.nn.Module, example: torch.Tensor,
                 settings: ort_probe.RuntimeSettings) -> None:
        from training._onnx_export import export_onnx
        from training.errors import TrainingError
        from training.onnx_runner import Cascade

        self._folder = tempfile.TemporaryDirectory(prefix="mess-ort-cascade-")
        try:
            export_onnx(module, Path(self._folder.name), meta=_cascade_meta(module),
                        example=example[:1].float().cpu())
            self.cascade = Cascade(self._folder.name,
                                   make_session=ort_probe.session_factory(settings))
        except (TrainingError, ort_probe.ProbeError) as exc:
            self._folder.cleanup()
            raise ProfilingError(str(exc)) from exc
        self.exit_ids = list(self.cascade.exit_ids)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The runner itself on a float32 array (what the closed loop times)."""
        return self.cascade(images)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, taken = self.cascade(images.detach().cpu().numpy())
        index = torch.tensor([self.exit_ids.index(e) for e in taken], dtype=torch.int64)
        return torch.from_numpy(logits), index

    def eval(self) -> OrtCascade:
        return self

    def close(self) -> None:
        self._folder.cleanup()


def _cascade_meta(module: Any) -> dict[str, Any]:
    return {"exit_ids": list(module.exit_ids), "th_img": float(module.th_img),
            "num_classes": int(module.num_classes)}


@dataclass
class OnnxRuntimeBackend:
    """The latency pass's timing backend for ONNX Runtime (profiling.backends.TimingBackend).

    ``workload`` exports the network's components and loads them under ``settings``; the
    fingerprint is the probe's own (`ort_probe.fingerprint`), so a profile measured here and one
    a probe pack brings back from the same machine with the same settings are the same device.
    """

    settings: ort_probe.RuntimeSettings
    runtime: str = RUNTIME
    _loaded: list[Any] = field(default_factory=list, repr=False)

    def fingerprint(self) -> dict[str, Any]:
        try:
            return ort_probe.fingerprint(self.settings)
        except ort_probe.ProbeError as exc:
            raise ProfilingError(str(exc)) from exc

    def workload(self, network: MessNetwork, x: torch.Tensor) -> Any:
        from profiling.backends import Workload

        components = load_components(network, x, self.settings)
        self._loaded.append(components)
        calls = {key: call for key, call in components.calls.items() if key[0] != "segment"}
        return Workload(device=torch.device("cpu"), chain=tuple(components.chain),
                        chain_input=components.chain_input, calls=calls,
                        order=tuple(components.order))

    def cascade_call(self, module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
        cascade = OrtCascade(module, x, self.settings)
        self._loaded.append(cascade)
        return partial(cascade.run, x.detach().cpu().numpy())

    def close(self) -> None:
        """Remove the exported graphs (the calls handed out stop working)."""
        while self._loaded:
            self._loaded.pop().close()
