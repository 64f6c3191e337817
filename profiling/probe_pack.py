"""Probe packs: profile a device that cannot install mess-dse or torch.

`write_pack` (``dse probe-pack``) exports every latency-model component of a network (or a
chosen subset plus the producers of its inputs) as ONNX into one folder, with a manifest
(``pack.json``: the model's description and weights sha256, input shape, each component's
graph, inputs, FLOPs and parameters) and the probe script (profiling/ort_probe.py, copied as
``probe.py``), which needs only numpy and onnxruntime. On the device ``python probe.py DIR``
writes one results file. `read_results` checks it against the pack it came from (format
version, the file's own checksum, the pack's sha256 recomputed from its files, the component
list, every sample) and `import_results` stores it like any other profile, in one transaction,
with its provenance in each row's ``provenance``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from db import repository
from db.records import DeviceRecord, ExitInput
from db.session import session_scope
from profiling import ort_probe
from profiling.errors import ProfilingError
from profiling.fewshot_profile import (
    FewShot,
    FewShotResult,
    find_model_id,
    load_references,
    read_plan,
    store_predictions,
)
from profiling.protocol import DEFAULT_THRESHOLD, ProtocolResult, ProtocolSettings, assess
from profiling.verdict import UnstableProfileError, Verdict, judge, row_quality

if TYPE_CHECKING:
    from training.network import MessNetwork

RESULTS_FILE = "results.json"


@dataclass(frozen=True, kw_only=True)
class PackInfo:
    """A written pack: folder, sha256, component keys (requested ones first asked for)."""

    path: Path
    sha256: str
    components: tuple[str, ...]
    requested: tuple[str, ...] | None


def parse_component(key: str) -> tuple[str, str]:
    """``kind:name`` -> (kind, name); ProfilingError naming the form otherwise."""
    kind, sep, name = key.partition(":")
    if not sep or not kind or not name:
        raise ProfilingError(f"component {key!r} is not of the form KIND:NAME "
                             "(e.g. segment:layer2.1, head:layer2.1/nocrm-b0-fcn)")
    return kind, name


def model_rows(network: MessNetwork, input_size: tuple[int, int]) -> tuple[dict[str, Any],
                                                                           list[dict[str, Any]]]:
    """The model's store row (name excluded) and its exit rows (`profiling.run.exit_inputs`,
    without the input shape), as JSON-ready dicts for the pack's manifest."""
    from profiling.run import exit_inputs
    from training.checkpoint import describe_network, weights_sha256
    from training.flops import network_components

    costs = {(c.kind, c.name): c for c in network_components(network, input_size)}
    model = {"arch": network.arch, "architecture": describe_network(network),
             "weights_sha256": weights_sha256(network), "num_classes": int(network.num_classes)}
    exits = [{k: v for k, v in dataclasses.asdict(e).items() if k != "input_shape"}
             for e in exit_inputs(network, costs, input_size)]
    return model, exits


