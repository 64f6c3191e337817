"""`dse profile` on a checkpoint whose arch was edited to run a module from the current folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dse.cli import main

EVIL = "import pathlib\npathlib.Path('pwned').touch()\n\ndef factory(num_classes):\n    raise SystemExit(3)\n"


def test_profile_refuses_an_edited_fx_arch_and_runs_nothing(tmp_path: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from training.adapters import build_network
    from training.checkpoint import read_checkpoint, save_checkpoint

    net = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"], positions=["layer1.1"])
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, meta={"input_size": [32, 32], "dataset": "synthetic"})
    payload = read_checkpoint(path)
    payload["arch"] = "fx:sec_evilmod:factory"
    torch.save(payload, path)
    (tmp_path / "sec_evilmod.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m dse` run from that folder would
    assert main(["profile", "--checkpoint", "model.pt", "--device", "x", "--db", "m.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--arch-trust 'fx:sec_evilmod:factory'" in err, err
    assert not (tmp_path / "pwned").exists() and "sec_evilmod" not in sys.modules
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("argv", [["inspect", "fx:.rel:x"], ["train", "--arch", "fx:.rel:x", "--out", "o.pt"]])
def test_a_relative_fx_module_is_one_line(argv: list[str], tmp_path: Path, capsys,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absolute module name" in err, err
