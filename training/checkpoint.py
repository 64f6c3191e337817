"""Checkpoints that describe their network and never unpickle arbitrary objects.

A checkpoint is one ``torch.save`` dict of tensors and plain data only: the architecture
description (arch, classes, positions, head space, exit ids), the input size and dataset it was
trained for, the weights, and optionally the training state of an unfinished run (optimizer state,
iteration counters, history) so that ``--resume`` continues it. It is read with
``torch.load(weights_only=True)``: a file carrying any other object is refused. Writes go to a
temporary file in the same folder and are moved into place with ``os.replace``, so an interrupted
save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.errors import TrainingError

if TYPE_CHECKING:
    from training.network import MessNetwork

FORMAT = "mess-dse-checkpoint"
VERSION = 1
_REQUIRED_META = ("input_size", "dataset")


def weights_sha256(network: nn.Module) -> str:
    """sha256 over the state-dict (names, dtypes, shapes, bytes) in key order.

    Independent of the file (zip metadata, training state), so the same weights saved twice or
    loaded from another checkpoint give the same id in the store.
    """
    digest = hashlib.sha256()
    for key, tensor in network.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def describe_network(network: MessNetwork) -> dict[str, Any]:
    """The architecture description stored in checkpoints and in the store's model row."""
    return {
        "arch": network.arch,
        "num_classes": int(network.num_classes),
        "positions": [p.name for p in network.positions],
        "head_space": [h.id for h in network.head_space],
        "exits": [e.id for e in network.exits],
    }


