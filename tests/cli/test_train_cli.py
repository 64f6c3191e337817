"""`dse train` end to end on tiny inputs, and its one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dse.cli import main

TINY = [
    "--arch", "fcn_resnet18", "--input-size", "32x32", "--positions", "layer1.1,layer2.1",
    "--head-space", "nocrm-b0-fcn,crm16-b1-fcn", "--train-size", "8", "--val-size", "4",
    "--threads", "1",
]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.slow
def test_both_stages_then_resume_and_stage_two_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mess.pt"
    code, stdout, _ = _run(
        capsys,
        *TINY,
        "--data",
        "synthetic",
        "--stage",
        "1",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    done = events[-1]
    assert done["event"] == "done" and set(done["val_miou"]) == {"stage1"}
    assert set(done["val_miou"]["stage1"]) == {
        "layer1.1/crm16-b1-fcn",
        "layer2.1/crm16-b1-fcn",
        "final",
    }

    # a finished stage-1 checkpoint is continued in place by stage 2
    code, stdout, _ = _run(
        capsys, *TINY, "--stage", "2", "--epochs", "1", "--out", str(out), "--json"
    )
    assert code == 0
    done = json.loads(stdout.splitlines()[-1])
    assert len(done["val_miou"]["stage2"]) == 5  # 4 candidate exits + final

    code, stdout, _ = _run(
        capsys, *TINY, "--stage", "2", "--epochs", "1", "--out", str(out), "--resume"
    )
    assert code == 0 and "nothing to do" in stdout


def test_stage_two_may_train_fewer_epochs_than_stage_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mess.pt"
    args = ["--epochs", "2", "--stage2-epochs", "1", "--out", str(out), "--json"]
    code, stdout, _ = _run(capsys, *TINY, "--head-space", "nocrm-b0-fcn", *args)
    assert code == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    epochs = [(e["mode"], e["epoch"]) for e in events if e["event"] == "epoch"]
    assert epochs == [("stage1", 1), ("stage1", 2), ("stage2", 1)]


def test_bad_inputs_give_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.pt"
    code, _, err = _run(capsys, *TINY, "--data", "camvid", "--out", str(out))
    assert code == 2 and "--data-root" in _one_error_line(err)
    code, _, err = _run(
        capsys, *TINY, "--data", "camvid", "--data-root", str(tmp_path / "none"), "--out", str(out)
    )
    assert code == 2 and "does not exist" in _one_error_line(err)
    (tmp_path / "flat").mkdir()
    code, _, err = _run(
        capsys, *TINY, "--data", "camvid", "--data-root", str(tmp_path / "flat"), "--out", str(out)
    )
    assert code == 2 and "train" in _one_error_line(err)
    code, _, err = _run(capsys, *TINY, "--input-size", "big", "--out", str(out))
    assert code == 2 and "HxW" in _one_error_line(err)
    code, _, err = _run(capsys, *TINY, "--stage", "3", "--out", str(out))
    assert code == 2 and "stage" in _one_error_line(err)
    code, _, err = _run(capsys, *TINY, "--resume", "--out", str(out))
    assert code == 2 and "nothing to resume" in _one_error_line(err)
    code, _, err = _run(capsys, *TINY, "--stage2-epochs", "0", "--out", str(out))
    assert code == 2 and "--stage2-epochs" in _one_error_line(err)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat"]


def test_labels_outside_the_class_range_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "camvid"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(3):
            Image.new("RGB", (16, 12)).save(root / split / f"{split}{i}.png")
            label = np.full((12, 16), 3, dtype=np.uint8)
            if split == "val" and i == 2:
                label[5, 5] = 77
            Image.fromarray(label, mode="L").save(root / f"{split}annot" / f"{split}{i}.png")
    out = tmp_path / "x.pt"
    code, _, err = _run(
        capsys, *TINY, "--data", "camvid", "--data-root", str(root), "--out", str(out)
    )
    line = _one_error_line(err)
    assert code == 2 and "val2.png has class 77" in line
    assert not out.exists()


def test_checkpoint_of_another_architecture_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.adapters import build_network
    from training.checkpoint import save_checkpoint

    other = build_network(
        "fcn_resnet34", num_classes=6, head_space=["nocrm-b0-fcn"], positions=["layer1.0"]
    )
    init = tmp_path / "other.pt"
    save_checkpoint(init, other, meta={"input_size": [32, 32], "dataset": "synthetic"})
    out = tmp_path / "x.pt"
    code, _, err = _run(capsys, *TINY, "--stage", "2", "--init", str(init), "--out", str(out))
    assert code == 2 and "'fcn_resnet34' network, not 'fcn_resnet18'" in _one_error_line(err)
    assert not out.exists()
    code, _, err = _run(capsys, *TINY, "--stage", "2", "--init", str(init), "--out", str(init))
    assert code == 2 and "already exists" in _one_error_line(err)


def test_compute_names_the_torch_device_and_device_is_deprecated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.pt")
    code, _, err = _run(capsys, *TINY, "--out", out, "--compute", "tpu")
    assert code == 2 and "--compute must be cpu or cuda" in _one_error_line(err)
    # the old name still parses, says it is deprecated, and is checked like --compute
    code, _, err = _run(capsys, *TINY, "--out", out, "--device", "tpu")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 2
    assert lines[0].startswith("warning: `dse train --device` is deprecated")
    assert lines[1] == "error: --compute must be cpu or cuda, got 'tpu'"
    code, _, err = _run(capsys, *TINY, "--out", out, "--device", "cpu", "--compute", "cuda")
    assert code == 2 and "disagree" in err.splitlines()[-1]
    assert not Path(out).exists()


def test_a_time_budget_says_up_front_what_it_buys_and_warns_below_one_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mess.pt"
    budget = ["--time-budget", "0.0001"]  # 6 ms: the measuring alone takes longer
    code, stdout, _ = _run(capsys, *TINY, *budget, "--out", str(out), "--json")
    assert code == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    notes = [e["text"] for e in events if e["event"] == "note"]
    assert notes[0].startswith("time budget 0.0 min, measured on this machine (4 exits)")
    assert any(n.strip().startswith("stage1:") and "epochs" in n for n in notes)
    assert any(n.startswith("warning: stage1 gets less than one epoch") for n in notes)
    assert any(n.startswith("warning: stage2 gets less than one epoch") for n in notes)
    first_epoch = next(i for i, e in enumerate(events) if e["event"] == "epoch")
    assert all(e["event"] == "note" for e in events[:first_epoch])  # said before training


def test_camvid_without_tuning_flags_trains_the_documented_recipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import training.runner

    seen = []

    def capture(request, progress=None):  # type: ignore[no-untyped-def]
        seen.append(request)
        return training.runner.TrainOutcome(out=request.out, history={})

    monkeypatch.setattr(training.runner, "run_training", capture)
    base = ["--arch", "fcn_efficientnet_lite0", "--data", "camvid", "--data-root", str(tmp_path)]
    assert _run(capsys, *base, "--out", str(tmp_path / "a.pt"))[0] == 0
    request = seen[-1]
    assert request.input_size == (180, 240) and request.pretrained_backbone
    assert (request.base.optimizer, request.base.lr, request.base.class_weighting) == (
        "adamw", 1e-3, "enet",
    )  # fmt: skip
    assert (request.base.epochs, request.stage2_epochs) == (18, 8)
    assert request.base.alpha == 0.0  # IC-only won on the converged teacher (README)
    assert len(request.head_space) * len(request.positions) == 15
    flags = ["--lr", "0.01", "--input-size", "90x120", "--scratch", "--epochs", "3"]
    assert _run(capsys, *base, *flags, "--out", str(tmp_path / "b.pt"))[0] == 0
    request = seen[-1]
    assert request.base.lr == 0.01 and request.input_size == (90, 120)
    assert not request.pretrained_backbone and request.base.epochs == 3
    assert request.stage2_epochs is None  # --epochs given: stage 2 follows it unless told
    assert _run(capsys, *TINY, "--out", str(tmp_path / "c.pt"))[0] == 0
    assert (seen[-1].base.optimizer, seen[-1].base.epochs) == ("sgd", 10)  # synthetic: generic
    assert seen[-1].base.alpha == 1.0


def test_epoch_lines_say_how_many_epochs_the_stage_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mess.pt"
    code, _, err = _run(capsys, *TINY, "--head-space", "nocrm-b0-fcn", "--stage", "1",
                        "--epochs", "2", "--out", str(out))
    assert code == 0, err
    lines = [line for line in err.splitlines() if " epoch " in line]
    assert [line.split(",")[0] for line in lines] == ["stage1 epoch 1/2", "stage1 epoch 2/2"]
