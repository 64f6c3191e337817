"""CLI conventions every command shares: --version, help, choices, progress, no silent steps."""

from __future__ import annotations

import re

import pytest
import typer

from dse.cli import app, main


def _commands():
    """(path, click command) of every command, group commands included."""
    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])
    yield from walk(typer.main.get_command(app), [])


def test_version_and_bare_dse(capsys) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mess-dse {version('mess-dse')}"
    assert main([]) == 0  # the help, not a usage error
    out = capsys.readouterr().out
    assert "Usage:" in out and "pareto" in out and "runs" in out
    assert main(["db"]) == 0
    assert "merge" in capsys.readouterr().out


def test_every_option_has_help_and_flags_show_no_value(capsys) -> None:
    missing = [f"{' '.join(path)} {p.opts[0]}" for path, command in _commands()
               for p in command.params
               if p.param_type_name == "option" and not p.help]
    assert missing == []
    for path, command in _commands():
        if getattr(command, "commands", None):
            continue
        assert main([*path, "--help"]) == 0
        out = capsys.readouterr().out
        assert "<bool>" not in out, path


@pytest.mark.parametrize(("option", "choices"), [
    ("--method", ["exhaustive", "optuna"]),
    ("--mode", ["cascade", "budgeted", "anytime"]),
    ("--target", ["accuracy", "speed"]),
])
def test_pareto_choices_are_listed_and_enforced(capsys, monkeypatch, option, choices) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["pareto", "--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(re.escape(option) + r"\s+<" + re.escape("|".join(choices)) + ">", out), out
    assert main(["pareto", "--device", "x", option, "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and all(c in err for c in choices)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1  # one line
    assert "see `dse pareto --help`" in err


def test_export_format_is_a_choice(capsys) -> None:
    assert main(["export", "--run", "1", "--candidate", "0", "--format", "tflite"]) == 2
    err = capsys.readouterr().err
    assert "tflite" in err and "torchscript" in err and "state-dict" in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_long_steps_report_in_a_pipe_and_short_ones_stay_quiet(capsys, monkeypatch) -> None:
    from dse.cli import _app

    clock = iter([0.0, 3.0, 11.0, 12.0, 25.0])
    monkeypatch.setattr(_app.time, "monotonic", lambda: next(clock))
    with _app.step_progress("verifying on 40 images") as report:  # capsys: not a terminal
        for done in (1, 2, 3, 4):  # at 3 s, 11 s, 12 s and 25 s
            report(done, 40)
    assert capsys.readouterr().err.splitlines() == ["verifying on 40 images: 2/40",
                                                    "verifying on 40 images: 4/40"]
    monkeypatch.setattr(_app.time, "monotonic", lambda: 100.0)
    with _app.step_progress("searching") as report:  # a fast step: nothing at all
        for done in range(100):
            report(done, 100)
    with _app.step_progress("searching", disable=True) as report:
        report(1, 1)
    assert capsys.readouterr().err == ""
