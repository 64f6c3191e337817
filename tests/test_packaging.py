"""The generic top-level names must resolve to this project, not to some installed namesake."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["db", "training", "profiling", "dse"])
def test_package_is_ours(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == ROOT / name


def test_console_script_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dse = "dse.cli:run"' in text
    for name in ("db", "training", "profiling", "dse"):
        assert f'"{name}"' in text
