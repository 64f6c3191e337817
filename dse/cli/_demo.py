"""`dse demo`: the whole pipeline on the built-in data and this CPU, in a few minutes.

Train a small MESS network (both stages) on the procedural dataset, profile its accuracy once
and this CPU's latency as two devices (all cores, one thread), search both, write one report
that overlays the two fronts. Every step reuses what the store and the output folder already
hold, so a second run finishes in seconds.

The latency profiles use the same protocol and checks as `dse profile`. The demo exists to show
the pipeline end to end, so a device whose timings fail those checks (a busy machine) is kept,
marked noisy, with one line that says so and why; the search, `dse pareto` and the report show
the mark. `--strict-timing` applies `dse profile`'s rule instead: such a device is left out, and
if no device can be measured the demo stops (exit 3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from dse.cli._app import DEFAULT_DB, ComputeOption, DbOption, app, console, err_console
from dse.errors import DseError


@dataclass(frozen=True, kw_only=True)
class DemoPlan:
    """The demo's fixed recipe: small enough for 2 CPU cores, rich enough to show trade-offs."""

    arch: str = "fcn_resnet18"
    input_size: tuple[int, int] = (64, 64)
    heads: tuple[str, ...] = ("crm64-b0-fcn", "crm64-b1-fcn", "nocrm-b0-fcn", "crm64-b1-rdi-deeplabv3")
    # Stride-8 positions only: at 64x64 a stride-4 exit sees more pixels than the final head,
    # which would make the demo's front about resolution rather than depth.
    positions: tuple[str, ...] = ("layer2.*", "layer3.*", "layer4.0")
    train_size: int = 384
    val_size: int = 64
    calib_size: int = 200
    # Depth pays only once the backbone is trained well past the point where layer2 features
    # suffice: 16 backbone epochs (AdamW) make the final exit the most accurate; heads on the
    # frozen backbone need fewer.
    epochs: int = 16
    stage2_epochs: int = 6
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 0.002
    max_exits: int = 2
    repeat: int = 20
    seed: int = 0
    compute: str = "cpu"
    # False: keep a device whose timings fail the checks, marked noisy (the demo shows the
    # pipeline); True: `dse profile`'s rule, such a device is left out (exit 3 if none is left).
    strict_timing: bool = False


