"""A stored candidate as a runnable cascade: `dse export` and `dse verify` as library calls.

One resolver (`read_candidate` + `candidate_network` + `candidate_cascade`) takes a search run's
candidate from the store to the pruned `training.cascade.CascadeModule`, deciding with the exit
policy stored with the run's accuracy profile. Export, verify and the benchmarks use it; the
latency pass's closed loop builds its forced paths with the same builder and the same stored
policy, so all three run the cascade the profile measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy import Engine

from db import repository
from db.records import CalibrationSetRecord, CandidateRecord, ModelRecord, SearchRunRecord
from db.session import open_store, session_scope
from db.trust import LatencyTrust, latency_trust
from profiling.device import DTYPES, device_fingerprint, resolve_device
from profiling.errors import ProfilingError
from profiling.timing import TimingSettings
from profiling.verify import (
    LATENCY_TOLERANCE,
    Comparison,
    Measurement,
    Prediction,
    compare,
    measure_cascade,
)
from training.cascade import CascadeModule, build_cascade_module
from training.checkpoint import load_checkpoint, weights_sha256
from training.heads import FINAL_EXIT
from training.policy import ExitPolicy

if TYPE_CHECKING:
    from training.network import MessNetwork


@dataclass(frozen=True, kw_only=True)
class StoredCandidate:
    """A searched configuration as the store holds it, with what deploying it needs."""

    run: SearchRunRecord
    candidate: CandidateRecord
    model: ModelRecord
    calibration: CalibrationSetRecord
    policy: ExitPolicy

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.run.input_shape[-2]), int(self.run.input_shape[-1])

    def metadata(self) -> dict[str, Any]:
        """The configuration and its provenance, written beside an export."""
        cand, run, model = self.candidate, self.run, self.model
        return {
            "run": run.id, "candidate": cand.index, "model": model.name, "arch": model.arch,
            "weights_sha256": model.weights_sha256, "device": run.device_name,
            "mode": run.mode, "exits": list(cand.exits), "th_pix": list(cand.th_pix),
            "th_img": cand.th_img, "edge_correction": self.policy.edge_correction,
            "policy": self.policy.as_settings(),
            "predicted": {"miou": cand.miou, "latency_ms": cand.latency_ms,
                          "latency_p95_ms": cand.latency_p95_ms, "gflops": cand.gflops,
                          "exit_rates": dict(cand.exit_rates)},
        }


def read_candidate(engine: Engine, run_id: int, index: int) -> StoredCandidate:
    """Run, candidate, model, calibration set and exit policy of one stored candidate.

    Raises:
        StorageError: an unknown run or candidate (naming `dse pareto`).
    """
    with session_scope(engine, readonly=True) as s:
        run = repository.get_search_run(s, run_id)
        candidate = repository.get_candidate(s, run_id, index)
        model = repository.get_model(s, run.model_id)
        profile = repository.get_accuracy_profile(s, run.accuracy_profile_id)
        calibration = repository.get_calibration_set(s, profile.calibration_set_id)
    return StoredCandidate(run=run, candidate=candidate, model=model, calibration=calibration,
                           policy=ExitPolicy.from_settings(dict(profile.settings)))


def candidate_network(stored: StoredCandidate, checkpoint: Path | None, *,
                      arch_trust: str | None = None) -> MessNetwork:
    """Load the checkpoint the run was searched on, checking its weights.

    `arch_trust`: the traced `fx:` architecture the user allows the checkpoint to build (see
    `training.checkpoint.load_checkpoint`); registered architectures need none.

    Raises:
        ProfilingError: no checkpoint given, a missing file, or other weights.
    """
    model, run_id = stored.model, stored.run.id
    if checkpoint is None:
        # The model table keeps the weights hash, not a file path: the user names the file.
        raise ProfilingError(
            f"give --checkpoint PATH: the file of model '{model.name}' "
            f"(weights {model.weights_sha256[:12]}) that run {run_id} was searched on"
        )
    if not checkpoint.is_file():
        raise ProfilingError(f"checkpoint {checkpoint} does not exist; give the file `dse train` wrote")
    network, _meta = load_checkpoint(checkpoint, trust_arch=arch_trust)
    sha = weights_sha256(network)
    if sha != model.weights_sha256:
        raise ProfilingError(
            f"{checkpoint} holds weights {sha[:12]}, but run {run_id} was searched on model "
            f"'{model.name}' ({model.weights_sha256[:12]}); give that model's checkpoint"
        )
    return network


def candidate_cascade(network: MessNetwork, stored: StoredCandidate) -> CascadeModule:
    """The pruned cascade of a stored candidate, deciding with its profile's exit policy."""
    cand = stored.candidate
    return build_cascade_module(network.eval(), exits=cand.exits, th_pix=cand.th_pix,
                                th_img=cand.th_img, input_size=stored.input_size,
                                policy=stored.policy)


