"""Loading a state-dict file into a MESS network, with errors that say which part does not fit.

Accepted: a MessNetwork state dict (strict), a checkpoint dict holding one under "state_dict"
(with "arch"), or the state dict of the original model (torchvision segmentation model or
ImageNet backbone), whose keys are mapped onto the segments; heads it lacks stay random.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from training.errors import TrainingError

if TYPE_CHECKING:
    from training.network import MessNetwork

NETWORK_PREFIXES = ("segments.", "heads.", "final_head.")


def read_state_dict(path: Path) -> tuple[dict[str, Tensor], str | None]:
    """(state dict, architecture recorded in the file or None); TrainingError if unreadable."""
    if not path.is_file():
        raise TrainingError(f"weights file {str(path)!r} does not exist: pass the path of a state-dict (.pt) file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise TrainingError(f"{str(path)!r} is not a readable torch state-dict file ({type(exc).__name__})") from exc
    arch = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TrainingError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj), arch


def load_weights(
    network: MessNetwork,
    path: Path,
    *,
    rename: Callable[[str], str] | None = None,
    ignored: tuple[str, ...] = (),
) -> None:
    """Load `path` into `network` in place; TrainingError naming the first key that does not fit."""
    state, arch = read_state_dict(path)
    if arch is not None and arch != network.arch:
        raise TrainingError(f"{str(path)!r} holds weights for {arch}, not {network.arch}: pass --arch {arch}")
    ours = network.state_dict()
    if any(k.startswith(NETWORK_PREFIXES) for k in state):
        target, strict = state, True
    else:
        target, strict = _translate(network, state, rename, ignored, path), False
    for key, value in target.items():
        if key not in ours:
            raise TrainingError(
                f"{str(path)!r} does not fit {network.arch}: unexpected key {key!r} "
                "(weights of another architecture, or other positions/head space?)"
            )
        if ours[key].shape != value.shape:
            raise TrainingError(
                f"{str(path)!r} does not fit {network.arch} with {network.num_classes} classes: {key!r} has shape "
                f"{tuple(value.shape)}, expected {tuple(ours[key].shape)}"
            )
    required = [k for k in ours if strict or k.startswith("segments.")]
    missing = [k for k in required if k not in target]
    if missing:
        raise TrainingError(
            f"{str(path)!r} does not fit {network.arch}: {len(missing)} weights missing, first {missing[0]!r} "
            "(weights of another architecture, or other positions/head space?)"
        )
    network.load_state_dict(target, strict=strict)


def _translate(
    network: MessNetwork,
    state: Mapping[str, Tensor],
    rename: Callable[[str], str] | None,
    ignored: tuple[str, ...],
    path: Path,
) -> dict[str, Tensor]:
    """Original model keys -> network keys through `network.key_map` (longest prefix wins)."""
    prefixes = sorted(network.key_map, key=len, reverse=True)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = rename(key) if rename else key
        if name.startswith(ignored) or key.startswith(ignored):
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            raise TrainingError(
                f"{str(path)!r} does not fit {network.arch}: unexpected key {key!r} (weights of another architecture?)"
            )
        out[network.key_map[prefix] + name[len(prefix) :]] = value
    return out
