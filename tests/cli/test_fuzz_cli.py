"""Fuzz the CLI's value options: every bad value is one error line, a non-zero exit, and the
store (and the folder around it) unchanged.

Values: empty, huge, negative, rich markup with control characters, and path tricks (kept
inside the test folder: a run as root once replaced /etc/passwd and /dev/null), on every
value option of the cheap commands (no network runs: what `dse profile`, `export` and `verify`
check before any work). One test per command runs its cases in a loop and lists every case that
failed, so one run shows them all.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pareto_cli import _fill

from dse.cli import main
from dse.synthetic import random_accuracy, random_costs

BAD = {
    "empty": "",
    "huge": "9" * 40,
    "negative": "-1",
    "markup": "[/][bold red]x\x1b[31m\n\r",
    # Path tricks stay inside the test folder: a folder, a missing folder, the store itself.
    "folder": ".",
    "missing": "no/such/dir/x",
    "store": "mess.db",
}

PARETO = ["pareto", "--device", "box", "--max-exits", "1"]
CASES: dict[str, tuple[list[str], list[str]]] = {
    "pareto": (PARETO, [
        "--device", "--model", "--method", "--objectives", "--max-exits", "--mode", "--positions",
        "--heads", "--th-pix", "--th-img", "--max-latency-ms", "--max-drop-pp", "--min-miou",
        "--max-gflops", "--target", "--fronts", "--workers", "--report", "--db"]),
    "optuna": ([*PARETO, "--method", "optuna", "--trials", "2"], ["--study", "--trials"]),
    "report": (["report", "--runs", "1", "--out", "r.html"], ["--runs", "--out"]),
    "export": (["export", "--run", "1", "--candidate", "0", "--checkpoint", "{ckpt}",
                "--out", "x.pt"],
               ["--run", "--candidate", "--format", "--out", "--checkpoint", "--arch-trust"]),
    "verify": (["verify", "--run", "1", "--candidate", "0", "--checkpoint", "{ckpt}"],
               ["--run", "--candidate", "--checkpoint", "--data", "--split", "--limit",
                "--repeat", "--compute"]),
    "profile": (["profile", "--checkpoint", "{ckpt}", "--device", "box", "--no-accuracy"],
                ["--checkpoint", "--device", "--name", "--input-size", "--compute", "--dtype",
                 "--threads", "--repeat", "--warmup", "--batch", "--min-time", "--arch-trust"]),
    "profile-data": (["profile", "--checkpoint", "{ckpt}", "--device", "box", "--no-latency"],
                     ["--data", "--split", "--limit", "--batch-size"]),
    "inspect": (["inspect", "fcn_resnet18"],
                ["--input-size", "--num-classes", "--heads", "--positions", ""]),
    "store": (["models"], [""]),
}
# Values that are fine for an option, so not cases: a loose constraint is a constraint, a report
# may be named "-1", "mess.db" is a valid device, model or study name, and `--db mess.db` is the
# store itself. Every other combination must be refused.
ACCEPTED = {
    ("pareto", "--max-latency-ms", "huge"), ("pareto", "--max-gflops", "huge"),
    ("pareto", "--report", "huge"), ("pareto", "--report", "negative"),
    ("pareto", "--db", "store"), ("optuna", "--study", "store"), ("report", "--out", "huge"),
    ("report", "--out", "negative"), ("profile", "--device", "store"),
    ("profile", "--name", "store"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A filled store with one search run, and a checkpoint of another model."""
    from training.adapters import build_network
    from training.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'mess.db'}"
    rng = np.random.default_rng(0)
    data = random_accuracy(rng, num_positions=2, heads=1, num_samples=6, num_classes=3)
    _fill(url, data, random_costs(rng, data))
    assert main(["pareto", "--device", "box", "--max-exits", "1", "--db", url, "--json"]) == 0
    torch.manual_seed(0)
    net = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                        positions=["layer1.1"])
    save_checkpoint(tmp / "tiny.pt", net, meta={"input_size": [32, 32], "dataset": "synthetic"})
    return tmp, url


def _state(folder: Path) -> dict[str, str]:
    """Every file of the folder by content, and the store by its SQL dump (which reads the WAL
    too; SQLite's -wal and -shm files come and go with connections)."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.endswith(("-shm", "-wal"))}
    conn = sqlite3.connect(f"file:{folder / 'mess.db'}?mode=ro", uri=True)
    try:
        files["<store dump>"] = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()
    return files


def _argv(base: list[str], option: str, value: str, tmp: Path, url: str) -> list[str]:
    argv = [a.format(ckpt=tmp / "tiny.pt") for a in base]
    if option in argv:
        argv[argv.index(option) + 1] = value
    elif option:
        argv += [option, value]
    else:
        argv[-1 if len(argv) > 1 else len(argv):] = [value]  # the positional argument
    if "--db" not in argv and argv[0] != "inspect":
        argv += ["--db", url]
    return argv


@pytest.mark.parametrize("command", sorted(CASES))
def test_bad_values_are_one_line_and_change_nothing(world, command: str, capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, url = world
    monkeypatch.chdir(tmp)  # relative paths a value names land here, where they are seen
    base, options = CASES[command]
    failures = []
    for option in options:
        for label, value in BAD.items():
            if (command, option, label) in ACCEPTED:
                continue
            argv = _argv(base, option, value, tmp, url)
            before = _state(tmp)
            capsys.readouterr()
            code = main(argv)
            err = capsys.readouterr().err.strip()
            lines = err.splitlines()
            if code == 0 or len(lines) != 1 or not lines[0].startswith("error: "):
                failures.append(f"{option}={label}: exit {code}, stderr {err[-300:]!r}")
            else:
                after = _state(tmp)
                changed = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
                if changed:
                    failures.append(f"{option}={label}: changed {changed}")
    assert not failures, "\n".join(failures)