# ----------------------------------------------------------------------------- export


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    """Everything `dse export` asks for."""

    run: int
    candidate: int
    checkpoint: Path | None
    fmt: str
    out: Path | None
    compute: str = "cpu"  # where the module is built, scripted or traced
    arch_trust: str | None = None  # a traced fx: architecture the user allows the checkpoint


@dataclass(frozen=True, kw_only=True)
class ExportOutcome:
    files: tuple[Path, ...]
    exits: tuple[str, ...]


def run_export(db: str, request: ExportRequest) -> ExportOutcome:
    """Write a stored candidate as a deployable early-exit model (nothing half-written).

    Raises:
        ProfilingError, TrainingError: a bad format or output, a wrong checkpoint, a failed
            export. StorageError: the store or the run.
    """
    from training.export import FORMATS, export_cascade

    if request.fmt not in FORMATS:
        raise ProfilingError(f"unknown --format {request.fmt!r}; use one of {', '.join(FORMATS)}")
    if request.out is None:
        raise ProfilingError("give --out PATH: where to write the exported model")
    if request.out.exists():
        raise ProfilingError(f"{request.out} already exists; choose another --out or remove it")
    if request.fmt == "onnx":
        from training._onnx_export import check_onnx_available

        check_onnx_available()
    device = resolve_device(request.compute)
    stored = _read(db, request.run, request.candidate)
    network = candidate_network(stored, request.checkpoint, arch_trust=request.arch_trust)
    module = candidate_cascade(network, stored).to(device)
    example = torch.zeros(1, 3, *stored.input_size, device=device)
    written = export_cascade(module, fmt=request.fmt, out=request.out,
                             metadata=stored.metadata(), example=example)
    return ExportOutcome(files=tuple(written), exits=tuple(stored.candidate.exits))


# ----------------------------------------------------------------------------- verify


@dataclass(frozen=True, kw_only=True)
class VerifyRequest:
    """Everything `dse verify` asks for (data None: the run's calibration set)."""

    run: int
    candidate: int
    checkpoint: Path | None
    data: str | None = None
    data_root: Path | None = None
    split: str | None = None
    limit: int | None = None
    repeat: int = 5
    force: bool = False
    compute: str | None = None  # None: the run's device kind (its fingerprint's "compute")
    # None: the runtime the run's device was profiled with; given, it must be that one.
    runtime: str | None = None
    arch_trust: str | None = None  # a traced fx: architecture the user allows the checkpoint


# Images of the verified split the speed check times the final-exit-only network on.
SPEED_CHECK_IMAGES = 10


@dataclass(frozen=True, kw_only=True)
class SpeedCheck:
    """The final-exit-only network timed now against the run's prediction of it.

    That cascade has no early exit and no decision, so the additive model predicts it best (the
    profile's closed loop checks it); a gap there is this machine running at another speed than
    when it was profiled (other load, clock, a drifting VM), not the configuration. Dividing the
    verified latency by ``ratio`` takes that change out, and shows the configuration's own error.
    """

    predicted_ms: float
    measured_ms: float
    n_images: int

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.predicted_ms

    def adjusted_error(self, comparison: Comparison) -> float:
        """The verified latency error with this machine's change of speed taken out."""
        return (comparison.measured.latency_ms / self.ratio / comparison.predicted.latency_ms
                - 1.0)

    def to_dict(self, comparison: Comparison) -> dict[str, Any]:
        return {"predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
                "n_images": self.n_images, "ratio": self.ratio,
                "adjusted_latency_error": self.adjusted_error(comparison)}