def _check_out_dir(out: Path) -> None:
    """Create the output folder and prove it is writable before any work starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".dse-demo-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DseError(f"cannot write in output folder {out} ({exc.strerror or exc}); "
                       f"choose another --out") from exc


def _device_names(threads: int, compute: str = "cpu") -> tuple[tuple[str, int], ...]:
    """Honest names: this CPU with all its threads, and the same CPU pinned to one thread (on a
    GPU, the GPU alone)."""
    if compute != "cpu":
        return ((f"this-{compute.replace(':', '')}", threads),)
    names = [(f"this-cpu-{threads}threads", threads)]
    if threads > 1:
        names.append(("this-cpu-1thread", 1))
    return tuple(names)


def _train(plan: DemoPlan, checkpoint: Path) -> None:
    from dse.cli._train import TrainBars, print_training
    from training.runner import TrainRequest, run_training
    from training.train import TrainConfig

    base = TrainConfig(mode="stage1", epochs=plan.epochs, batch_size=plan.batch_size,
                       optimizer=plan.optimizer, lr=plan.lr, seed=plan.seed,
                       device=plan.compute)
    request = TrainRequest(
        arch=plan.arch, data="synthetic", out=str(checkpoint), stage="both",
        input_size=plan.input_size, base=base, head_space=plan.heads, positions=plan.positions,
        stage2_epochs=plan.stage2_epochs, train_size=plan.train_size, val_size=plan.val_size,
        resume=checkpoint.exists(),
    )
    with TrainBars(json_lines=False) as progress:
        outcome = run_training(request, progress=progress)
    print_training(outcome, json_output=False)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the checkpoint and report.html.")] = Path("dse-demo"),
    strict_timing: Annotated[bool, typer.Option("--strict-timing", help="Leave out a device whose timings fail the stability checks (exit 3 if none is left) instead of keeping it marked noisy.")] = False,
    keep_noisy: Annotated[bool, typer.Option("--keep-noisy", hidden=True, help="Accepted for older scripts: keeping noisy profiles, marked, is now the demo's default.")] = False,
    db: DbOption = DEFAULT_DB,
    compute: ComputeOption = "cpu",
) -> None:
    """Run the whole pipeline on built-in data and this CPU: train, profile, search, report."""
    if keep_noisy and strict_timing:
        raise DseError("--keep-noisy and --strict-timing contradict each other; pass one")
    run_demo(DemoPlan(compute=compute, strict_timing=strict_timing), out=out, db=db)


def run_demo(plan: DemoPlan, *, out: Path, db: str) -> Path:
    """The demo's steps in order; returns the report path. Checks everything before step 1."""
    import torch

    from db.session import open_store, parse_url, session_scope
    from dse.cli._pareto import print_run
    from dse.cli._profile import ProfileBars, print_profile
    from dse.constraints import Constraints
    from dse.report import check_output_path, write_report
    from dse.run import SearchRequest, run_search
    from profiling.run import ProfileRequest, run_profile
    from profiling.timing import TimingSettings
    from profiling.verdict import UnstableProfileError

    _check_out_dir(out)
    report_path = out / "report.html"
    check_output_path(str(report_path))
    open_store(db, create=True).dispose()  # a store of another schema stops us before training

    checkpoint = out / "demo.pt"
    console.rule("1/4 train: two-stage MESS network on the procedural dataset")
    _train(plan, checkpoint)

    threads = torch.get_num_threads()
    devices = _device_names(threads, plan.compute)
    model_name = "demo-" + plan.arch
    measured: list[str] = []
    refusals: list[str] = []
    for step, (name, n) in enumerate(devices):
        console.rule(f"2/4 profile: {'accuracy once, then ' if step == 0 else ''}latency on {name}")
        request = ProfileRequest(
            checkpoint=checkpoint, device=name, data="synthetic", split="calib",
            limit=plan.calib_size, accuracy=step == 0, latency=True, compute=plan.compute,
            dtype="float32", threads=n, timing=TimingSettings(warmup=3, repeat=plan.repeat),
            batch=1, batch_size=16, name=model_name, keep_noisy=not plan.strict_timing,
        )
        try:
            with ProfileBars() as bars:
                outcome = run_profile(db, request, progress=bars.advance)
        except UnstableProfileError as exc:
            refusals.append(f"{name}: {exc}")
            err_console.print(f"could not measure {name}, left out of the search: {exc}",
                              markup=False, highlight=False, soft_wrap=True)
            continue
        print_profile(outcome, json_output=False)
        verdict = outcome.latency.verdict if outcome.latency else None
        if verdict is not None and not verdict.ok:
            err_console.print(
                f"note: {name}'s timings are noisy ({verdict.line()}); kept, marked noisy in the "
                "search and the report. For latencies to rely on, profile on a quiet machine "
                "(`dse profile`), or pass --strict-timing to leave such a device out",
                markup=False, highlight=False, soft_wrap=True)
        measured.append(name)
    if not measured:
        raise UnstableProfileError(
            "the machine is too busy for trustworthy latencies on any demo device "
            f"({'; '.join(refusals)}); stop other jobs and re-run, or drop --strict-timing to "
            "keep them marked noisy")
    devices = tuple((name, n) for name, n in devices if name in measured)

    console.rule("3/4 search: exhaustive Pareto fronts per device")
    url = parse_url(db).render_as_string(hide_password=False)
    engine = open_store(db)
    run_ids = []
    try:
        for name, _ in devices:
            search = SearchRequest(device=name, model=model_name, max_exits=plan.max_exits,
                                   constraints=Constraints(max_drop_pp=1.0, target="speed"))
            stored = run_search(engine, url, search)
            print_run(stored, json_output=False)
            run_ids.append(stored.run.id)
        console.rule("4/4 report")
        with session_scope(engine, readonly=True) as s:
            written = write_report(s, run_ids, str(report_path))
    finally:
        engine.dispose()
    console.print(f"report: {written}")
    err_console.print(f"next: open {written} in a browser; `dse --help` lists every command")
    return Path(written)
