"""Rich markup in names: refused at the door, printed literally when a store already has it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import update
from test_pareto_cli import _fill

from db import open_store, session_scope
from db.models import Device, Model
from dse.cli import main
from dse.synthetic import random_accuracy, random_costs

MARKUP = ["[/]", "[bold red]RED[/bold red]", "a\x1b[31mb", "", "12345", "x" * 101]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from training.adapters import build_network
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    net = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"], positions=["layer1.1"])
    save_checkpoint(path, net, meta={"input_size": [32, 32], "dataset": "synthetic"})
    return path


@pytest.mark.parametrize("option", ["--device", "--name"])
@pytest.mark.parametrize("value", MARKUP)
def test_profile_refuses_markup_names_before_writing(option, value, checkpoint, tmp_path, capsys) -> None:
    db = tmp_path / "m.db"
    args = {"--device": "cpu", "--name": "tiny", option: value}
    argv = ["profile", "--checkpoint", str(checkpoint), "--db", str(db), "--no-accuracy",
            *[x for kv in args.items() for x in kv]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {option}") and len(err.splitlines()) == 1, err
    assert not db.exists()


def test_a_file_name_that_is_no_name_asks_for_name(checkpoint, tmp_path, capsys) -> None:
    odd = tmp_path / "[b]x.pt"
    odd.write_bytes(checkpoint.read_bytes())
    assert main(["profile", "--checkpoint", str(odd), "--device", "cpu", "--no-accuracy",
                 "--db", str(tmp_path / "m.db")]) == 2
    assert "--name (default: the checkpoint's file name)" in capsys.readouterr().err


def test_study_names_are_checked(tmp_path, capsys) -> None:
    for study in ("", "[/]", "a\nb"):
        assert main(["pareto", "--device", "box", "--db", str(tmp_path / "m.db"),
                     "--method", "optuna", "--study", study]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --study must be") and len(err.splitlines()) == 1, err


def test_markup_already_in_a_store_prints_literally(tmp_path, capsys) -> None:
    """Names an older mess-dse stored (or a merge brought in) never crash or style the output."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    rng = np.random.default_rng(0)
    data = random_accuracy(rng, num_positions=2, heads=1, num_samples=6, num_classes=3)
    _fill(url, data, random_costs(rng, data))
    engine = open_store(url)
    with session_scope(engine) as s:
        s.execute(update(Device).values(name="[/]"))
        s.execute(update(Model).values(name="[bold red]RED[/bold red]"))
    engine.dispose()
    for argv, shown in ((["devices"], "[/]"), (["models"], "[bold"), (["db", "info"], "[bold red]RED"),
                        (["pareto", "--device", "[/]", "--max-exits", "1"], "RED[/bold red] on [/]")):
        assert main([*argv, "--db", url]) == 0, argv
        assert shown in capsys.readouterr().out, argv


def test_the_cli_consoles_never_parse_markup() -> None:
    """Markup is off on both consoles, so no command may rely on it to style text either."""
    import re
    from pathlib import Path

    from dse.cli._app import console, err_console

    assert not console._markup and not err_console._markup
    tag = re.compile(r"\[/?(bold|dim|italic|underline|red|green|yellow|blue|magenta|cyan)\b[^\]]*\]|\[/\]")
    sources = Path(__file__).resolve().parents[2] / "dse" / "cli"
    used = {p.name: tag.findall(p.read_text()) for p in sources.glob("*.py")}
    assert not {k: v for k, v in used.items() if v}, "style with rich.text.Text, not markup"
