"""Time a probe pack's ONNX components with ONNX Runtime: numpy and onnxruntime only.

This file is copied verbatim into every pack as ``probe.py`` (``dse probe-pack``), so it must
run on a device that has neither torch nor mess-dse: it imports only the standard library,
numpy and (lazily) onnxruntime, and keeps to Python 3.8 syntax at run time. mess-dse imports
the same file for its in-process ONNX Runtime backend (sessions, inputs, fingerprint, pack and
results hashing have one home here); only the timing loop is this file's own minimal copy.

On the device::

    python probe.py PACK_DIR [--out RESULTS.json] [--threads N] [--optimization all]
                    [--provider CPUExecutionProvider] [--warmup 3] [--rounds 20] [--min-time 0]

It writes one JSON results file (default ``PACK_DIR/results.json``): per component the raw
per-run samples in milliseconds, the device fingerprint (hardware, onnxruntime version,
execution provider, graph optimisation level, threads), the load average before and after, the
sha256 of the pack it ran (which ties the results to the model's weights) and a checksum of the
file's own content. Back on the workstation: ``dse profile --import RESULTS --device NAME``.

Protocol: warm-up rounds, then rounds in which every component runs in the order a cascade
meets them, each fed the real output of its producer (the first segment a seeded random image),
so a burst of load hits every component alike. Within a round a component runs ``--burst`` times
in a row (default 2) and the last run is timed: with every candidate head in a round, a single
run would start with caches the other components emptied, colder than any cascade runs it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACK_FORMAT = "mess-dse-probe-pack"
RESULTS_FORMAT = "mess-dse-probe-results"
PACK_VERSION = 1
RESULTS_VERSION = 1
PACK_FILE = "pack.json"
SCRIPT_FILE = "probe.py"
IMAGE = "image"
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
DEFAULT_PROVIDER = "CPUExecutionProvider"


class ProbeError(Exception):
    """A user-facing problem: printed as one ``error:`` line, exit code 2."""


# ----------------------------------------------------------------------------- machine facts
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            # x86: "model name"; ARM boards (Jetson) often only say "Hardware" or "CPU part".
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def power_mode() -> str | None:
    """Jetson power mode (nvpmodel) when readable; None elsewhere."""
    status = Path("/var/lib/nvpmodel/status")
    if status.exists():
        return status.read_text(errors="replace").strip() or None
    return None


def keep_heap_allocations() -> bool:
    """The probe's copy of mess-dse's allocator rule (profiling.timing): keep freed large blocks
    in glibc's heap so every run measures the warm case. True when applied (Linux, glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (malloc.h)
    return bool(mallopt(-3, 1 << 30)) and bool(mallopt(-1, 1 << 30))


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ----------------------------------------------------------------------------- runtime
@dataclass(frozen=True)
class RuntimeSettings:
    """How ONNX Runtime runs: intra-op threads, graph optimisation level, execution provider,
    and whether idle intra-op threads spin.

    Every field is part of the device fingerprint: timings under other settings never mix.
    `spinning` is off by default: a MESS cascade is several sessions in one process (stages,
    heads, decisions), and with spinning on, the pool of the session that just ran keeps its
    threads busy-waiting while the next session runs, so on a 2-core CPU two threads were slower
    than one (the cascade 89 ms vs 33 ms; README, "Torch eager vs ONNX Runtime"). With one
    thread there is no pool, so it changes nothing and is left out of the fingerprint.
    """

    threads: int = 1
    optimization: str = "all"
    provider: str = DEFAULT_PROVIDER
    spinning: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ProbeError(f"threads must be an integer >= 1, got {self.threads!r}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ProbeError(f"unknown graph optimisation level {self.optimization!r}; use one "
                             f"of {', '.join(OPTIMIZATION_LEVELS)}")
        if not self.provider:
            raise ProbeError("provider must be an execution provider name")


