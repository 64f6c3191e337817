"""Files of a deployable cascade (`training.cascade.CascadeModule`), one format each.

Formats (`export_cascade`):
- ``torchscript``: one file, ``torch.jit.load(path)(images) -> (logits, exit_index)``.
- ``state-dict``: the pruned module's state dict (``torch.load(weights_only=True)``) plus a JSON
  sidecar ``<path>.json`` with the configuration and its exit policy; `load_state_dict_export`
  rebuilds the module (needs this project installed).
- ``onnx``: a folder with one graph per stage, head, decision and upsampling, a ``cascade.json``
  manifest and ``run_cascade.py``, a small documented runner (numpy + onnx's reference evaluator,
  or onnxruntime when installed) that applies the exit policy between the graphs.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.cascade import CascadeModule, build_cascade_module
from training.errors import TrainingError
from training.policy import ExitPolicy

if TYPE_CHECKING:
    from training.network import MessNetwork

FORMATS = ("torchscript", "onnx", "state-dict")


def _trace_decision(decision: nn.Module, native_shape: Sequence[int]) -> torch.jit.ScriptModule:
    """TorchScript of a decision, by tracing (training.policy uses keyword-only arguments, which
    torch.jit.script rejects).

    The policy's one data-dependent branch (skip the median when no pixel is an edge) returns the
    same tensor as the other branch (``where(edges, median, conf)`` with no edge is ``conf``), so
    tracing with an example that has edges gives a graph equal to the module for every input.
    """
    n, c, h, w = (int(v) for v in native_shape)
    # Two classes split down the middle: confident everywhere, with an edge.
    example = torch.zeros(1, c, h, w)
    example[:, 0, :, : max(1, w // 2)] = 4.0
    example[:, min(1, c - 1), :, max(1, w // 2) :] = 4.0
    with torch.no_grad():
        traced = torch.jit.trace(decision, (example,), check_trace=False)
    return traced


def scriptable(module: CascadeModule, native_shapes: Sequence[Sequence[int]]) -> CascadeModule:
    """A copy whose decisions are traced, so that torch.jit.script accepts the whole cascade."""
    clone = copy.deepcopy(module)
    clone.decisions = nn.ModuleList(
        _trace_decision(d, shape) for d, shape in zip(clone.decisions, native_shapes, strict=True)
    )
    return clone


def native_shapes(module: CascadeModule, example: torch.Tensor) -> list[tuple[int, ...]]:
    """Native logits shape of every exit for ``example`` (one image), early exits then last."""
    shapes = []
    feature, skip = example, example
    with torch.no_grad():
        for stage, head in zip(module.early_stages, module.early_heads, strict=True):
            feature, skip = stage(feature, skip)
            shapes.append(tuple(head(feature).shape))
        feature, skip = module.last_stage(feature, skip)
        shapes.append(tuple(module.last_head(feature, skip).shape))
    return shapes


def script_cascade(module: CascadeModule, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript of the cascade with its data-dependent exits kept as real control flow.

    Raises:
        TrainingError: when a component cannot be compiled.
    """
    shapes = native_shapes(module, example)
    try:
        return torch.jit.script(scriptable(module, shapes[:-1]))
    except (RuntimeError, torch.jit.frontend.NotSupportedError) as exc:  # type: ignore[attr-defined]
        first = str(exc).strip().splitlines()[0]
        raise TrainingError(f"TorchScript cannot compile this configuration ({first})") from exc


def export_cascade(
    module: CascadeModule,
    *,
    fmt: str,
    out: str | Path,
    metadata: dict[str, Any],
    example: torch.Tensor,
) -> list[Path]:
    """Write a configuration in one format; nothing is left behind when it fails.

    Args:
        module: from build_cascade_module, in eval mode.
        fmt: one of FORMATS.
        out: file (torchscript, state-dict) or folder (onnx) to create.
        metadata: the configuration and its provenance (run, candidate, model sha256, exits,
            thresholds, input size); written as JSON next to the weights.
        example: one input image [1, 3, H, W] (shapes for tracing and ONNX).

    Returns:
        The files written.

    Raises:
        TrainingError: an unknown format, an existing output, or a failed export.
    """
    if fmt not in FORMATS:
        raise TrainingError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists():
        raise TrainingError(f"{out} already exists; choose another --out or remove it")
    if not out.parent.exists():
        raise TrainingError(f"folder {out.parent} does not exist; create it first")
    meta = {**metadata, "format": fmt, "exit_ids": list(module.exit_ids),
            "th_img": module.th_img, "num_classes": module.num_classes,
            "th_pix": [float(d.th_pix) for d in module.decisions],  # type: ignore[union-attr,arg-type]
            "policy": module.policy.as_settings(),
            "input_size": [int(example.shape[2]), int(example.shape[3])]}
    # Build in a temporary folder beside the target, then move: no half-written export.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / out.name
        if fmt == "torchscript":
            torch.jit.save(script_cascade(module, example), str(staged))
            extra = [_write_json(staged, meta)]
        elif fmt == "state-dict":
            torch.save(module.state_dict(), staged)
            extra = [_write_json(staged, meta)]
        else:
            from training._onnx_export import export_onnx

            staged.mkdir()
            export_onnx(module, staged, meta=meta, example=example)
            extra = []
        written = [staged, *extra]
        final = [out.parent / p.name for p in written]
        for dst in final:
            if dst.exists():
                raise TrainingError(f"{dst} already exists; choose another --out or remove it")
        for src, dst in zip(written, final, strict=True):
            shutil.move(str(src), str(dst))
    return final


def _write_json(path: Path, meta: dict[str, Any]) -> Path:
    side = path.with_name(path.name + ".json")
    side.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return side


def load_state_dict_export(path: str | Path, network: MessNetwork) -> CascadeModule:
    """Rebuild a ``state-dict`` export on top of a network of the same architecture.

    The sidecar JSON names the exits and thresholds; the weights come from the export (so a
    network built with random weights is enough). Needs this project installed.

    Raises:
        TrainingError: a missing sidecar or weights that do not fit.
    """
    path = Path(path)
    side = path.with_name(path.name + ".json")
    if not side.exists():
        raise TrainingError(f"{side} is missing; a state-dict export is the weights plus it")
    meta = json.loads(side.read_text())
    module = build_cascade_module(
        copy.deepcopy(network), exits=meta["exit_ids"], th_pix=meta["th_pix"],
        th_img=meta["th_img"], input_size=tuple(meta["input_size"]),
        policy=ExitPolicy.from_settings(meta.get("policy", meta)),
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainingError(f"{path} does not fit this network ({str(exc).splitlines()[0]})") from exc
    return module.eval()