def write_pack(network: MessNetwork, out: str | Path, *, model_name: str,
               input_size: tuple[int, int], batch: int = 1,
               components: Sequence[str] | None = None) -> PackInfo:
    """Export a probe pack into the new folder ``out`` (built beside it, then moved: all or
    nothing).

    Args:
        network: the MessNetwork whose components the device will time.
        out: folder to create (must not exist; its parent must).
        model_name: the model's name in the store.
        input_size: (H, W) of the profiled input; batch ``batch``.
        components: ``kind:name`` keys to time (default: every component); the producers of
            their inputs are added, since the probe feeds each graph real activations.

    Raises:
        ProfilingError: an existing ``out``, a missing parent, an unknown component, or an
            export failure.
    """
    from training.errors import TrainingError
    from training.onnx_components import component_key as key_of
    from training.onnx_components import export_components

    out = Path(out)
    if out.exists():
        raise ProfilingError(f"{out} already exists; choose another --out or remove it")
    if not out.parent.is_dir():
        raise ProfilingError(f"folder {out.parent} does not exist; create it first")
    keys = [parse_component(k) for k in components] if components is not None else None
    from training.flops import network_components

    model, exits = model_rows(network, input_size)
    costs = {(c.kind, c.name): c for c in network_components(network, input_size)}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / out.name
        staged.mkdir()
        try:
            graphs = export_components(network, staged, input_size=input_size, batch=batch,
                                       keys=keys)
        except TrainingError as exc:
            raise ProfilingError(str(exc)) from exc
        manifest = {
            "format": ort_probe.PACK_FORMAT, "version": ort_probe.PACK_VERSION,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": {"name": model_name, **model}, "exits": exits,
            "input_shape": [batch, 3, *input_size], "batch": batch, "dtype": "float32",
            "requested": [key_of(*k) for k in keys] if keys is not None else None,
            "components": [{**g.as_dict(),
                            "gflops": costs[(g.kind, g.name)].gflops
                            if (g.kind, g.name) in costs else 0.0,
                            "params": costs[(g.kind, g.name)].params
                            if (g.kind, g.name) in costs else 0} for g in graphs],
        }
        (staged / ort_probe.PACK_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.copyfile(ort_probe.__file__, staged / ort_probe.SCRIPT_FILE)
        sha = ort_probe.pack_sha256(staged)
        shutil.move(str(staged), str(out))
    requested = tuple(key_of(*k) for k in keys) if keys is not None else None
    return PackInfo(path=out, sha256=sha, components=tuple(g.key for g in graphs),
                    requested=requested)


@dataclass(frozen=True, kw_only=True)
class ProbeResults:
    """A checked results file and the manifest of the pack it was measured with."""

    path: Path
    sha256: str
    pack_sha256: str
    manifest: dict[str, Any] = field(repr=False)
    fingerprint: dict[str, Any]
    samples_ms: dict[str, tuple[float, ...]] = field(repr=False)
    provenance: dict[str, Any]


def _pack_error(exc: ort_probe.ProbeError) -> ProfilingError:
    return ProfilingError(str(exc))


def read_results(results: str | Path, pack: str | Path | None = None) -> ProbeResults:
    """Read and check a probe results file against its pack.

    Args:
        results: the file ``probe.py`` wrote.
        pack: the pack folder it ran (default: the folder holding ``results`` when that is a
            pack).

    Raises:
        ProfilingError: one line naming what is wrong: a missing, truncated or edited file, a
            newer format, results of another pack or model, components or samples that do not
            fit the pack.
    """
    path = Path(results)
    if not path.is_file():
        raise ProfilingError(f"{path} does not exist; give the results file probe.py wrote")
    if pack is None:
        if not (path.parent / ort_probe.PACK_FILE).is_file():
            raise ProfilingError(f"{path.parent} is not a probe pack; give --pack DIR, the folder "
                                 "the probe ran")
        pack = path.parent
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProfilingError(f"{path} is not a complete results file (truncated or damaged: "
                             f"{str(exc).splitlines()[0]}); run the probe again") from exc
    if not isinstance(data, dict) or data.get("format") != ort_probe.RESULTS_FORMAT:
        raise ProfilingError(f"{path} is not a probe results file; give the file probe.py wrote")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProfilingError(f"{path} has no valid format version; run the probe again")
    if version > ort_probe.RESULTS_VERSION:
        raise ProfilingError(f"{path} is results format {version}, newer than this mess-dse "
                             f"reads ({ort_probe.RESULTS_VERSION}); upgrade mess-dse")
    if data.get("checksum") != ort_probe.checksum(data):
        raise ProfilingError(f"{path} was edited or damaged after the probe wrote it (its "
                             "checksum does not match); run the probe again")
    try:
        manifest = ort_probe.read_pack(pack)
        pack_sha = ort_probe.pack_sha256(pack)
    except ort_probe.ProbeError as exc:
        raise _pack_error(exc) from exc
    if data.get("pack_sha256") != pack_sha:
        raise ProfilingError(
            f"{path} was measured with another pack ({str(data.get('pack_sha256'))[:12]}) than "
            f"{pack} ({pack_sha[:12]}, model {manifest['model']['name']}); give the pack it came "
            "from, or run this pack's probe")
    if data.get("weights_sha256") != manifest["model"]["weights_sha256"]:
        raise ProfilingError(f"{path} names other model weights than pack {pack}; run this "
                             "pack's probe")
    samples = _check_samples(path, data.get("samples_ms"), manifest)
    fingerprint = data.get("fingerprint")
    if not isinstance(fingerprint, dict) or fingerprint.get("runtime") != "onnxruntime":
        raise ProfilingError(f"{path} has no ONNX Runtime device fingerprint; run the probe again")
    results_sha = hashlib.sha256(raw).hexdigest()
    provenance = {
        "via": "probe", "pack_sha256": pack_sha, "results_sha256": results_sha,
        "results_version": version,
        **{k: data.get(k) for k in ("started_utc", "duration_s", "load_before", "load_after",
                                    "protocol", "python", "numpy")},
    }
    return ProbeResults(path=path, sha256=results_sha, pack_sha256=pack_sha,
                        manifest=manifest, fingerprint=fingerprint, samples_ms=samples,
                        provenance=provenance)


def _check_samples(path: Path, samples: Any, manifest: dict[str, Any]
                   ) -> dict[str, tuple[float, ...]]:
    """Every component of the pack, nothing else, each with finite non-negative samples."""
    if not isinstance(samples, dict):
        raise ProfilingError(f"{path} holds no samples; run the probe again")
    expected = [c["key"] for c in manifest["components"]]
    missing = [k for k in expected if k not in samples]
    extra = [k for k in samples if k not in set(expected)]
    if missing or extra:
        what = f"misses {missing[0]}" if missing else f"has {extra[0]}, which the pack lacks"
        raise ProfilingError(f"{path} does not fit its pack: it {what}; run the probe again")
    checked: dict[str, tuple[float, ...]] = {}
    for key in expected:
        values = samples[key]
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           and math.isfinite(v) and v >= 0 for v in values)):
            raise ProfilingError(f"{path}: the samples of {key} are not a list of finite "
                                 "times >= 0; run the probe again")
        checked[key] = tuple(float(v) for v in values)
    return checked


