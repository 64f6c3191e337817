"""Probe packs: written here, timed by a script with numpy + onnxruntime only, imported back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from db import repository
from db.session import session_scope
from profiling import ort_probe
from profiling.errors import ProfilingError
from profiling.probe_pack import import_results, read_results, write_pack

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = (32, 32)


@pytest.fixture(scope="module")
def pack(tiny_network, tmp_path_factory) -> Path:
    """A full pack of the tiny network (24 graphs)."""
    out = tmp_path_factory.mktemp("packs") / "tiny-pack"
    info = write_pack(tiny_network, out, model_name="tiny", input_size=SIZE)
    assert info.path == out and info.sha256 == ort_probe.pack_sha256(out)
    return out


@pytest.fixture(scope="module")
def results(pack, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results") / "results.json"
    assert ort_probe.main([str(pack), "--out", str(out), "--rounds", "3", "--warmup", "1"]) == 0
    return out


def _rewrite(src: Path, dst: Path, edit, *, fix_checksum: bool) -> Path:
    data = json.loads(src.read_text())
    edit(data)
    if fix_checksum:
        data["checksum"] = ort_probe.checksum(data)
    dst.write_text(json.dumps(data))
    return dst


def test_a_pack_holds_every_component_and_the_probe_script(pack, tiny_network) -> None:
    manifest = json.loads((pack / "pack.json").read_text())
    keys = [c["key"] for c in manifest["components"]]
    positions = [p.name for p in tiny_network.positions]
    assert keys[0] == f"segment:{positions[0]}" and keys[-1] == "upsample:final"
    assert len(keys) == len(positions) + 1 + 3 * len(tiny_network.exit_ids) + 2
    assert manifest["requested"] is None and manifest["input_shape"] == [1, 3, *SIZE]
    assert (pack / "probe.py").read_text() == Path(ort_probe.__file__).read_text()
    for component in manifest["components"]:
        assert (pack / component["file"]).is_file()
        assert all(len(i["shape"]) == 4 or component["kind"] == "decision"
                   for i in component["inputs"])


def test_probe_results_import_with_provenance(pack, results, engine, tiny_network) -> None:
    checked = read_results(results, pack)
    assert checked.pack_sha256 == ort_probe.pack_sha256(pack)
    data = json.loads(results.read_text())
    fingerprint = data["fingerprint"]
    assert fingerprint["runtime"] == "onnxruntime" and fingerprint["threads"] == 1
    assert {"onnxruntime", "provider", "graph_optimization", "cpu"} <= set(fingerprint)
    assert all(len(v) == 3 for v in data["samples_ms"].values())
    imported = import_results(engine, checked, device_name="pi-ort", keep_noisy=True)
    with session_scope(engine) as s:
        device = repository.get_device(s, "pi-ort")
        rows = repository.load_latency(s, model_id=imported.model_id, device_id=device.id)
        exits = repository.list_exits(s, imported.model_id)
    assert device.fingerprint == fingerprint
    assert {f"{r.kind}:{r.name}" for r in rows} == set(data["samples_ms"])
    assert {e.exit_id for e in exits} == {*tiny_network.exit_ids, "final"}
    for row in rows:
        assert row.provenance is not None and row.provenance["via"] == "probe"
        assert row.provenance["pack_sha256"] == checked.pack_sha256 and row.source == "measured"
        assert list(row.samples_ms) == data["samples_ms"][f"{row.kind}:{row.name}"]
        assert row.input_shape == (1, 3, *SIZE) and row.dtype == "float32"


def test_results_in_their_pack_folder_find_it_elsewhere_need_it(results, pack, tmp_path) -> None:
    assert ort_probe.main([str(pack), "--rounds", "1", "--warmup", "0"]) == 0  # PACK/results.json
    assert read_results(pack / "results.json").pack_sha256 == ort_probe.pack_sha256(pack)
    with pytest.raises(ProfilingError, match="not a probe pack; give --pack"):
        read_results(results)


def test_bad_results_are_refused_with_one_reason(results, pack, tmp_path, tiny_network) -> None:
    cases = {
        "newer": (lambda d: d.update(version=ort_probe.RESULTS_VERSION + 1), True,
                  "newer than this mess-dse reads"),
        "edited": (lambda d: d["samples_ms"]["segment:tail"].__setitem__(0, 0.001), False,
                   "edited or damaged"),
        "other-pack": (lambda d: d.update(pack_sha256="0" * 64), True, "another pack"),
        "missing": (lambda d: d["samples_ms"].pop("segment:tail"), True, "misses segment:tail"),
        "negative": (lambda d: d["samples_ms"]["segment:tail"].__setitem__(0, -1.0), True,
                     "finite times"),
        "not-results": (lambda d: d.update(format="something"), True, "not a probe results"),
    }
    for name, (edit, fix, message) in cases.items():
        bad = _rewrite(results, tmp_path / f"{name}.json", edit, fix_checksum=fix)
        with pytest.raises(ProfilingError, match=message):
            read_results(bad, pack)
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(results.read_bytes()[: len(results.read_bytes()) // 2])
    with pytest.raises(ProfilingError, match="truncated"):
        read_results(truncated, pack)
    with pytest.raises(ProfilingError, match="does not exist"):
        read_results(tmp_path / "nowhere.json", pack)


def test_results_of_another_pack_of_the_same_model_are_refused(results, tiny_network,
                                                                tmp_path) -> None:
    other = write_pack(tiny_network, tmp_path / "other", model_name="tiny", input_size=SIZE,
                       components=["segment:layer1.1"])
    with pytest.raises(ProfilingError, match="another pack"):
        read_results(results, other.path)


def test_an_edited_pack_no_longer_matches_its_results(results, pack, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pack, copy)
    graph = sorted(copy.glob("*.onnx"))[0]
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ProfilingError, match="another pack"):
        read_results(results, copy)


def test_a_subset_pack_holds_the_chosen_components_and_their_producers(tiny_network,
                                                                       tmp_path) -> None:
    exit_id = tiny_network.exit_ids[2]  # at the second position
    info = write_pack(tiny_network, tmp_path / "few", model_name="tiny", input_size=SIZE,
                      components=[f"decision:{exit_id}", "segment:layer1.1"])
    assert info.requested == (f"decision:{exit_id}", "segment:layer1.1")
    assert info.components == ("segment:layer1.1", "segment:layer2.1", f"head:{exit_id}",
                               f"decision:{exit_id}")
    out = tmp_path / "few.json"
    assert ort_probe.main([str(info.path), "--out", str(out), "--rounds", "2"]) == 0
    assert set(read_results(out, info.path).samples_ms) == set(info.components)
    with pytest.raises(ProfilingError, match="no component head:nowhere"):
        write_pack(tiny_network, tmp_path / "bad", model_name="tiny", input_size=SIZE,
                   components=["head:nowhere"])
    with pytest.raises(ProfilingError, match="KIND:NAME"):
        write_pack(tiny_network, tmp_path / "bad", model_name="tiny", input_size=SIZE,
                   components=["tail"])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ProfilingError, match="already exists"):
        write_pack(tiny_network, info.path, model_name="tiny", input_size=SIZE)


def test_the_probe_without_onnxruntime_says_so_in_one_line(pack, tmp_path) -> None:
    out = tmp_path / "r.json"
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; "
            f"sys.argv = ['probe.py', {str(pack)!r}, '--out', {str(out)!r}]; "
            f"runpy.run_path({str(pack / 'probe.py')!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert run.stderr.startswith("error: onnxruntime is not installed")
    assert not out.exists()


def test_the_probe_refuses_a_folder_that_is_not_a_pack(tmp_path, capsys) -> None:
    assert ort_probe.main([str(tmp_path)]) == 2
    assert "is not a probe pack" in capsys.readouterr().err
    assert ort_probe.main([str(tmp_path), "--threads", "0"]) == 2
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_the_probe_runs_in_a_venv_with_only_numpy_and_onnxruntime(pack, tmp_path, engine) -> None:
    """Build a fresh venv (numpy + onnxruntime from the package index); skip when that fails."""
    import onnxruntime

    env_dir = tmp_path / "venv"
    try:
        venv.EnvBuilder(with_pip=True).create(env_dir)
    except Exception as exc:  # noqa: BLE001 - any failure to build the venv means skip
        pytest.skip(f"cannot create a venv here ({exc})")
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "numpy",
         f"onnxruntime=={onnxruntime.__version__}"],
        capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"cannot install numpy + onnxruntime in a fresh venv: "
                    f"{install.stderr.strip().splitlines()[-1:]}")
    listed = subprocess.run([str(python), "-c", "import importlib.util as u; "
                             "print(all(u.find_spec(m) is None for m in "
                             "('torch', 'dse', 'profiling', 'training', 'onnx')))"],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
                            cwd=tmp_path)
    assert listed.stdout.strip() == "True", listed.stderr
    out = tmp_path / "results.json"
    run = subprocess.run([str(python), str(pack / "probe.py"), str(pack), "--out", str(out),
                          "--rounds", "3"], capture_output=True, text=True, timeout=600,
                         env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "timed 24 components" in run.stdout
    checked = read_results(out, pack)
    imported = import_results(engine, checked, device_name="fresh-venv", keep_noisy=True)
    assert len(imported.stored) == 24


def test_spinning_is_off_by_default_and_part_of_a_multithread_fingerprint(tmp_path) -> None:
    """A cascade is several sessions: their pools must not busy-wait on each other's cores.
    With one thread there is no pool, so the setting stays out of the fingerprint."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    for spinning in (False, True):
        settings = ort_probe.RuntimeSettings(threads=2, spinning=spinning)
        run = ort_probe.session_factory(settings)(path)
        session = run.__closure__[0].cell_contents  # the InferenceSession the runner calls
        entry = session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning")
        assert entry == ("1" if spinning else "0")
        assert ort_probe.fingerprint(settings)["intra_op_spinning"] is spinning
    assert "intra_op_spinning" not in ort_probe.fingerprint(ort_probe.RuntimeSettings(threads=1))