def import_onnxruntime():
    """The onnxruntime module, or ProbeError naming the install command."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ProbeError("onnxruntime is not installed here; pip install onnxruntime "
                         "(and numpy), then run the probe again") from exc
    return onnxruntime


def session_factory(settings: RuntimeSettings):
    """``path -> run(feeds) -> outputs`` with the settings' threads, optimisation, provider.

    Raises:
        ProbeError: onnxruntime missing or the provider not available on this machine.
    """
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if settings.provider not in available:
        raise ProbeError(f"execution provider {settings.provider} is not available here "
                         f"(available: {', '.join(available)}); choose one with --provider")
    level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
             "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
             "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[settings.optimization]

    def make(path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = level
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if settings.spinning else "0")
        session = ort.InferenceSession(str(path), options, providers=[settings.provider])
        return lambda feeds: session.run(None, feeds)

    return make


def fingerprint(settings: RuntimeSettings) -> dict:
    """What makes ONNX Runtime timings on this machine comparable: hardware, runtime, settings.

    Only stable facts (no hostname, no load), so re-profiling maps to the same device row. The
    ``runtime`` key keeps these apart from torch fingerprints (profiling.device), which lack it.
    """
    ort = import_onnxruntime()
    facts = {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "runtime": "onnxruntime",
        "onnxruntime": ort.__version__,
        "provider": settings.provider,
        "graph_optimization": settings.optimization,
        "threads": settings.threads,
        "inter_op_threads": 1,
        **({"intra_op_spinning": settings.spinning} if settings.threads > 1 else {}),
        "dtype": "float32",
        "allocator": "heap-kept" if keep_heap_allocations() else "default",
    }
    mode = power_mode()
    if mode is not None:
        facts["power_mode"] = mode
    return facts


# ----------------------------------------------------------------------------- the pack
def read_pack(folder) -> dict:
    """The pack's manifest, checked for format and the files it names.

    Raises:
        ProbeError: not a pack, a pack of a newer format, or files missing.
    """
    folder = Path(folder)
    path = folder / PACK_FILE
    if not path.is_file():
        raise ProbeError(f"{folder} is not a probe pack (no {PACK_FILE}); make one with "
                         "`dse probe-pack --checkpoint CKPT --out DIR`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProbeError(f"{path} is damaged ({exc}); make the pack again") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
        raise ProbeError(f"{path} is not a probe pack manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > PACK_VERSION:
        raise ProbeError(f"{path} is of pack format {version}, newer than this probe reads "
                         f"({PACK_VERSION}); make the pack with this mess-dse version")
    components = manifest.get("components")
    if not isinstance(components, list) or not components:
        raise ProbeError(f"{path} lists no components; make the pack again")
    missing = [c["file"] for c in components if not (folder / c["file"]).is_file()]
    if missing:
        raise ProbeError(f"{folder} misses {len(missing)} graph file(s) (e.g. {missing[0]}); "
                         "copy the whole pack folder")
    return manifest


def pack_sha256(folder) -> str:
    """sha256 over the manifest, the probe script and every graph the manifest names.

    The manifest holds the model's weights sha256, so this hash ties results to the weights.
    """
    folder = Path(folder)
    manifest = read_pack(folder)
    digest = hashlib.sha256()
    names = [PACK_FILE, SCRIPT_FILE] + [c["file"] for c in manifest["components"]]
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ProbeError(f"{folder} misses {name}; copy the whole pack folder")
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            block = handle.read(1 << 20)
            while block:
                file_digest.update(block)
                block = handle.read(1 << 20)
        digest.update(name.encode() + b"\0" + file_digest.hexdigest().encode() + b"\n")
    return digest.hexdigest()


def component_runs(folder, manifest: dict, make_session, *, seed: int = 0, image=None) -> list:
    """``[(key, session, feeds)]`` in the manifest's (cascade) order: each graph's runner and its
    real inputs. The first segment reads ``image`` (default: a seeded standard-normal array of
    its input shape); every other input is its producer's output, computed here once."""
    folder = Path(folder)
    values = {}
    if image is not None:
        values[IMAGE] = np.ascontiguousarray(image, dtype=np.float32)
    runs = []
    for component in manifest["components"]:
        session = make_session(folder / component["file"])
        feeds = {}
        for spec in component["inputs"]:
            source, shape = spec["source"], tuple(spec["shape"])
            if source == IMAGE and IMAGE not in values:
                rng = np.random.default_rng(seed)
                values[IMAGE] = rng.standard_normal(shape, dtype=np.float32)
            if source not in values:
                raise ProbeError(f"{component['key']} reads {source}, which the pack does not "
                                 "compute before it; make the pack again")
            if tuple(values[source].shape) != shape:
                raise ProbeError(f"{component['key']} expects {shape} from {source}, got "
                                 f"{tuple(values[source].shape)}; make the pack again")
            feeds[spec["name"]] = values[source]
        values[component["key"]] = session(feeds)[0]
        runs.append((component["key"], session, feeds))
    return runs


