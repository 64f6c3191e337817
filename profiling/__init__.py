"""Profilers: the accuracy pass (device-independent) and the latency pass (per device).

Names are re-exported lazily, so `import profiling.errors` (what the CLI does to map errors)
stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AccuracyResult": "profiling.accuracy",
    "AccuracySettings": "profiling.accuracy",
    "profile_accuracy": "profiling.accuracy",
    "InSequence": "profiling.backends",
    "TimingBackend": "profiling.backends",
    "TimingProtocol": "profiling.backends",
    "TorchEager": "profiling.backends",
    "Workload": "profiling.backends",
    "PathCheck": "profiling.closed_loop",
    "ExportRequest": "profiling.deploy",
    "StoredCandidate": "profiling.deploy",
    "VerifyRequest": "profiling.deploy",
    "candidate_cascade": "profiling.deploy",
    "candidate_network": "profiling.deploy",
    "read_candidate": "profiling.deploy",
    "run_export": "profiling.deploy",
    "run_verify": "profiling.deploy",
    "class_counts": "profiling.counts",
    "miou_from_counts": "db.counts",
    "device_fingerprint": "profiling.device",
    "resolve_device": "profiling.device",
    "resolve_dtype": "profiling.device",
    "ProfilingError": "profiling.errors",
    "confidence_edges": "profiling.histogram",
    "confidence_histograms": "profiling.histogram",
    "share_at_least": "profiling.histogram",
    "LatencyResult": "profiling.latency",
    "LatencySettings": "profiling.latency",
    "profile_latency": "profiling.latency",
    "ProfileOutcome": "profiling.run",
    "ProfileRequest": "profiling.run",
    "register_model": "profiling.run",
    "run_profile": "profiling.run",
    "LatencyStats": "profiling.timing",
    "TimingSettings": "profiling.timing",
    "time_callable": "profiling.timing",
    "OnnxRuntimeBackend": "profiling.onnxruntime_backend",
    "import_results": "profiling.probe_pack",
    "read_results": "profiling.probe_pack",
    "write_pack": "profiling.probe_pack",
    "DeployTarget": "profiling.deploy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'profiling' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