@dataclass(frozen=True, kw_only=True)
class ImportResult:
    """What an import stored: the device row, the model id, the components, warnings."""

    device: DeviceRecord
    model_id: int
    stored: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    verdict: Verdict | None = None
    few_shot: FewShotResult | None = None  # with references: the predicted rest


def few_shot_components(engine: Engine, network: MessNetwork, few_shot: FewShot, *,
                        model_name: str, input_size: tuple[int, int], batch: int = 1
                        ) -> tuple[list[str], tuple[str, ...]]:
    """The K components a few-shot pack times (`profiling.fewshot_profile.plan_components`),
    as ``kind:name`` keys, and warnings about the references. The probe runs ONNX Runtime, so
    the references must have been profiled with it unless ``few_shot.allow_cross_runtime``.

    Raises:
        ProfilingError: a reference that cannot serve (unknown, another runtime, no profile of
            this model at this input shape).
    """
    from training.checkpoint import weights_sha256
    from training.flops import network_components

    expected = {(c.kind, c.name) for c in network_components(network, input_size)}
    refs, chosen = read_plan(engine, few_shot, weights_sha256=weights_sha256(network),
                             model_name=model_name, input_shape=(batch, 3, *input_size),
                             batch=batch, dtype="float32", runtime="onnxruntime",
                             device_name=None, expected=expected)
    return [f"{kind}:{name}" for kind, name in chosen], refs.warnings


def judge_results(results: ProbeResults, *, threshold: float = DEFAULT_THRESHOLD
                  ) -> tuple[Verdict, ProtocolResult[str]]:
    """The latency profile's stability verdict on the probe's samples (`profiling.verdict`):
    each component's spread against the threshold, the whole network as the floor's reference.
    The probe times no cascade, so no closed-loop gap is judged (the quality says so)."""
    protocol = results.provenance.get("protocol") or {}
    rounds = max(1, int(protocol.get("rounds", 1)))
    settings = ProtocolSettings(warmup=int(protocol.get("warmup", 0)), repeat=rounds,
                                max_repeat=max(rounds, 10_000), threshold=threshold,
                                burst=max(1, int(protocol.get("burst", 1))))
    keys = [c["key"] for c in results.manifest["components"]]
    reference = [k for k in keys if k.startswith("segment:") or k in ("final:final",
                                                                       "upsample:final")]
    result = assess({k: results.samples_ms[k] for k in keys}, settings=settings, passes=(),
                    reference=reference)
    verdict = judge(result)
    verdict.quality.update(
        source="probe import", closed_loop_checked=False,
        load_before=results.provenance.get("load_before"),
        load_after=results.provenance.get("load_after"))
    return verdict, result