# ----------------------------------------------------------------------------- timing
def time_rounds(runs: list, *, warmup: int = 3, rounds: int = 20, min_time_s: float = 0.0,
                max_rounds: int = 10000, burst: int = 2) -> dict:
    """The probe's own timing loop over ``[(key, run)]``: ``warmup`` untimed rounds, then rounds
    (every component in order, each ``burst`` times in a row, the last run timed: warm caches,
    as mess-dse's own protocol) until ``rounds`` and ``min_time_s`` are both reached (at most
    ``max_rounds``). Returns {key: [ms per run]}."""
    if warmup < 0 or rounds < 1 or burst < 1 or not (min_time_s >= 0
                                                     and math.isfinite(min_time_s)):
        raise ProbeError("warmup must be >= 0, rounds and burst >= 1 and min-time a number >= 0")
    samples: dict = {key: [] for key, _ in runs}
    for _ in range(warmup):
        for _, run in runs:
            run()
    spent, done = 0.0, 0
    while done < rounds or (spent < min_time_s and done < max_rounds):
        for key, run in runs:
            for _ in range(burst - 1):
                run()
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            samples[key].append(elapsed * 1e3)
            spent += elapsed
        done += 1
    return samples


# ----------------------------------------------------------------------------- results
def checksum(results: dict) -> str:
    """sha256 of the canonical JSON of everything but the checksum itself."""
    body = {k: v for k, v in results.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def measure(folder, settings: RuntimeSettings, *, warmup: int = 3, rounds: int = 20,
            min_time_s: float = 0.0, burst: int = 2) -> dict:
    """Time every component of the pack in ``folder``; the results object, checksum included."""
    manifest = read_pack(folder)
    make_session = session_factory(settings)
    facts = fingerprint(settings)
    digest = pack_sha256(folder)
    started = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - Python 3.8
    load_before = load_average()
    clock = time.perf_counter()
    runs = [(key, lambda s=session, f=feeds: s(f))
            for key, session, feeds in component_runs(folder, manifest, make_session)]
    samples = time_rounds(runs, warmup=warmup, rounds=rounds, min_time_s=min_time_s, burst=burst)
    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "pack_sha256": digest,
        "weights_sha256": manifest["model"]["weights_sha256"],
        "input_shape": manifest["input_shape"],
        "fingerprint": facts,
        "protocol": {"warmup": warmup, "rounds": rounds, "min_time_s": min_time_s,
                     "burst": burst, "order": "cascade, interleaved rounds"},
        "started_utc": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - clock, 3),
        "load_before": load_before,
        "load_after": load_average(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "samples_ms": samples,
    }
    results["checksum"] = checksum(results)
    return results


def write_results(results: dict, out) -> Path:
    """Write atomically (temporary name, then rename): a crash never leaves half a file."""
    out = Path(out)
    if not out.parent.is_dir():
        raise ProbeError(f"folder {out.parent} does not exist; create it or choose another --out")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(results, sort_keys=True, indent=1) + "\n")
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("pack", help="the pack folder (dse probe-pack --out)")
    parser.add_argument("--out", help="results file (default: PACK/results.json)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--optimization", default="all", choices=OPTIMIZATION_LEVELS)
    parser.add_argument("--provider", default=DEFAULT_PROVIDER)
    parser.add_argument("--spinning", action="store_true",
                        help="let idle intra-op threads spin (ONNX Runtime's own default; off "
                             "here because a cascade is several sessions)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds")
    parser.add_argument("--min-time", type=float, default=0.0, help="at least this many seconds")
    parser.add_argument("--burst", type=int, default=2,
                        help="runs of a component in a row per round, the last timed (default 2)")
    args = parser.parse_args(argv)
    try:
        settings = RuntimeSettings(threads=args.threads, optimization=args.optimization,
                                   provider=args.provider, spinning=args.spinning)
        out = Path(args.out) if args.out else Path(args.pack) / "results.json"
        if not out.parent.is_dir():
            raise ProbeError(f"folder {out.parent} does not exist; create it or choose --out")
        results = measure(args.pack, settings, warmup=args.warmup, rounds=args.rounds,
                          min_time_s=args.min_time, burst=args.burst)
        write_results(results, out)
    except ProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(sorted(v)[len(v) // 2] for v in results["samples_ms"].values())
    print(f"timed {len(results['samples_ms'])} components in {results['duration_s']:.1f} s "
          f"(sum of medians {total:.2f} ms); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
