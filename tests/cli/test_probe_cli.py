"""`dse probe-pack` -> probe.py -> `dse profile --import`, and the refusals that store nothing."""

from __future__ import annotations

import json

import pytest

from dse.cli import main

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def pack(checkpoint, tmp_path_factory):
    from profiling import ort_probe

    out = tmp_path_factory.mktemp("pack") / "tiny-pack"
    assert main(["probe-pack", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert ort_probe.main([str(out), "--rounds", "3", "--warmup", "1"]) == 0
    return out


def test_import_then_search_the_device(checkpoint, pack, tmp_path, capsys,
                                       store_counts) -> None:
    db = str(tmp_path / "m.db")
    args = ["profile", "--import", str(pack / "results.json"), "--device", "pi", "--db", db,
            "--keep-noisy", "--json"]  # the test machine is rarely quiet
    assert main(args) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["imported"] == 11 and line["device"] == "pi"
    assert main(args) == 0  # again: the same rows, replaced
    capsys.readouterr()
    assert store_counts(db)["dse_latency"] == 11
    assert main(["devices", "pi", "--json", "--db", db]) == 0
    device = json.loads(capsys.readouterr().out.splitlines()[0])
    assert device["fingerprint"]["runtime"] == "onnxruntime"
    # accuracy once (device-independent), then the imported device is searchable
    assert main(["profile", "--checkpoint", str(checkpoint), "--device", "here", "--db", db,
                 "--no-latency", "--limit", "4"]) == 0
    capsys.readouterr()
    assert main(["pareto", "--device", "pi", "--db", db, "--max-exits", "2", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert rows and all(r["latency_ms"] > 0 for r in rows)


def test_bad_imports_say_one_line_and_store_nothing(pack, tmp_path, capsys,
                                                    store_counts) -> None:
    from profiling import ort_probe

    db = str(tmp_path / "m.db")
    assert main(["db", "upgrade", "--db", db]) == 0
    capsys.readouterr()
    before = store_counts(db)
    good = json.loads((pack / "results.json").read_text())
    newer = dict(good, version=ort_probe.RESULTS_VERSION + 1)
    newer["checksum"] = ort_probe.checksum(newer)
    edited = json.loads(json.dumps(good))
    edited["samples_ms"]["segment:tail"][0] += 1.0
    other = dict(good, pack_sha256="f" * 64)
    other["checksum"] = ort_probe.checksum(other)
    files = {"newer.json": json.dumps(newer), "edited.json": json.dumps(edited),
             "other.json": json.dumps(other),
             "truncated.json": (pack / "results.json").read_text()[:200]}
    expected = {"newer.json": "newer than this mess-dse", "edited.json": "edited or damaged",
                "other.json": "another pack", "truncated.json": "truncated"}
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        code = main(["profile", "--import", str(path), "--pack", str(pack), "--device", "pi",
                     "--db", db])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err, (name, err)
        assert expected[name] in err
        assert store_counts(db) == before
    assert main(["profile", "--import", str(tmp_path / "newer.json"), "--device", "pi",
                 "--db", db]) == 2
    assert "give --pack" in capsys.readouterr().err
    assert main(["profile", "--import", str(pack / "results.json"), "--checkpoint", "x.pt",
                 "--device", "pi", "--db", db]) == 2
    assert main(["profile", "--device", "pi", "--db", db]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert store_counts(db) == before


def test_probe_pack_refusals(checkpoint, pack, tmp_path, capsys) -> None:
    cases = [
        (["--out", str(pack)], "already exists"),
        (["--out", str(tmp_path / "no" / "p")], "does not exist"),
        (["--out", str(tmp_path / "p"), "--components", "head:nowhere"], "no component"),
        (["--out", str(tmp_path / "p"), "--components", ","], "--components is empty"),
        (["--out", str(tmp_path / "p"), "--input-size", "4x4"], "input size"),
    ]
    for extra, message in cases:
        assert main(["probe-pack", "--checkpoint", str(checkpoint), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
        assert not (tmp_path / "p").exists()


def test_import_is_judged_like_a_profile(pack, tmp_path, capsys, store_counts) -> None:
    """Samples with a wide spread are refused (exit 3, nothing stored) unless --keep-noisy;
    steady ones are stored as stable, with their quality."""
    from db import repository
    from db.session import open_store, session_scope
    from profiling import ort_probe

    good = json.loads((pack / "results.json").read_text())
    steady, spread = json.loads(json.dumps(good)), json.loads(json.dumps(good))
    for key, values in good["samples_ms"].items():
        steady["samples_ms"][key] = [1.0] * len(values)
        spread["samples_ms"][key] = [1.0, 5.0, 1.0, 9.0][: max(2, len(values))] * 2
    for data in (steady, spread):
        data["checksum"] = ort_probe.checksum(data)
    db = str(tmp_path / "m.db")
    assert main(["db", "upgrade", "--db", db]) == 0
    before = store_counts(db)
    (tmp_path / "spread.json").write_text(json.dumps(spread))
    (tmp_path / "steady.json").write_text(json.dumps(steady))
    base = ["profile", "--pack", str(pack), "--device", "pi", "--db", db]
    assert main([*base, "--import", str(tmp_path / "spread.json")]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: probe results not trustworthy") and "\n" not in err
    assert store_counts(db) == before
    assert main([*base, "--import", str(tmp_path / "steady.json")]) == 0
    assert "probe results stable" in capsys.readouterr().out
    engine = open_store(db)
    with session_scope(engine) as s:
        device = repository.get_device(s, "pi")
        rows = repository.load_latency(s, model_id=1, device_id=device.id)
        quality = repository.list_profile_quality(s, model_id=1, device_id=device.id)
    engine.dispose()
    assert rows and not any(r.noisy for r in rows) and all(r.quality for r in rows)
    assert quality[-1].quality["source"] == "probe import" and not quality[-1].noisy
    assert main([*base, "--import", str(tmp_path / "spread.json"), "--keep-noisy"]) == 0
    assert "stored marked noisy" in capsys.readouterr().err
