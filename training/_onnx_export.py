"""ONNX export of a CascadeModule: one graph per stage, head, decision and upsampling.

ONNX graphs have no cheap data-dependent early exit, so the cascade is cut into graphs and a
small runner (`run_cascade.py`, a copy of training/onnx_runner.py written next to them) applies
the exit policy between them. Every graph has a free batch axis: the runner splits a batch at
each exit and regroups the images that continue.
Uses torch's TorchScript-based exporter (``dynamo=False``), which needs only the ``onnx`` package.

The exit policy (training.policy) uses an in-place masked OR and ``nanmedian``, which that
exporter cannot express; `OnnxDecision` computes the same thing out of place, with the median
taken by sorting (a median selects one of the values, so both give identical numbers; the test
checks that on real logits).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import TrainingError

OPSET = 17


def check_onnx_available() -> None:
    """TrainingError naming the install command when the ``onnx`` package is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise TrainingError(
            "ONNX export needs the onnx package: pip install onnx (or pip install 'mess-dse[onnx]')"
        ) from exc


class OnnxDecision(nn.Module):
    """training.policy.ExitDecision rewritten with ops the ONNX exporter knows; same numbers."""

    def __init__(self, *, th_pix: float, edge_correction: bool, edge_width: int, window: int) -> None:
        super().__init__()
        self.th_pix = float(th_pix)
        self.edge_correction = bool(edge_correction)
        self.edge_width = int(edge_width)
        self.window = int(window)

    def forward(self, native_logits: torch.Tensor) -> torch.Tensor:
        top1, labels = native_logits.float().softmax(dim=1).max(dim=1)
        conf = top1
        if self.edge_correction:
            conf = torch.where(self._edges(labels), self._median(top1), top1)
        return (conf >= self.th_pix).flatten(1).float().mean(dim=1)

    def _edges(self, labels: torch.Tensor) -> torch.Tensor:
        lab = labels[:, None].float()
        # A pixel is an edge when its right/left/lower/upper neighbour has another label.
        h = (lab[:, :, :, 1:] != lab[:, :, :, :-1]).float()
        v = (lab[:, :, 1:, :] != lab[:, :, :-1, :]).float()
        edges = torch.maximum(F.pad(h, (1, 0, 0, 0)), F.pad(h, (0, 1, 0, 0)))
        edges = torch.maximum(edges, torch.maximum(F.pad(v, (0, 0, 1, 0)), F.pad(v, (0, 0, 0, 1))))
        if self.edge_width > 0:
            k = 2 * self.edge_width + 1
            edges = F.max_pool2d(edges, k, stride=1, padding=self.edge_width)
        return edges[:, 0] > 0

    def _median(self, values: torch.Tensor) -> torch.Tensor:
        n, h, w = values.shape
        k = 2 * self.window + 1
        # Outside the image: +2 (confidences are <= 1), sorted last and not counted.
        padded = F.pad(values[:, None], (self.window,) * 4, value=2.0)
        patches = F.unfold(padded, k)  # [N, k*k, h*w]
        ordered, _ = torch.sort(patches, dim=1)
        count = (patches <= 1.0).sum(dim=1, keepdim=True)
        index = torch.div(count - 1, 2, rounding_mode="floor")  # lower median, as nanmedian
        return ordered.gather(1, index).reshape(n, h, w)


# The runner shipped next to the graphs as run_cascade.py: a plain numpy module of this package.
RUNNER_FILE = Path(__file__).with_name("onnx_runner.py")


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
            inputs: list[str], outputs: list[str], *, dynamic_batch: bool = False) -> None:
    """One graph; with ``dynamic_batch`` the first axis of every input and output is free."""
    axes = {name: {0: "batch"} for name in [*inputs, *outputs]} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                              input_names=inputs, output_names=outputs, dynamic_axes=axes)
    except ModuleNotFoundError as exc:
        raise TrainingError(
            f"the ONNX exporter needs {exc.name}: pip install {exc.name}"
        ) from exc
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:  # type: ignore[attr-defined]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"ONNX cannot express {path.stem} ({first})") from exc


class _EarlyHead(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.head(feature)


def onnx_decisions(module: Any) -> list[OnnxDecision]:
    """The ONNX form of each early exit's decision, with its bound th_pix."""
    out = []
    for thresholded in module.decisions:
        policy = thresholded.decision
        out.append(OnnxDecision(th_pix=thresholded.th_pix, edge_correction=policy.edge_correction,
                                edge_width=policy.edge_width, window=policy.window).eval())
    return out


def export_onnx(module: Any, folder: Path, *, meta: dict[str, Any], example: torch.Tensor) -> None:
    """Write the graphs, cascade.json and run_cascade.py of a CascadeModule into ``folder``.

    Raises:
        TrainingError: onnx missing, or a component the exporter cannot express.
    """
    check_onnx_available()
    # A private copy: the exporter toggles train/eval on what it is given.
    module = copy.deepcopy(module).eval()
    feature, skip = example, example
    names: list[str] = []
    decisions = onnx_decisions(module)
    stages = [*module.early_stages, module.last_stage]
    with torch.no_grad():
        for j, stage in enumerate(stages):
            last = j == len(stages) - 1
            _export(stage, (feature, skip), folder / f"stage_{j}.onnx",
                    ["feature", "skip"], ["feature_out", "skip_out"], dynamic_batch=True)
            feature, skip = stage(feature, skip)
            if last:
                _export(module.last_head, (feature, skip), folder / f"head_{j}.onnx",
                        ["feature", "skip"], ["logits"], dynamic_batch=True)
                logits = module.last_head(feature, skip)
                up = module.last_upsample
            else:
                head = _EarlyHead(module.early_heads[j]).eval()
                _export(head, (feature,), folder / f"head_{j}.onnx", ["feature"], ["logits"],
                        dynamic_batch=True)
                logits = head(feature)
                _export(decisions[j], (logits,), folder / f"decision_{j}.onnx",
                        ["logits"], ["c_img"], dynamic_batch=True)
                names.append(f"decision_{j}.onnx")
                up = module.early_upsample[j]
            _export(up, (logits,), folder / f"upsample_{j}.onnx", ["logits"], ["logits_up"],
                    dynamic_batch=True)
            names += [f"stage_{j}.onnx", f"head_{j}.onnx", f"upsample_{j}.onnx"]
    # "batch": any; the runner splits a batch at each exit and regroups the images that continue.
    # The exporter drops an input a graph does not read (`skip` outside LR-ASPP's last head and
    # of the stage that computes it), so the manifest lists what each graph takes.
    import onnx

    inputs = {name: [i.name for i in onnx.load(str(folder / name), load_external_data=False)
                     .graph.input] for name in names}
    manifest = {**meta, "graphs": sorted(names), "opset": OPSET, "batch": "any",
                "inputs": inputs}
    (folder / "cascade.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (folder / "run_cascade.py").write_text(RUNNER_FILE.read_text())