def import_results(engine: Engine, results: ProbeResults, *, device_name: str,
                   keep_noisy: bool = False, threshold: float = DEFAULT_THRESHOLD,
                   references: Sequence[str] = (), allow_cross_runtime: bool = False
                   ) -> ImportResult:
    """Store checked probe results under ``device_name``: model, exits, device, every
    component's samples with their spread, and the run's quality, in one transaction (a
    failure stores nothing). Judged like a latency profile (`judge_results`): unstable samples
    are refused unless ``keep_noisy`` (then stored marked noisy). The same model and device
    measured again replaces the rows, as a re-run of `dse profile` would. With ``references``
    (a few-shot pack's results), every component the pack did not time is predicted from
    their full profiles and stored marked predicted, in the same transaction
    (`profiling.fewshot_profile`).

    Raises:
        UnstableProfileError: unstable samples and not ``keep_noisy``; nothing stored.
        ProfilingError: a reference that cannot serve; nothing stored.
    """
    manifest = results.manifest
    model = manifest["model"]
    shape = tuple(int(v) for v in manifest["input_shape"])
    batch = int(manifest["batch"])
    dtype = str(manifest["dtype"])
    if not device_name or not device_name.strip():
        raise ProfilingError("--device must name the device the probe ran on")
    verdict, assessed = judge_results(results, threshold=threshold)
    if not verdict.ok and not keep_noisy:
        raise UnstableProfileError(
            f"{verdict.line(what='probe results')}; nothing stored: run the probe again with "
            "the device otherwise idle (or more --rounds), or pass --keep-noisy to store them "
            "marked noisy")
    few: FewShotResult | None = None
    with session_scope(engine) as s:
        refs = None if not references else load_references(
            s, references, model_id=find_model_id(s, model["weights_sha256"]),
            model_name=str(model["name"]), input_shape=shape, batch=batch, dtype=dtype,
            runtime="onnxruntime", device_name=device_name,
            allow_cross_runtime=allow_cross_runtime)
        record = repository.upsert_model(
            s, name=model["name"], arch=model["arch"], architecture=model["architecture"],
            weights_sha256=model["weights_sha256"], num_classes=int(model["num_classes"]))
        repository.upsert_exits(s, record.id, [ExitInput(**e, input_shape=shape)
                                               for e in manifest["exits"]])
        known = [d for d in repository.list_devices(s) if d.name == device_name]
        device = repository.upsert_device(s, name=device_name, fingerprint=results.fingerprint)
        for component in manifest["components"]:
            repository.upsert_latency(
                s, model_id=record.id, device_id=device.id, kind=component["kind"],
                name=component["name"], input_shape=shape, batch=batch, dtype=dtype,
                samples_ms=list(results.samples_ms[component["key"]]),
                gflops=float(component["gflops"]), params=int(component["params"]),
                noisy=not verdict.ok, quality=row_quality(assessed, component["key"]),
                provenance=results.provenance)
        repository.upsert_profile_quality(s, model_id=record.id, device_id=device.id,
                                          input_shape=shape, batch=batch, dtype=dtype,
                                          noisy=not verdict.ok, quality=verdict.quality)
        if refs is not None:
            few = store_predictions(s, refs, model_id=record.id, device_id=device.id,
                                    input_shape=shape, batch=batch, dtype=dtype)
    warnings = _fingerprint_warnings(device_name, device, known)
    if refs is not None:
        warnings.extend(refs.warnings)
    if not verdict.ok:
        warnings.append(f"{verdict.line(what='probe results')}; stored marked noisy "
                        "(--keep-noisy)")
    return ImportResult(device=device, model_id=record.id,
                        stored=tuple(c["key"] for c in manifest["components"]),
                        warnings=tuple(warnings), verdict=verdict, few_shot=few)


def _fingerprint_warnings(name: str, device: DeviceRecord, known: list[DeviceRecord]) -> list[str]:
    others = [d for d in known if d.fingerprint_sha256 != device.fingerprint_sha256]
    if not others:
        return []
    last = others[-1].fingerprint
    changed = sorted(k for k in set(device.fingerprint) | set(last)
                     if device.fingerprint.get(k) != last.get(k))
    return [f"device '{name}' was profiled before with another fingerprint (differs in: "
            f"{', '.join(changed)}); the two are kept apart"]
