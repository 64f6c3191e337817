"""What a device's latencies rest on: the profile's measured quality, read back from the store.

The search adds up stored component latencies; whether that sum can be trusted is data too
(`dse profile` stores it: spread, machine load, closed-loop gaps, rows kept although noisy, rows
predicted from other devices by a few-shot profile with their cross-validated error). This
module reads it for one (model, device, input shape) and puts it in one line, for `dse pareto`
(a warning), `dse verify` (a warning next to its comparison), the report (next to the front) and
`dse devices`. It is a plain function of the store, so it lives in `db` where both the search
core and the profilers can read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from db import repository as repo
from db.records import CLOSED_LOOP_TOLERANCE, ProfileQualityRecord

# status values, worst first
NOISY, PREDICTED, CLOSED_LOOP_FAILED = "noisy", "predicted", "closed-loop failed"
UNCHECKED, CHECKED = "unchecked", "checked"


@dataclass(frozen=True, kw_only=True)
class LatencyTrust:
    """The quality of one latency profile: a status, its figures, and a warning when due."""

    device: str
    status: str
    figures: str
    noisy_rows: int = 0
    failing_paths: tuple[tuple[str, float], ...] = ()
    predicted_rows: int = 0
    components: int = 0
    prediction: dict[str, Any] | None = None  # model, references, cv_error, cv_p90

    @property
    def warning(self) -> str | None:
        """One line for `dse pareto`, or None when the profile passed its checks (or predates
        them: `unchecked` is shown, not warned about). Predicted rows are said even when the
        measured ones are noisy: the user must know the front is partly a prediction."""
        if self.status == NOISY:
            noisy = (f"the latency profile of {self.device!r} was stored although noisy "
                     f"({self.noisy_rows} noisy row(s); {self.figures}); this front may be "
                     "wrong: re-profile on a quieter machine")
            predicted = self.prediction_line
            return noisy if predicted is None else f"{noisy}; also, {predicted}"
        if self.status == PREDICTED:
            return self.prediction_line
        if self.status == CLOSED_LOOP_FAILED:
            gaps = ", ".join(f"{p} {g:+.0%}" for p, g in self.failing_paths)
            return (f"on {self.device!r} the real cascade differs from the summed component "
                    f"latencies by more than {CLOSED_LOOP_TOLERANCE:.0%} ({gaps}); this front's "
                    "latencies are off by as much")
        return None

    @property
    def prediction_line(self) -> str | None:
        """What share of the latencies is predicted, by which model, with what expected error
        (None: every latency measured)."""
        if not self.predicted_rows:
            return None
        p = self.prediction or {}
        err = p.get("cv_error")
        expected = (f"expected error {err:.0%} median, {p.get('cv_p90', err):.0%} p90 "
                    f"(cross-validated on the {p.get('n_measured')} measured)"
                    if err is not None else "error unknown: too few measured to cross-validate")
        return (f"{self.predicted_rows} of {self.components} component latencies of "
                f"{self.device!r} are predicted by {p.get('model', '?')}, not measured; "
                f"{expected}; a full `dse profile` on the device replaces them")

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "figures": self.figures, "noisy_rows": self.noisy_rows,
                "failing_paths": [{"path": p, "deviation": g} for p, g in self.failing_paths],
                "predicted_rows": self.predicted_rows, "prediction": self.prediction}


def latency_trust(s: Session, *, model_id: int, device_id: int,
                  input_shape: Sequence[int]) -> LatencyTrust:
    """The trust status of the (model, device, input shape) latency profile."""
    device = repo.get_device(s, device_id).name
    shape = tuple(int(v) for v in input_shape)
    rows = repo.load_latency(s, model_id=model_id, device_id=device_id, input_shape=shape,
                             include_predicted=True)
    predicted = [r for r in rows if r.predicted]
    quality = [q for q in repo.list_profile_quality(s, model_id=model_id, device_id=device_id)
               if q.input_shape == shape]
    noisy = sum(r.noisy for r in rows)
    failing = tuple((r.name, float(r.deviation)) for r in rows
                    if r.kind == "path" and r.deviation is not None
                    and abs(r.deviation) > CLOSED_LOOP_TOLERANCE)
    figures = _figures(quality[-1]) if quality else "measured before quality checks existed"
    if noisy or any(q.noisy for q in quality):
        status = NOISY
    elif predicted:
        status = PREDICTED
    elif failing:
        status = CLOSED_LOOP_FAILED
    elif not quality:
        status = UNCHECKED
    else:
        status = CHECKED
    return LatencyTrust(device=device, status=status, figures=figures, noisy_rows=noisy,
                        failing_paths=failing, predicted_rows=len(predicted),
                        components=sum(r.kind != "path" for r in rows),
                        prediction=dict(predicted[0].quality or {}) if predicted else None)


def _figures(q: ProfileQualityRecord) -> str:
    return q.describe()
