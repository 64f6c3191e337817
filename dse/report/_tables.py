"""HTML tables of a report; every cell's text is escaped, numbers sort by `data-sort`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from db.records import FINAL_EXIT, CandidateRecord, SearchRunRecord, VerificationRecord
from dse.constraints import describe
from dse.report._cross import CrossDeviceData
from dse.report._data import chosen_candidate, front_one
from dse.report._format import baseline_value, esc, exit_chain, ms, pct, thresholds
from dse.report._model import RunData
from dse.report._summary import SummaryRow

Cell = tuple[str, str]  # (escaped html, sort key)
NA = ("—", "")


def _num(value: float | None, text: str) -> Cell:
    return (text, f"{value:.9g}") if value is not None else NA


def _table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], *, css: str = "",
           sortable: bool = True) -> str:
    cls = " ".join(filter(None, ["sortable" if sortable else "", css]))
    head = "".join(f"<th scope=\"col\">{esc(h)}</th>" for h in headers)
    body = "\n".join(
        "<tr>" + "".join(f"<td data-sort=\"{esc(key)}\">{text}</td>" for text, key in row)
        + "</tr>"
        for row in rows
    )
    return (f"<table class=\"{cls}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>\n{body}\n</tbody></table>")


def summary_table(rows: Sequence[SummaryRow]) -> str:
    """The paper-style rows (not sortable: their order is the point)."""
    out = []
    for r in rows:
        out.append([
            (esc(r.label), r.label),
            _num(r.candidate, str(r.candidate)) if r.candidate is not None else NA,
            _num(r.miou, pct(r.miou)) if r.miou is not None else ("no candidate meets this", ""),
            _num(r.delta_pp, f"{r.delta_pp:+.2f} pp") if r.delta_pp is not None else NA,
            _num(r.latency_ms, ms(r.latency_ms)) if r.latency_ms is not None else NA,
            _num(r.latency_p95_ms, ms(r.latency_p95_ms)) if r.latency_p95_ms is not None else NA,
            _num(r.gflops, f"{r.gflops:.3f}") if r.gflops is not None else NA,
            _num(r.speedup, f"{r.speedup:.2f}×") if r.speedup is not None else NA,
            (exit_chain(r.exits), " ".join(r.exits)) if r.exits else NA,
        ])
    return _table(["use case", "candidate", "mIoU", "Δ mIoU", "latency mean", "latency p95",
                   "GFLOPs", "speed-up", "exits"], out, css="summary", sortable=False)


def front_table(run: SearchRunRecord, candidates: Sequence[CandidateRecord]) -> str:
    """Front 1 of a run, sortable by any column."""
    base_miou = baseline_value(run, "miou")
    base_ms = baseline_value(run, "latency_ms")
    rows = []
    chosen = chosen_candidate(run)
    for c in front_one(candidates):
        delta = 100.0 * (c.miou - base_miou) if base_miou is not None else None
        speed = base_ms / c.latency_ms if base_ms and c.latency_ms > 0 else None
        final_share = c.exit_rates.get(FINAL_EXIT)
        rows.append([
            (f"{c.index} (chosen)" if c.index == chosen else str(c.index), str(c.index)),
            (str(len(c.exits) - 1), str(len(c.exits) - 1)),
            (exit_chain(c.exits), " ".join(c.exits)),
            (esc(thresholds(c)), thresholds(c)),
            _num(c.miou, pct(c.miou)),
            _num(delta, f"{delta:+.2f} pp") if delta is not None else NA,
            _num(c.latency_ms, ms(c.latency_ms)),
            _num(c.latency_p95_ms, ms(c.latency_p95_ms)),
            _num(c.gflops, f"{c.gflops:.3f}"),
            _num(speed, f"{speed:.2f}×") if speed is not None else NA,
            _num(final_share, f"{100 * final_share:.1f} %") if final_share is not None else NA,
            _interval_cell(c.intervals, "miou"), _interval_cell(c.intervals, "latency_ms"),
        ])
    if not rows:
        return "<p class=\"note\">No feasible candidate on front 1 in this run.</p>"
    return _table(["candidate", "early exits", "exits", "thresholds", "mIoU", "Δ mIoU",
                   "latency mean", "latency p95", "GFLOPs", "speed-up", "at final",
                   "mIoU interval", "latency interval"], rows, css="front")


def _interval_cell(iv: dict[str, Any] | None, key: str) -> Cell:
    """A stored bootstrap interval as text (`dse pareto` stores them for front 1)."""
    if not iv or key not in iv:
        return NA
    lo, hi = iv[key]
    text = f"{pct(lo)}–{pct(hi)}" if key == "miou" else f"{ms(lo)}–{ms(hi)}"
    return (f"{text} ({100 * float(iv['level']):g} %)", f"{lo:.9g}")


def _fmt_value(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key == "miou":
        return pct(value)
    if key.endswith("_ms"):
        return ms(value)
    if key.startswith("exit rate"):
        return f"{100 * value:.1f} %"
    return f"{value:.6g}"


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """Scalar numbers of a predicted/measured dict; exit rates flattened, samples left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = float(value)
        elif key == "exit_rates" and isinstance(value, dict):
            for exit_id, share in value.items():
                if isinstance(share, (int, float)) and not isinstance(share, bool):
                    out[f"exit rate {exit_id}"] = float(share)
    return out


