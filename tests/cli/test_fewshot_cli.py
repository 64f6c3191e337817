"""`dse profile --few-shot K --reference DEV`: K measured, the rest predicted and said so in
pareto, the report and verify; a full profile replaces the predictions; refusals store nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dse.cli import main

# --keep-noisy: the machine running the tests is rarely quiet; the verdict is checked elsewhere
FAST = ["--repeat", "2", "--warmup", "0", "--threads", "1", "--keep-noisy"]
COMPONENTS = 11  # the tiny network: 3 segments, 2 x (head, decision, upsample), final, upsample


def _lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def _rows(db: str, device: str, *, include_predicted: bool) -> list:
    from db import repository
    from db.session import open_store, session_scope

    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            dev = repository.get_device(s, device)
            return [r for r in repository.load_latency(s, model_id=1, device_id=dev.id,
                                                       include_predicted=include_predicted)
                    if r.kind != "path"]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory) -> Path:
    """A store with the accuracy profile and a full torch profile of device 'ref'."""
    db = tmp_path_factory.mktemp("fewshot") / "ref.db"
    assert main(["profile", "--checkpoint", str(checkpoint), "--device", "ref", "--db", str(db),
                 "--limit", "6", *FAST]) == 0
    return db


def _copy(reference: Path, tmp_path: Path) -> str:
    db = tmp_path / "m.db"
    db.write_bytes(reference.read_bytes())
    return str(db)


def test_few_shot_measures_k_predicts_the_rest_and_everything_says_so(
        checkpoint, reference, tmp_path, capsys) -> None:
    db = _copy(reference, tmp_path)
    capsys.readouterr()
    base = ["profile", "--checkpoint", str(checkpoint), "--device", "new", "--db", db, *FAST]
    assert main([*base, "--few-shot", "4", "--reference", "ref", "--json"]) == 0
    few = _lines(capsys.readouterr().out)[0]["few_shot"]
    assert few["measured"] == 4 and few["predicted"] == COMPONENTS - 4
    assert few["references"] == ["ref"] and few["model"].endswith("(ref)")
    assert few["n_measured"] == 4 and few["cv_error"] is not None
    measured = _rows(db, "new", include_predicted=False)
    both = _rows(db, "new", include_predicted=True)
    assert len(measured) == 4 and not any(r.predicted for r in measured)
    predicted = [r for r in both if r.predicted]
    assert len(predicted) == COMPONENTS - 4 and len(both) == COMPONENTS
    assert all(r.quality["model"] == few["model"] and r.n == 1 for r in predicted)

    # the plain summary: one line with K, the model and the leave-one-out error
    assert main([*base, "--few-shot", "4", "--reference", "ref"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("few-shot on 'new'"))
    assert "measured 4 of 11 components" in line and "leave-one-out error" in line

    assert main(["pareto", "--device", "new", "--db", db, "--max-exits", "2", "--json",
                 "--report", str(tmp_path / "r.html")]) == 0
    captured = capsys.readouterr()
    warnings = [x for x in captured.err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "7 of 11 component latencies of 'new' are predicted" in \
        warnings[0] and "expected error" in warnings[0]
    run = _lines(captured.out)[0]["run"]
    html = (tmp_path / "r.html").read_text()
    assert 'data-predicted="7/11"' in html and "expected error" in html

    assert main(["verify", "--run", str(run), "--candidate", "0", "--checkpoint",
                 str(checkpoint), "--db", db, "--repeat", "1", "--json"]) == 0
    captured = capsys.readouterr()
    gap = next(x for x in captured.err.splitlines() if "few-shot prediction" in x)
    result = _lines(captured.out)[0]
    assert f"{result['latency_error']:+.1%}" in gap and "expected" in gap
    stored = {r.quality["model"] for r in _rows(db, "new", include_predicted=True) if r.predicted}
    assert stored == {result["latency_prediction"]["model"]}  # the newest few-shot fit's

    # a later full profile measures the predicted components (and any stored noisy: a busy
    # test machine) and replaces them
    noisy = sum(r.noisy for r in _rows(db, "new", include_predicted=False))
    assert main([*base, "--json"]) == 0
    assert _lines(capsys.readouterr().out)[0]["latency_measured"] == COMPONENTS - 4 + noisy
    assert len(_rows(db, "new", include_predicted=True)) == COMPONENTS
    assert not any(r.predicted for r in _rows(db, "new", include_predicted=True))
    assert main(["pareto", "--device", "new", "--db", db, "--max-exits", "2"]) == 0
    assert "predicted" not in capsys.readouterr().err


def test_k_beyond_the_components_measures_everything(checkpoint, reference, tmp_path,
                                                     capsys) -> None:
    db = _copy(reference, tmp_path)
    capsys.readouterr()
    assert main(["profile", "--checkpoint", str(checkpoint), "--device", "new", "--db", db,
                 *FAST, "--no-accuracy", "--few-shot", "100", "--reference", "1"]) == 0  # an id
    assert "all 11 components measured, nothing predicted" in capsys.readouterr().out
    rows = _rows(db, "new", include_predicted=True)
    assert len(rows) == COMPONENTS and not any(r.predicted for r in rows)


def _other_runtime_device(db: str) -> None:
    """A device profiled with onnxruntime (rows copied from 'ref': the runtime is the point)."""
    from db import repository
    from db.session import open_store, session_scope

    engine = open_store(db)
    try:
        with session_scope(engine) as s:
            ref = repository.get_device(s, "ref")
            ort = repository.upsert_device(s, name="ort", fingerprint={
                **ref.fingerprint, "runtime": "onnxruntime"})
            for r in repository.load_latency(s, model_id=1, device_id=ref.id):
                if r.kind != "path":
                    repository.upsert_latency(
                        s, model_id=1, device_id=ort.id, kind=r.kind, name=r.name,
                        input_shape=r.input_shape, batch=r.batch, dtype=r.dtype,
                        samples_ms=r.samples_ms, gflops=r.gflops, params=r.params)
    finally:
        engine.dispose()


@pytest.mark.parametrize(("extra", "message"), [
    (["--few-shot", "0", "--reference", "ref"], "--few-shot K is the number of components"),
    (["--few-shot", "3"], "--few-shot K needs --reference"),
    (["--reference", "ref"], "--reference goes with --few-shot K"),
    (["--few-shot", "3", "--reference", "nosuch"], "unknown device 'nosuch'"),
    (["--few-shot", "3", "--reference", "999"], "unknown device"),
    (["--few-shot", "3", "--reference", "ref,ref"], "names a device twice"),
    (["--few-shot", "3", "--reference", "other-size"],
     "reference 'other-size' has no latency profile of model 'tiny' at input 1x3x32x32"),
    (["--few-shot", "3", "--reference", "ort"],
     "reference 'ort' was profiled with onnxruntime, this profile runs torch"),
    (["--device", "ref", "--few-shot", "3", "--reference", "ref"],
     "that is the device being profiled"),
    (["--allow-cross-runtime"], "--allow-cross-runtime goes with --reference"),
])
def test_bad_few_shot_input_is_one_line_exit_2_and_stores_nothing(
        checkpoint, reference, tmp_path, capsys, extra, message, store_counts) -> None:
    db = _copy(reference, tmp_path)
    assert main(["profile", "--checkpoint", str(checkpoint), "--device", "other-size", "--db",
                 db, *FAST, "--no-accuracy", "--input-size", "64x64"]) == 0
    _other_runtime_device(db)
    capsys.readouterr()
    before = store_counts(db)
    assert main(["profile", "--checkpoint", str(checkpoint), "--device", "new", "--db", db,
                 *FAST, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert store_counts(db) == before


def test_a_cross_runtime_reference_serves_when_allowed(checkpoint, reference, tmp_path,
                                                       capsys) -> None:
    db = _copy(reference, tmp_path)
    _other_runtime_device(db)
    capsys.readouterr()
    assert main(["profile", "--checkpoint", str(checkpoint), "--device", "new", "--db", db,
                 *FAST, "--no-accuracy", "--few-shot", "3", "--reference", "ort",
                 "--allow-cross-runtime", "--json"]) == 0
    few = _lines(capsys.readouterr().out)[0]["few_shot"]
    assert few["measured"] == 3 and few["predicted"] == COMPONENTS - 3
    assert few["references"] == ["ort"]


def test_probe_pack_of_k_components_then_import_predicts_the_rest(
        checkpoint, reference, tmp_path, capsys, store_counts) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from profiling import ort_probe

    db = _copy(reference, tmp_path)
    _other_runtime_device(db)
    capsys.readouterr()
    base = ["probe-pack", "--checkpoint", str(checkpoint), "--db", db, "--few-shot", "3"]
    refused = tmp_path / "refused"
    assert main([*base, "--out", str(refused), "--reference", "ref"]) == 2
    err = capsys.readouterr().err.strip()
    assert "reference 'ref' was profiled with torch, this profile runs onnxruntime" in err
    assert "\n" not in err and not refused.exists()

    pack = tmp_path / "pack"
    assert main([*base, "--out", str(pack), "--reference", "ort", "--json"]) == 0
    written = json.loads(capsys.readouterr().out.strip())
    assert len(written["requested"]) == 3  # plus the producers of their inputs
    assert ort_probe.main([str(pack), "--rounds", "3", "--warmup", "1"]) == 0
    results = str(pack / "results.json")
    imp = ["profile", "--import", results, "--device", "pi", "--db", db, "--keep-noisy"]
    before = store_counts(db)
    for extra, message in [(["--reference", "ref"], "reference 'ref' was profiled with torch"),
                           (["--reference", "nosuch"], "unknown device 'nosuch'"),
                           (["--few-shot", "3", "--reference", "ort"], "--import stores what")]:
        assert main([*imp, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
        assert store_counts(db) == before
    assert main([*imp, "--reference", "ort", "--json"]) == 0
    few = _lines(capsys.readouterr().out)[0]["few_shot"]
    timed = len(written["components"])
    assert few["measured"] == timed and few["predicted"] == COMPONENTS - timed
    rows = _rows(db, "pi", include_predicted=True)
    assert len(rows) == COMPONENTS
    assert {f"{r.kind}:{r.name}" for r in rows if not r.predicted} == set(written["components"])
    assert main(["pareto", "--device", "pi", "--db", db, "--max-exits", "2"]) == 0
    assert f"{COMPONENTS - timed} of 11 component latencies of 'pi' are predicted" in \
        capsys.readouterr().err