@dataclass(frozen=True, kw_only=True)
class VerifyOutcome:
    comparison: Comparison
    warnings: tuple[str, ...]
    # the device's latencies were partly predicted (few-shot): the model, its expected error
    # and the gap this verification measured
    latency_prediction: dict[str, Any] | None = None
    # None when the candidate is the final-exit-only network itself or the run has no baseline
    speed_check: SpeedCheck | None = None


def run_verify(db: str, request: VerifyRequest, *,
               progress: Callable[[int, int], None] | None = None) -> VerifyOutcome:
    """Run a stored candidate's cascade on this machine, compare with its prediction, store it.

    Raises:
        ProfilingError: another machine than the run's (unless `force`), unreadable data, a
            wrong checkpoint. StorageError: the store or the run.
    """
    stored = _read(db, request.run, request.candidate)
    network = candidate_network(stored, request.checkpoint, arch_trust=request.arch_trust)
    target = DeployTarget.of(stored, runtime=request.runtime, compute=request.compute)
    warnings = _check_device(dict(stored.run.device_fingerprint), target.fingerprint(),
                             device_name=stored.run.device_name, force=request.force)
    dataset, same = _dataset(stored, request)
    module = target.module(network, stored)
    previous = torch.get_num_threads()
    torch.set_num_threads(target.threads)
    try:
        try:
            measured = _time_cascade(target, network, stored, module, dataset,
                                     repeat=request.repeat, progress=progress)
        finally:
            target.close(module)
        speed = _speed_check(target, network, stored, dataset, repeat=request.repeat)
    finally:
        torch.set_num_threads(previous)
    result = compare(Prediction.from_candidate(stored.candidate), measured, same_images=same)
    if speed is not None and abs(speed.ratio - 1.0) > LATENCY_TOLERANCE:
        warnings.append(
            f"the final-exit-only network measured {speed.measured_ms:.3f} ms here against "
            f"{speed.predicted_ms:.3f} ms predicted from the profile ({speed.ratio - 1:+.1%}): "
            "this machine runs at another speed than when it was profiled, and the latency "
            f"comparison carries that change; without it the error is "
            f"{speed.adjusted_error(result):+.1%}. Re-profile (`dse profile`) when the machine "
            "is quiet before trusting absolute latencies")
    if measured.latency_unstable:
        warnings.append(
            f"this verification's own timings were unstable on {measured.latency_unstable} of "
            f"{measured.n_images} image(s) (largest spread {measured.latency_max_spread:.0%}, "
            f"other processes used {measured.load.get('other_cores', 0.0):.2f} core(s)); its "
            "latency comparison is as uncertain")
    engine = open_store(db)
    try:
        with session_scope(engine) as s:
            trust = latency_trust(s, model_id=stored.run.model_id,
                                  device_id=stored.run.device_id,
                                  input_shape=stored.run.input_shape)
            if trust.warning is not None:  # what the prediction rests on
                warnings.append(trust.warning)
            gap = predicted_gap(trust, result)
            if gap is not None:
                warnings.append(gap[1])
            repository.add_verification(
                s, run_id=stored.run.id, candidate_index=stored.candidate.index,
                device_id=stored.run.device_id, dataset=result.measured.dataset,
                split=result.measured.split, predicted=result.predicted.to_dict(),
                measured={**result.measured.to_dict(), "same_images": result.same_images,
                          "miou_ok": result.miou_ok, "exits_ok": result.exits_ok,
                          "latency_ok": result.latency_ok,
                          **({} if gap is None else {"latency_prediction": gap[0]}),
                          **({} if speed is None
                             else {"speed_check": speed.to_dict(result)})},
            )
    finally:
        engine.dispose()
    return VerifyOutcome(comparison=result, warnings=tuple(warnings),
                         latency_prediction=None if gap is None else gap[0], speed_check=speed)


