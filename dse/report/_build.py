"""Reading a report's records from the store, and writing the page safely.

`write_report` checks the output path before any work and replaces the file atomically, so a
failed run never leaves a half-written report.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from db.errors import StorageError
from db.trust import latency_trust
from dse.errors import DseError
from dse.report._data import kept_exits
from dse.report._html import render_report
from dse.report._model import ConfidenceData, ReportData, RunData


def _confidence(session: Session, profile_id: int,
                keep: set[str]) -> tuple[ConfidenceData | None, str]:
    """The kept exits' histograms, or None and why (the rest of the report still renders)."""
    from db.repository import load_accuracy

    if not keep:
        return None, ""
    try:
        arrays = load_accuracy(session, profile_id)
    except StorageError as exc:  # e.g. a profile left incomplete; the fronts stay valid
        return None, f"accuracy profile {profile_id} cannot be read: {exc}"
    data = ConfidenceData.from_arrays(profile_id=profile_id, exit_ids=arrays.exit_ids,
                                      edges=arrays.edges, hist=arrays.hist, keep=keep)
    return data, ""


def build_report_data(session: Session, run_ids: Sequence[int]) -> ReportData:
    """Read runs, their candidates, verifications and confidence histograms.

    Raises:
        DseError: no run id given, or one given twice.
        StorageError: a run id that is not in the store (the message names `dse pareto`).
    """
    from db.repository import get_search_run, list_candidates, list_verifications

    ids = [int(r) for r in run_ids]
    if not ids:
        raise DseError("no run to report: pass --runs ID[,ID...] (see `dse pareto`)")
    dupes = sorted({r for r in ids if ids.count(r) > 1})
    if dupes:
        raise DseError(f"run {dupes[0]} is listed twice in --runs; list each run once")
    runs = []
    for run_id in ids:
        run = get_search_run(session, run_id)
        candidates = list_candidates(session, run_id)
        confidence, note = _confidence(session, run.accuracy_profile_id,
                                       set(kept_exits(candidates)))
        runs.append(RunData(
            run=run, candidates=tuple(candidates),
            verifications=tuple(list_verifications(session, run_id)),
            confidence=confidence, confidence_note=note,
            trust=latency_trust(session, model_id=run.model_id, device_id=run.device_id,
                                input_shape=run.input_shape),
        ))
    return ReportData(runs=tuple(runs))


def _file_mode() -> int:
    """What a plain open() would create: 0o666 less the umask (mkstemp makes 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Temp files of `path` left by a writer that was killed (SIGKILL skips every cleanup).

    Each temp name carries its writer's pid, so only files of processes that no longer run are
    removed, never the one a concurrent writer is filling.
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _open_temp(path: Path) -> tuple[int, str]:
    """A temp file next to `path` (same filesystem, so os.replace is atomic)."""
    try:
        _remove_stale_temps(path)
        return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DseError(
            f"cannot write in {path.parent} ({exc.strerror or exc}); choose another output path"
        ) from exc


_HTML_STARTS = (b"<!doctype html", b"<html")


def _check_replaceable(path: Path) -> None:
    """An existing output may only be an earlier report: the write replaces the file.

    Anything else is refused: a device (`/dev/null` would become a plain file), a link, a store
    or checkpoint, a system file that a mistyped path names.
    """
    if path.is_symlink() or not path.is_file():
        raise DseError(f"output path {path} exists and is not a plain file; choose another output path")
    if not os.access(path, os.W_OK):
        raise DseError(f"output file {path} is not writable; choose another output path")
    try:
        with path.open("rb") as fh:
            head = fh.read(64).lstrip().lower()
    except OSError as exc:
        raise DseError(f"cannot read {path} ({exc.strerror or exc}); choose another output path") from exc
    if not head.startswith(_HTML_STARTS):
        raise DseError(
            f"output file {path} exists and is not an HTML report; remove it or choose another "
            "output path (only an earlier report is replaced)"
        )


def check_output_path(out_path: str | os.PathLike[str]) -> Path:
    """The output path, or a DseError saying why it cannot be written.

    Writability is probed with a real temp file, which also catches read-only mounts and
    folders that permission bits alone do not describe (e.g. when running as root).
    """
    path = Path(out_path).expanduser()
    if not path.name or path.is_dir():
        raise DseError(f"output path {path} is a folder; give a file name such as {path}/report.html")
    if not path.parent.is_dir():
        raise DseError(
            f"output folder {path.parent} does not exist; create it first or choose another output path"
        )
    if path.exists() or path.is_symlink():
        _check_replaceable(path)
    fd, tmp = _open_temp(path)
    os.close(fd)
    os.unlink(tmp)
    return path


def write_report(session: Session, run_ids: Sequence[int], out_path: str | os.PathLike[str]) -> Path:
    """Render the runs into one self-contained HTML file at `out_path` (atomic replace).

    The output is checked before any work; the page goes to a temp file in the same folder that
    replaces `out_path` only once complete.

    Returns:
        The path written.

    Raises:
        DseError: the output path cannot be written, or the run list is bad.
        StorageError: a run is missing from the store.
    """
    path = check_output_path(out_path)
    page = render_report(build_report_data(session, run_ids))  # before the temp file exists
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DseError(f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
