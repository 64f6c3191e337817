"""A checkpoint is data: loading it never imports or calls code the user did not name."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import torch

from training.adapters import build_network
from training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, weights_sha256
from training.errors import TrainingError

META = {"input_size": [32, 32], "dataset": "synthetic"}

# A traced model in a module that leaves a marker file whenever it is imported.
MODULE = '''
import pathlib
import torch.nn.functional as F
from torch import nn

pathlib.Path(__file__).with_suffix(".imported").touch()


class Tiny(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        self.body = nn.Conv2d(4, 4, 3, 1, 1)
        self.classifier = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        return {"out": self.classifier(F.relu(self.body(F.relu(self.stem(x)))))}


def factory(num_classes):
    return Tiny(num_classes)
'''


@pytest.fixture
def code_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """(module name, marker file) of a fresh importable module beside the checkpoints."""
    name = f"sec_trust_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path / f"{name}.imported"
    sys.modules.pop(name, None)


def _edited(tmp_path: Path, arch: str) -> Path:
    """A genuine small checkpoint whose `arch` string was edited afterwards."""
    torch.manual_seed(0)
    net = build_network("fcn_resnet18", num_classes=3, head_space=["nocrm-b0-fcn"], positions=["layer1.1"])
    path = tmp_path / "edited.pt"
    save_checkpoint(path, net, meta=META)
    payload = read_checkpoint(path)
    payload["arch"] = arch
    torch.save(payload, path)
    return path


def test_an_edited_arch_never_imports_its_module(tmp_path: Path, code_module) -> None:
    name, marker = code_module
    path = _edited(tmp_path, f"fx:{name}:factory")
    with pytest.raises(TrainingError, match="--arch-trust"):
        load_checkpoint(path)
    with pytest.raises(TrainingError, match="--arch-trust names 'fx:other:factory'"):
        load_checkpoint(path, trust_arch="fx:other:factory")
    assert not marker.exists() and name not in sys.modules


def test_unknown_and_malformed_descriptions_are_refused(tmp_path: Path) -> None:
    path = _edited(tmp_path, "this")
    with pytest.raises(TrainingError, match="unknown architecture 'this'"):
        load_checkpoint(path)
    payload = read_checkpoint(path)
    payload.update(arch="fcn_resnet18", num_classes=10**9, positions="layer1.1")
    torch.save(payload, path)
    with pytest.raises(TrainingError, match=r"malformed fields \(positions, num_classes\)"):
        load_checkpoint(path)
    payload.update(arch=["fcn_resnet18"])
    torch.save(payload, path)
    with pytest.raises(TrainingError, match="has no architecture name"):
        load_checkpoint(path)


def test_a_traced_checkpoint_loads_only_when_the_user_names_it(tmp_path: Path, code_module) -> None:
    name, marker = code_module
    arch = f"fx:{name}:factory"
    torch.manual_seed(0)
    net = build_network(arch, num_classes=3, head_space=["nocrm-b0-fcn"])
    path = tmp_path / "traced.pt"
    save_checkpoint(path, net, meta=META)
    sys.modules.pop(name)
    marker.unlink()
    with pytest.raises(TrainingError, match="would import and run Python code"):
        load_checkpoint(path)
    assert not marker.exists()
    loaded, meta = load_checkpoint(path, trust_arch=arch)
    assert marker.exists() and meta["arch"] == arch
    assert weights_sha256(loaded) == weights_sha256(net)
    again, _ = load_checkpoint(path, expect_arch=arch)  # `dse train --arch fx:... --init` names it too
    assert weights_sha256(again) == weights_sha256(net)


def test_a_relative_module_name_is_one_error() -> None:
    with pytest.raises(TrainingError, match="absolute module name"):
        build_network("fx:.rel:x", num_classes=2)


def test_checkpoints_get_the_usual_file_mode(tmp_path: Path) -> None:
    """mkstemp creates 0600; a checkpoint is shared like any other file (umask applies)."""
    import os

    net = build_network("fcn_resnet18", num_classes=3, head_space=["nocrm-b0-fcn"], positions=["layer1.1"])
    save_checkpoint(tmp_path / "c.pt", net, meta=META)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o666 & ~mask
