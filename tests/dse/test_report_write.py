"""Report files: plain permissions, and temp files of killed writers do not pile up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from report_factory import fill_store

from db.session import open_store, session_scope
from dse.report import write_report


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_stale_temps_of_killed_writers_go_and_live_ones_stay(tmp_path: Path) -> None:
    store = tmp_path / "mess.db"
    run_ids = fill_store(store)
    out = tmp_path / "report.html"
    stale = tmp_path / f".report.html.{_dead_pid()}.x1.tmp"  # a writer SIGKILLed mid-write
    live = tmp_path / f".report.html.{os.getppid()}.x2.tmp"  # a writer still running
    other = tmp_path / f".other.html.{_dead_pid()}.x3.tmp"  # another file's: not ours to judge
    for f in (stale, live, other):
        f.write_text("partial")
    engine = open_store(f"sqlite:///{store}")
    try:
        with session_scope(engine, readonly=True) as s:
            write_report(s, run_ids, out)
    finally:
        engine.dispose()
    assert not stale.exists() and live.exists() and other.exists()
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_only_an_earlier_report_is_replaced(tmp_path: Path) -> None:
    """A mistyped output path must not replace a store, a device or a system file."""
    import pytest

    from dse.errors import DseError
    from dse.report import check_output_path

    store = tmp_path / "mess.db"
    fill_store(store)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    for path, why in ((store, "not an HTML report"), (fifo, "not a plain file"),
                      (link, "not a plain file")):
        with pytest.raises(DseError, match=why):
            check_output_path(path)
    earlier = tmp_path / "old.html"
    earlier.write_text("<!DOCTYPE html><html></html>")
    assert check_output_path(earlier) == earlier