def atomic_torch_save(obj: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """torch.save to a temporary file beside ``path``, then os.replace: all or nothing."""
    target = Path(path)
    if target.parent and not target.parent.exists():
        raise TrainingError(
            f"folder {target.parent} does not exist; create it or choose another --out"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        mask = os.umask(0)  # mkstemp makes 0o600; a checkpoint is as readable as any new file
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | os.PathLike[str],
    network: MessNetwork,
    *,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically.

    Args:
        path: destination file.
        network: the MESS network (weights are copied to CPU).
        meta: at least ``input_size`` [H, W] and ``dataset``; any other plain data (history,
            class names) is kept and returned by `load_checkpoint`.
        train_state: optimizer state and counters of an unfinished run (for --resume).
    """
    missing = [key for key in _REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"meta must contain {', '.join(missing)}")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        **describe_network(network),
        "meta": dict(meta),
        "input_size": [int(v) for v in meta["input_size"]],
        "dataset": str(meta["dataset"]),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    if train_state is not None:
        payload["train_state"] = train_state
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict, loaded with weights_only=True; TrainingError on anything else."""
    source = Path(path)
    if not source.is_file():
        raise TrainingError(f"checkpoint {source} does not exist")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():
            raise TrainingError(f"checkpoint {source} is not a readable torch file") from exc
        raise TrainingError(
            f"checkpoint {source} holds objects other than tensors and plain data; refusing to "
            "unpickle it (only checkpoints written by `dse train` load)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise TrainingError(f"checkpoint {source} is not a readable torch file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TrainingError(f"{source} is not a mess-dse checkpoint (written by `dse train`)")
    if payload.get("version") != VERSION:
        raise TrainingError(
            f"checkpoint {source} has format version {payload.get('version')}; this dse reads "
            f"version {VERSION}"
        )
    return payload


def trusted_arch(payload: dict[str, Any], path: str | os.PathLike[str], *,
                 trust: tuple[str | None, ...] = ()) -> str:
    """The checkpoint's architecture, if building it runs no code the user did not name.

    A checkpoint is data: loading it must never import or call anything chosen by whoever wrote
    the file. Registered architectures are built from the registry; a traced ``fx:module:factory``
    architecture imports and calls that module, so it is built only when the user named exactly
    that string (``--arch`` or ``--arch-trust``), passed here in ``trust``.
    """
    from training._fx import FX_PREFIX
    from training.adapters import list_architectures

    arch = payload.get("arch")
    if not isinstance(arch, str) or not arch:
        raise TrainingError(f"checkpoint {path} has no architecture name; it was not written by `dse train`")
    if arch.startswith(FX_PREFIX):
        if arch in trust:
            return arch
        raise TrainingError(
            f"checkpoint {path} names the traced architecture {arch!r}, which would import and run "
            f"Python code; a checkpoint never does that on its own: if you trust that code, pass "
            f"--arch-trust {arch!r}"
        )
    if arch not in list_architectures():
        raise TrainingError(
            f"checkpoint {path} names the unknown architecture {arch!r}; it was written by another "
            "mess-dse or edited (`dse inspect` lists the architectures this one builds)"
        )
    return arch


_MAX_CLASSES = 4096  # far above any segmentation dataset; bounds what an edited file may allocate


def _check_fields(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """The description fields have the types `save_checkpoint` writes, before anything is built."""

    def strings(key: str) -> bool:
        value = payload.get(key)
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    num_classes = payload.get("num_classes")
    problems = [key for key in ("positions", "head_space", "exits") if not strings(key)]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 1 <= num_classes <= _MAX_CLASSES:
        problems.append("num_classes")
    size = payload.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        problems.append("input_size")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problems.append("state_dict")
    if not isinstance(payload.get("dataset"), str):
        problems.append("dataset")
    if problems:
        raise TrainingError(
            f"checkpoint {path} has missing or malformed fields ({', '.join(problems)}); it was not "
            "written by `dse train` or was edited"
        )


def load_checkpoint(
    path: str | os.PathLike[str], *, expect_arch: str | None = None, trust_arch: str | None = None
) -> tuple[MessNetwork, dict[str, Any]]:
    """Rebuild the network a checkpoint describes and load its weights.

    Registered architectures load as they are; a traced ``fx:`` architecture only when it equals
    ``expect_arch`` or ``trust_arch`` (names the user gave), since building it runs its code.

    Returns:
        (network in eval mode, meta) where meta holds the stored meta plus ``arch``,
        ``num_classes``, ``positions``, ``head_space``, ``exits``, ``input_size``, ``dataset``
        and ``train_state`` (None when the run finished).

    Raises:
        TrainingError: missing file, foreign pickle, another architecture than ``expect_arch``,
            an untrusted traced architecture, weights that do not fit the described network.
    """
    from training.adapters import build_network

    payload = read_checkpoint(path)
    if expect_arch is not None and payload.get("arch") != expect_arch:
        raise TrainingError(
            f"checkpoint {path} is a {payload.get('arch')!r} network, not {expect_arch!r}; "
            "pass the matching --arch or another checkpoint"
        )
    if trust_arch is not None and payload.get("arch") != trust_arch:
        raise TrainingError(
            f"checkpoint {path} is a {payload.get('arch')!r} network, but --arch-trust names "
            f"{trust_arch!r}; trust only the architecture the checkpoint names"
        )
    arch = trusted_arch(payload, path, trust=(expect_arch, trust_arch))
    _check_fields(payload, path)
    network = build_network(
        arch,
        num_classes=int(payload["num_classes"]),
        head_space=list(payload["head_space"]),
        positions=list(payload["positions"]),
    )
    if [e.id for e in network.exits] != list(payload["exits"]):
        raise TrainingError(
            f"checkpoint {path} lists exits that its positions and head space do not rebuild"
        )
    try:
        network.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise TrainingError(
            f"checkpoint {path} does not fit the {arch!r} network it describes ({first})"
        ) from exc
    network.eval()
    meta = dict(payload.get("meta", {}))
    for key in ("arch", "num_classes", "positions", "head_space", "exits", "input_size", "dataset"):
        meta[key] = payload[key]
    meta["train_state"] = payload.get("train_state")
    return network, meta


# Modes that train every candidate exit head (stage 1 trains one reference head per position).
HEAD_TRAINING_MODES = ("stage2", "ic-only", "end-to-end")


def training_warnings(meta: dict[str, Any], path: str | os.PathLike[str]) -> list[str]:
    """What a profile of this checkpoint rests on that the user may not know: exit heads that
    were never trained (their accuracy would be that of random heads) or an unfinished run.

    Args:
        meta: the meta `load_checkpoint` returns (``completed_modes``, ``train_state``).
        path: the checkpoint, named in the command that fixes it.
    """
    state = meta.get("train_state") or {}
    running = str(state.get("mode", "")) if state and not state.get("finished") else ""
    done = [str(m) for m in meta.get("completed_modes", [])]
    out = []
    if running:
        out.append(f"training of {path} did not finish: {running} stopped after epoch "
                   f"{state.get('epoch')} of {state.get('planned_epochs')}; "
                   f"`dse train ... --out {path} --resume` continues it")
    if not set(done) & set(HEAD_TRAINING_MODES) and running not in HEAD_TRAINING_MODES:
        ran = ", ".join(done) if done else "none"
        out.append(f"the exit heads of {path} were never trained (stage 2 never ran; completed "
                   f"stages: {ran}), so their accuracy is that of untrained heads (stage 1 "
                   f"trains only one reference head per position); run `dse train --stage 2 "
                   f"--out {path}` first")
    return out