def verification_table(verifications: Sequence[VerificationRecord]) -> str:
    """Predicted against measured for every number either side stored (`dse verify`)."""
    rows = []
    for v in verifications:
        predicted, measured = _numbers(v.predicted), _numbers(v.measured)
        for key in sorted(set(predicted) | set(measured)):
            p_val, m_val = predicted.get(key), measured.get(key)
            diff: Cell = NA
            if p_val is not None and m_val is not None:
                delta = m_val - p_val
                rel = f" ({100 * delta / p_val:+.1f} %)" if p_val else ""
                text = f"{100 * delta:+.2f} pp" if key == "miou" else f"{delta:+.4g}{rel}"
                diff = (text, f"{delta:.9g}")
            source = " (held-out, stored profile)" if v.measured.get("source") else ""
            rows.append([
                (str(v.candidate_index), str(v.candidate_index)),
                (esc(v.device_name), v.device_name),
                (f"{esc(v.dataset)} / {esc(v.split)}{esc(source)}", f"{v.dataset}/{v.split}"),
                (esc(key), key),
                _num(p_val, _fmt_value(key, p_val)),
                _num(m_val, _fmt_value(key, m_val)),
                diff,
                (esc(v.created.isoformat(timespec="seconds")), v.created.isoformat()),
            ])
        if v.measured.get("source"):  # a held-out check: what moved, what no longer holds
            flags = [f"{e} moved {float(d):+.0f} points"
                     for e, d in (v.measured.get("moved_exits") or {}).items()]
            flags += [str(b) for b in v.measured.get("broken") or []]
            text = "; ".join(flags) or "none (no exit rate moved > 5 points, constraints hold)"
            rows.append([
                (str(v.candidate_index), str(v.candidate_index)),
                (esc(v.device_name), v.device_name),
                (f"{esc(v.dataset)} / {esc(v.split)} (held-out, stored profile)",
                 f"{v.dataset}/{v.split}"),
                ("flags", "flags"), NA, (esc(text), text), NA,
                (esc(v.created.isoformat(timespec="seconds")), v.created.isoformat()),
            ])
    return _table(["candidate", "device", "data", "quantity", "predicted", "measured",
                   "measured − predicted", "when"], rows, css="verify")


def constraints_text(constraints: dict[str, Any]) -> str:
    """`mIoU drop <= 2 pp, target speed (bounds used: mIoU >= 58.00%)`, escaped; `none`."""
    return esc(describe(constraints, resolved=True))


def run_meta(data: RunData) -> str:
    """A definition list of what a run searched and where its numbers come from."""
    run = data.run
    fp_rows = [[(esc(k), str(k)), (esc(json.dumps(v) if not isinstance(v, str) else v), "")]
               for k, v in sorted(run.device_fingerprint.items())]
    items = [
        ("model", f"{esc(run.model_name)} (id {run.model_id})"),
        ("device", f"{esc(run.device_name)} (id {run.device_id})"),
        ("search", f"{esc(run.method)}, mode {esc(run.mode)}, objectives "
                   f"{esc(', '.join(run.objectives))}"),
        ("constraints", constraints_text(run.constraints)),
        ("input shape", esc("×".join(str(v) for v in run.input_shape))),
        ("evaluated", f"{run.n_evaluated} configurations in {run.duration_s:.1f} s; "
                      f"{len(data.candidates)} stored"),
        ("accuracy profile", str(run.accuracy_profile_id)),
        ("created", esc(run.created.isoformat(timespec="seconds"))),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return (
        f"<dl class=\"meta\">{dl}</dl>"
        f"<details><summary>device fingerprint</summary>"
        f"{_table(['key', 'value'], fp_rows, sortable=False)}</details>"
        f"<details><summary>search space</summary><pre>"
        f"{esc(json.dumps(run.space, indent=2, sort_keys=True, default=str))}</pre></details>"
    )


def cross_table(data: CrossDeviceData) -> str:
    """One row per linked configuration, the latency and mIoU it reaches in each run."""
    headers = ["config", "exits", "thresholds"]
    for run in data.runs:
        headers += [f"{run.label}: latency", f"{run.label}: mIoU", f"{run.label}: front"]
    rows = []
    for cfg in data.configs:
        row: list[Cell] = [(esc(cfg.label), cfg.label[1:].zfill(6)),
                           (exit_chain(cfg.exits), " ".join(cfg.exits)),
                           (esc(cfg.thresholds), cfg.thresholds)]
        for cell in cfg.cells:
            if cell is None:
                row += [("not stored", ""), NA, NA]
            else:
                front = f"{cell.front}" + ("" if cell.feasible else " (infeasible)")
                row += [_num(cell.latency_ms, ms(cell.latency_ms)),
                        _num(cell.miou, pct(cell.miou)), (front, str(cell.front))]
        rows.append(row)
    return _table(headers, rows, css="cross")
