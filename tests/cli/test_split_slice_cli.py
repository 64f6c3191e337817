"""Selections from the CLI: profile on parts of a split, a bad selection is one error line."""

from __future__ import annotations

import pytest
import torch

from dse.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from training.adapters import build_network
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    net = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                        positions=["layer2.1"])
    save_checkpoint(path, net, meta={"input_size": [32, 32], "dataset": "synthetic"})
    return path


def test_profile_two_parts_of_a_split_gives_two_calibration_sets(checkpoint, tmp_path) -> None:
    from db import repository
    from db.session import open_store, session_scope
    from training.data import build_dataset

    db = str(tmp_path / "m.db")
    for part in ("val[0:3]", "val[3:6]", "val[::2]", "val[1::2]"):
        assert main(["profile", "--checkpoint", str(checkpoint), "--device", "cpu", "--db", db,
                     "--split", part, "--no-latency", "--json"]) == 0
    whole = build_dataset("synthetic", split="val", input_size=(32, 32), size=6)
    engine = open_store(db)
    with session_scope(engine, readonly=True) as s:
        first, second, even, odd = (repository.get_calibration_set(s, i) for i in (1, 2, 3, 4))
    engine.dispose()
    strided = build_dataset("synthetic", split="val", input_size=(32, 32), size=64)
    assert (even.split, odd.split) == ("val[::2]", "val[1::2]")
    assert list(even.sample_ids) == strided.sample_ids[::2]
    assert list(odd.sample_ids) == strided.sample_ids[1::2]
    assert len({c.content_hash for c in (first, second, even, odd)}) == 4
    assert (first.split, second.split) == ("val[0:3]", "val[3:6]")
    assert list(first.sample_ids) == whole.sample_ids[:3]
    assert list(second.sample_ids) == whole.sample_ids[3:6]
    assert first.content_hash != second.content_hash


@pytest.mark.parametrize(("split", "message"), [
    ("val[5:2]", "selects no images"),
    ("val[nothing*]", "selects no images"),
    ("val[0:4]+val[::3]", "twice"),
    ("val[random=0]", "selects no images"),
])
def test_profile_refuses_a_bad_selection_in_one_line(checkpoint, tmp_path, capsys, split,
                                                     message) -> None:
    db = tmp_path / "m.db"
    code = main(["profile", "--checkpoint", str(checkpoint), "--device", "cpu", "--db", str(db),
                 "--split", split, "--no-latency"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1 and not db.exists()
