"""One machine profiled under two runtimes: one device name, two fingerprints.

`dse pareto`, `dse runs` and `dse devices` address either setup (`--runtime`, a device id),
say which one a bare name uses, never mix their latency rows, and the report overlays the two
fronts like two devices. A real SQLite store filled through the repository (no torch).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_pareto_cli import _fill

from db import open_store, session_scope
from db import repository as repo
from dse.cli import main
from dse.synthetic import random_accuracy, random_costs

ORT = {"cpu": "test", "runtime": "onnxruntime", "onnxruntime": "1.32.0", "threads": 1,
       "graph_optimization": "all", "provider": "CPUExecutionProvider"}
SCALE = 10.0  # every ONNX Runtime component takes ten times its torch time


@pytest.fixture()
def store(tmp_path):
    """Device `laptop`: torch eager first (id 1), then ONNX Runtime (id 2), same model."""
    rng = np.random.default_rng(5)
    data = random_accuracy(rng, num_positions=3, heads=2, num_samples=12, num_classes=4)
    url = f"sqlite:///{tmp_path / 'mess.db'}"
    _fill(url, data, random_costs(rng, data), device="laptop")
    engine = open_store(url)
    with session_scope(engine) as s:
        torch_dev = repo.get_device(s, "laptop")
        ort_dev = repo.upsert_device(s, name="laptop", fingerprint=ORT)
        for row in repo.load_latency(s, model_id=1, device_id=torch_dev.id):
            repo.upsert_latency(s, model_id=1, device_id=ort_dev.id, kind=row.kind,
                                name=row.name, input_shape=row.input_shape, batch=row.batch,
                                dtype=row.dtype, samples_ms=SCALE * row.samples_ms,
                                gflops=row.gflops, params=row.params)
    engine.dispose()
    assert (torch_dev.id, ort_dev.id) == (1, 2)
    return url


def _search(url: str, capsys, *extra: str) -> tuple[int, list[dict], str]:
    code = main(["pareto", "--device", *extra, "--db", url, "--json", "--bootstrap", "0",
                 "--max-exits", "2"])
    captured = capsys.readouterr()
    return code, [json.loads(x) for x in captured.out.splitlines()], captured.err


def _run_devices(url: str) -> dict[int, int]:
    engine = open_store(url)
    try:
        with session_scope(engine, readonly=True) as s:
            return {r.id: r.device_id for r in repo.list_search_runs(s)}
    finally:
        engine.dispose()


def _key(line: dict) -> tuple:
    return tuple(line["exits"]), tuple(line["th_pix"]), line["th_img"]


def test_a_bare_name_says_which_setup_and_runtime_picks_one(store, capsys) -> None:
    code, ort_lines, err = _search(store, capsys, "laptop")
    assert code == 0
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: device 'laptop' has 2 setups (torch: id 1; onnxruntime 1.32.0 (1 thread, opt "
        "all): id 2); using the newest, onnxruntime 1.32.0 (1 thread, opt all) (id 2); pick "
        "another with --runtime onnxruntime|torch or --device ID"]
    code, torch_lines, err = _search(store, capsys, "laptop", "--runtime", "torch")
    assert code == 0 and "note:" not in err
    code, by_id, err = _search(store, capsys, "2")  # a device id: that fingerprint, no note
    assert code == 0 and "note:" not in err
    runs = _run_devices(store)
    assert [runs[lines[0]["run"]] for lines in (ort_lines, torch_lines, by_id)] == [2, 1, 2]

    # Never mixed: every configuration costs exactly SCALE times more under ONNX Runtime, which
    # one row of the other runtime in either search would break.
    torch_ms = {_key(x): x["latency_ms"] for x in torch_lines}
    shared = [x for x in ort_lines if _key(x) in torch_ms]
    assert len(shared) >= 3
    for line in shared:
        assert line["latency_ms"] == pytest.approx(SCALE * torch_ms[_key(line)], rel=1e-9)
        assert line["latency_ms"] > 0


@pytest.mark.parametrize(("extra", "message"), [
    (["laptop", "--runtime", "tflite"],
     "error: device 'laptop' has no tflite profile (it has: onnxruntime, torch); pick one of "
     "those with --runtime, or run `dse profile --device laptop --runtime tflite`"),
    (["1", "--runtime", "onnxruntime"],
     "error: device id 1 ('laptop') was profiled with torch, not onnxruntime; drop "
     "--runtime, or give the name 'laptop' with --runtime onnxruntime"),
    (["9"], "error: unknown device '9'"),
])
def test_a_runtime_or_id_the_store_lacks_is_one_line_and_stores_nothing(
        store, capsys, extra, message) -> None:
    code, lines, err = _search(store, capsys, *extra)
    assert code == 2 and not lines
    assert err.strip().startswith(message) and "\n" not in err.strip(), err
    assert _run_devices(store) == {}


def test_runs_and_devices_show_and_filter_the_runtime(store, capsys) -> None:
    assert _search(store, capsys, "laptop", "--runtime", "torch")[0] == 0
    assert _search(store, capsys, "laptop", "--runtime", "onnxruntime")[0] == 0
    assert main(["runs", "--device", "laptop", "--runtime", "onnxruntime", "--json",
                 "--db", store]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["runtime"], r["device_id"]) for r in rows] == [(2, "onnxruntime", 2)]
    assert rows[0]["setup"] == "onnxruntime 1.32.0 (1 thread, opt all)"
    assert main(["runs", "--device", "1", "--json", "--db", store]) == 0  # by id: that setup
    assert [json.loads(x)["run"] for x in capsys.readouterr().out.splitlines()] == [1]
    assert main(["runs", "--db", store]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "laptop · torch" in out and "laptop · onnxruntime 1.32.0 (1 thread, opt all)" in out

    assert main(["devices", "laptop", "--json", "--db", store]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["runtime"], r["threads"]) for r in rows] == [
        (1, "torch", None), (2, "onnxruntime", 1)]
    assert main(["devices", "--runtime", "onnxruntime", "--json", "--db", store]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == [2]
    assert main(["devices", "--db", store]) == 0
    out = capsys.readouterr().out  # 80 columns: one block per fingerprint
    assert "device 1  laptop · torch, fingerprint" in out
    assert "device 2  laptop · onnxruntime 1.32.0 (1 thread, opt all), fingerprint" in out
    assert main(["devices", "laptop", "--runtime", "tflite", "--db", store]) == 2
    assert "has no tflite profile" in capsys.readouterr().err


def test_report_overlays_the_two_runtimes_like_two_devices(store, capsys, tmp_path) -> None:
    assert _search(store, capsys, "laptop", "--runtime", "torch")[0] == 0
    assert _search(store, capsys, "laptop", "--runtime", "onnxruntime")[0] == 0
    out = tmp_path / "r.html"
    assert main(["report", "--runs", "1,2", "--out", str(out), "--db", store]) == 0
    page = out.read_text(encoding="utf-8")
    torch_label = "run 1 · laptop · torch"
    ort_label = "run 2 · laptop · onnxruntime 1.32.0 (1 thread, opt all)"
    cross = page.split('class="sortable cross"')[1].split("</table>")[0]
    assert f"{torch_label}: latency" in cross and f"{ort_label}: latency" in cross
    figure = page.split('id="fig-cross"')[1].split("</script>")[0]
    fronts = re.findall(r'"name":"([^"]*): front 1"', figure.encode().decode("unicode_escape"))
    assert fronts == [torch_label, ort_label]  # two traces, one per runtime