def _speed_check(target: DeployTarget, network: MessNetwork, stored: StoredCandidate,
                 dataset: Any, *, repeat: int) -> SpeedCheck | None:
    """Time the final-exit-only network on the first images of ``dataset`` as verify times the
    candidate (same runtime, threads, protocol) and set it against the run's baseline."""
    predicted = float(stored.run.baseline.get("latency_ms") or 0.0)
    if predicted <= 0 or list(stored.candidate.exits) == [FINAL_EXIT]:
        return None
    baseline = replace(stored, candidate=replace(
        stored.candidate, exits=[FINAL_EXIT], th_pix=[], exit_rates={FINAL_EXIT: 1.0},
        latency_ms=predicted))
    images = [dataset[i] for i in range(min(SPEED_CHECK_IMAGES, len(dataset)))]
    module = target.module(network, baseline)
    try:
        measured = _time_cascade(target, network, stored, module, dataset, repeat=repeat,
                                 images=images)
    finally:
        target.close(module)
    return SpeedCheck(predicted_ms=predicted, measured_ms=measured.latency_ms,
                      n_images=measured.n_images)


def _time_cascade(target: DeployTarget, network: MessNetwork, stored: StoredCandidate,
                  module: Any, dataset: Any, *, repeat: int, images: Any = None,
                  progress: Callable[[int, int], None] | None = None) -> Measurement:
    """How verify runs and times a cascade: ``images`` (default: all of ``dataset``) one by
    one under the run's device settings, named after ``dataset``'s split."""
    return measure_cascade(
        module, dataset if images is None else images, exit_ids=module.exit_ids,
        num_classes=int(network.num_classes), device=target.device, dtype=target.dtype,
        dataset_name=dataset.name, split=dataset.split, device_name=stored.run.device_name,
        timing=TimingSettings(warmup=0, repeat=repeat), progress=progress,
    )


def predicted_gap(trust: LatencyTrust, result: Comparison) -> tuple[dict[str, Any], str] | None:
    """On a device whose latencies are partly predicted (few-shot), the measured gap set
    against the error the prediction expected (its leave-one-out estimate), as data and a line.
    """
    if not trust.predicted_rows or trust.prediction is None:
        return None
    p = trust.prediction
    data = {"model": p.get("model"), "cv_error": p.get("cv_error"), "cv_p90": p.get("cv_p90"),
            "n_measured": p.get("n_measured"), "predicted_rows": trust.predicted_rows,
            "components": trust.components, "latency_error": result.latency_error}
    expected = ("no expected error (one measured component)" if p.get("cv_error") is None
                else f"expected {p['cv_error']:.1%} median, {p['cv_p90']:.1%} p90 per component")
    line = (f"few-shot prediction ({trust.predicted_rows} of {trust.components} component "
            f"latencies by {p.get('model')}): this configuration measured "
            f"{result.measured.latency_ms:.3f} ms against {result.predicted.latency_ms:.3f} ms "
            f"predicted, a gap of {result.latency_error:+.1%} ({expected})")
    return data, line


