"""Text helpers shared by the figure data and the page: escaping, numbers, provenance.

Everything that ends in the page or in a Plotly hover label goes through `esc` first. Plotly
renders labels as a small HTML subset and decodes entities for display, so `&lt;script&gt;`
shows as the literal text `<script>` and is never parsed as a tag.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from db.records import FINAL_EXIT, CandidateRecord, SearchRunRecord


def esc(value: object) -> str:
    """HTML-escape any value's text, quotes included."""
    return html.escape(str(value), quote=True)


def pct(miou: float) -> str:
    """mIoU in [0, 1] as a percentage with two decimals: `58.12 %`."""
    return f"{100.0 * miou:.2f} %"


def ms(value: float) -> str:
    """Milliseconds with a precision that suits the magnitude."""
    return f"{value:.3f} ms" if value < 1 else f"{value:.2f} ms"


def thresholds(cand: CandidateRecord) -> str:
    """`th_pix 0.90, 0.95 · th_img 0.80` (or `final exit only`)."""
    if not cand.th_pix:
        return "final exit only" if cand.exits == [FINAL_EXIT] else f"th_img {cand.th_img:.3g}"
    pix = ", ".join(f"{t:.3g}" for t in cand.th_pix)
    return f"th_pix {pix} · th_img {cand.th_img:.3g}"


def exit_chain(exits: Sequence[str]) -> str:
    """Escaped `a → b → final`."""
    return " → ".join(esc(e) for e in exits)


def fingerprint_short(fingerprint: Mapping[str, Any], limit: int = 5) -> str:
    """A few `key=value` pairs of a device fingerprint, for hover labels (escaped)."""
    items = [f"{esc(k)}={esc(v)}" for k, v in sorted(fingerprint.items())[:limit]]
    more = len(fingerprint) - limit
    if more > 0:
        items.append(f"+{more} more")
    return ", ".join(items) if items else "no fingerprint"


def provenance(run: SearchRunRecord) -> str:
    """Where a run's numbers come from, as one escaped line."""
    return (
        f"run {run.id} · model {esc(run.model_name)} (id {run.model_id}) · "
        f"accuracy profile {run.accuracy_profile_id} · latency on {esc(run.device_name)} "
        f"(device id {run.device_id}: {fingerprint_short(run.device_fingerprint)})"
    )


def baseline_value(run: SearchRunRecord, key: str) -> float | None:
    """A numeric baseline entry, or None when the run did not store it."""
    value = run.baseline.get(key)
    return float(value) if isinstance(value, (int, float)) else None