@dataclass(frozen=True, kw_only=True)
class DeployTarget:
    """How a run's device runs a deployed cascade: the runtime its profile was measured with,
    its threads, and (torch) the device and dtype or (onnxruntime) the session settings."""

    runtime: str
    threads: int
    device: torch.device
    dtype: torch.dtype
    ort: Any = None  # profiling.ort_probe.RuntimeSettings for onnxruntime

    @classmethod
    def of(cls, stored: StoredCandidate, *, runtime: str | None = None,
           compute: str | None = None) -> DeployTarget:
        """The run's device's settings, read from its fingerprint.

        Raises:
            ProfilingError: another runtime asked for than the profile's, onnxruntime missing.
        """
        fingerprint = dict(stored.run.device_fingerprint)
        threads = int(fingerprint.get("threads") or 1)
        if _runtime(stored, runtime) == "onnxruntime":
            from profiling.onnxruntime_backend import runtime_settings

            settings = runtime_settings(
                threads=threads, optimization=str(fingerprint.get("graph_optimization", "all")),
                provider=str(fingerprint.get("provider", "CPUExecutionProvider")),
                # profiles from before the setting ran with ONNX Runtime's default (spinning)
                spinning=bool(fingerprint.get("intra_op_spinning", threads > 1)))
            return cls(runtime="onnxruntime", threads=threads, device=torch.device("cpu"),
                       dtype=torch.float32, ort=settings)
        device = resolve_device(compute or str(fingerprint.get("compute", "cpu")))
        dtype = DTYPES.get(str(fingerprint.get("dtype", "float32")), torch.float32)
        return cls(runtime="torch", threads=threads, device=device, dtype=dtype)

    def fingerprint(self) -> dict[str, Any]:
        """This machine's fingerprint under these settings (to compare with the run's)."""
        if self.runtime == "onnxruntime":
            from profiling.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(self.ort).fingerprint()
        return device_fingerprint(self.device, dtype=self.dtype, threads=self.threads)

    def module(self, network: MessNetwork, stored: StoredCandidate) -> Any:
        """The candidate's cascade as this runtime runs it: the torch module, or what `dse export
        --format onnx` writes run by its own numpy runner (`close` it when done)."""
        module = candidate_cascade(network, stored)
        if self.runtime == "onnxruntime":
            from profiling.onnxruntime_backend import OrtCascade

            return OrtCascade(module, torch.zeros(1, 3, *stored.input_size), self.ort)
        return module.to(device=self.device, dtype=self.dtype)

    def close(self, module: Any) -> None:
        if self.runtime == "onnxruntime":
            module.close()


def _runtime(stored: StoredCandidate, asked: str | None) -> str:
    """The runtime to verify with: the one the run's device was profiled with.

    Raises:
        ProfilingError: another runtime asked for (its timings would not be comparable).
    """
    profiled = str(stored.run.device_fingerprint.get("runtime", "torch"))
    if asked is not None and asked != profiled:
        raise ProfilingError(
            f"run {stored.run.id} was searched on device '{stored.run.device_name}', profiled "
            f"with {profiled}; verify it with --runtime {profiled}, or profile and search a "
            f"{asked} device first")
    return profiled


def _read(db: str, run_id: int, index: int) -> StoredCandidate:
    engine = open_store(db)
    try:
        return read_candidate(engine, run_id, index)
    finally:
        engine.dispose()


def _check_device(fingerprint: dict[str, Any], here: dict[str, Any], *, device_name: str,
                  force: bool) -> list[str]:
    """Refuse to compare latencies measured on another machine (unless forced)."""
    differs = sorted(k for k in set(fingerprint) | set(here)
                     if fingerprint.get(k) != here.get(k))
    if differs and not force:
        raise ProfilingError(
            f"this machine is not device '{device_name}' of the run (differs in: "
            f"{', '.join(differs)}); run `dse profile --device NAME` here and search again, "
            "or pass --force"
        )
    if differs:
        return [f"--force: this machine differs from '{device_name}' in {', '.join(differs)}; "
                "the latency comparison is meaningless"]
    return []


def _dataset(stored: StoredCandidate, request: VerifyRequest) -> tuple[Any, bool]:
    """The split to run and whether it is exactly the calibration set of the prediction."""
    from training.data import build_dataset
    from training.errors import TrainingError

    calib = stored.calibration
    name = request.data or calib.dataset
    split = request.split or (calib.split if name == calib.dataset else "val")
    same_source = name == calib.dataset and split == calib.split
    limit = request.limit
    size = limit if limit is not None else (calib.num_samples if same_source else None)
    root = str(request.data_root) if request.data_root is not None else None
    try:
        dataset = build_dataset(name, root=root, split=split, input_size=stored.input_size,
                                size=size)
    except (ValueError, TrainingError) as exc:
        raise ProfilingError(f"cannot read --data {name} --split {split}: {exc}") from exc
    same = same_source and list(dataset.sample_ids) == list(calib.sample_ids)
    if same_source and not same and limit is None:
        raise ProfilingError(
            f"{name}/{split} here does not hold the {calib.num_samples} calibration images the "
            "run was profiled on; check --data-root"
        )
    return dataset, same
