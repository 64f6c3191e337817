"""`dse train` as a library call: data, network, stages in order, resume and time budget.

Stages map to training modes: ``1`` -> stage1, ``2`` -> stage2 (PFD), ``both`` -> stage1 then
stage2; the ablations ``ic-only``, ``end-to-end`` and ``final-only`` run alone. One checkpoint
file carries the run: after stage 1 it holds the exit-aware backbone, after stage 2 every head.
Everything the user could get wrong (data root, labels, an existing --out, another architecture)
is checked before the first checkpoint is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training import train as train_module
from training._stages import FROZEN_BACKBONE_MODES
from training.checkpoint import load_checkpoint, read_checkpoint
from training.data import SegmentationDataset, build_dataset
from training.errors import TrainingError
from training.train import EpochRecord, TrainConfig, TrainProgress, train_network

if TYPE_CHECKING:
    from training.network import MessNetwork

STAGES = {
    "1": ("stage1",),
    "2": ("stage2",),
    "both": ("stage1", "stage2"),
    "ic-only": ("ic-only",),
    "end-to-end": ("end-to-end",),
    "final-only": ("final-only",),
}
# A finished checkpoint of the key mode may be continued in place by these modes.
_FOLLOWS: dict[str, tuple[str, ...]] = {"stage1": ("stage2", "ic-only")}


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """Everything `dse train` was asked to do.

    Attributes:
        stage: a key of STAGES.
        base: settings shared by the modes (its ``mode`` is replaced per stage).
        time_budget_s: wall-clock budget of the stages this call runs (None: epochs only); it
            is measured up front what it buys (`training.budget`), checked between steps, and
            each stage's schedule is fitted to it.
        stage1_share: share of the budget given to stage 1 when both stages run; None: in
            proportion to the measured cost of the epochs each stage asks for.
        stage2_epochs: epochs of the frozen-backbone modes (stage2, ic-only); None: base.epochs.
            Heads on a frozen backbone converge in fewer epochs than the backbone itself.
        init: checkpoint to start from (e.g. stage 1 weights for --stage 2).
        train_size, val_size: use only the first N samples (synthetic: generate N).
    """

    arch: str
    data: str
    out: str
    stage: str = "both"
    data_root: str | None = None
    input_size: tuple[int, int] = (64, 64)
    base: TrainConfig = field(default_factory=lambda: TrainConfig(mode="stage1"))
    time_budget_s: float | None = None
    stage1_share: float | None = None
    stage2_epochs: int | None = None
    resume: bool = False
    init: str | None = None
    head_space: tuple[str, ...] | None = None
    positions: tuple[str, ...] | None = None
    pretrained_backbone: bool = False
    train_size: int | None = None
    val_size: int | None = None
    val_split: str = "val"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.stage1_share is not None and not 0.0 < self.stage1_share < 1.0:
            raise ValueError(f"stage1_share must be in (0, 1), got {self.stage1_share}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if self.stage2_epochs is not None and self.stage2_epochs < 1:
            raise ValueError(f"stage 2 epochs must be >= 1, got {self.stage2_epochs}")
        if self.resume and self.init is not None:
            raise ValueError("resume and init exclude each other")


@dataclass(frozen=True, kw_only=True)
class TrainOutcome:
    """What ran: the checkpoint, the modes trained now, their epochs, modes already done before."""

    out: str
    history: dict[str, list[EpochRecord]]
    skipped: tuple[str, ...] = ()


def load_datasets(request: TrainRequest) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Train (augmented) and validation sets, decoded now so bad files fail before any write."""
    root, size, seed = request.data_root, request.input_size, request.base.seed
    train = build_dataset(
        request.data, root=root, split="train", input_size=size, augment=True, seed=seed,
        size=request.train_size,
    )  # fmt: skip
    val = build_dataset(
        request.data, root=root, split=request.val_split, input_size=size, seed=seed,
        size=request.val_size,
    )  # fmt: skip
    for dataset in (train, val):
        for index in range(len(dataset)):
            dataset.raw(index)
    return train, val


def _plan(request: TrainRequest) -> tuple[list[str], Path | None, dict[str, Any] | None]:
    """(modes still to run, checkpoint to start from, train_state to resume) for this request."""
    modes = list(STAGES[request.stage])
    out = Path(request.out)
    if not out.parent.is_dir():
        raise TrainingError(f"folder {out.parent} of --out does not exist; create it first")
    if request.init is not None:
        if out.exists():
            raise TrainingError(f"{out} already exists; choose another --out (or --resume it)")
        return modes, Path(request.init), None
    if not out.exists():
        if request.resume:
            raise TrainingError(f"nothing to resume: {out} does not exist")
        return modes, None, None
    state = read_checkpoint(out).get("train_state") or {}
    done_mode, finished = str(state.get("mode")), bool(state.get("finished"))
    if request.resume:
        if done_mode in modes:
            index = modes.index(done_mode)
            if finished:
                return modes[index + 1 :], out, None
            return modes[index:], out, state
        if finished and modes[0] in _FOLLOWS.get(done_mode, ()):
            return modes, out, None
        raise TrainingError(
            f"cannot resume {out}: it holds a '{done_mode}' run, not one of {', '.join(modes)}"
        )
    if finished and modes[0] in _FOLLOWS.get(done_mode, ()):
        return modes, out, None  # stage 2 continues a finished stage-1 checkpoint in place
    raise TrainingError(
        f"{out} already exists; pass --resume to continue it or choose another --out"
    )


def _network(
    request: TrainRequest, start: Path | None, num_classes: int
) -> tuple[MessNetwork, dict[str, Any]]:
    if start is None:
        import torch

        from training.adapters import build_network

        # The initial weights (backbone parts and every head) come from --seed too, so two runs
        # with one seed give bit-identical checkpoints; the caller's RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(request.base.seed)
            network = build_network(
                request.arch,
                num_classes=num_classes,
                head_space=request.head_space,
                positions=request.positions,
                pretrained_backbone=request.pretrained_backbone,
            )
        return network, {}
    network, meta = load_checkpoint(start, expect_arch=request.arch)
    if network.num_classes != num_classes:
        raise TrainingError(
            f"checkpoint {start} has {network.num_classes} classes but dataset "
            f"'{request.data}' has {num_classes}; use a checkpoint trained on it"
        )
    return network, meta


def _epochs(request: TrainRequest, mode: str) -> int:
    """Epochs of this mode: the frozen-backbone modes may have their own count."""
    if request.stage2_epochs is not None and mode in FROZEN_BACKBONE_MODES:
        return request.stage2_epochs
    return request.base.epochs


def _plan_budget(
    request: TrainRequest,
    modes: list[str],
    network: MessNetwork,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset,
    progress: TrainProgress | None,
) -> list[float]:
    """Seconds for each mode of ``modes``, from a measured estimate, said up front."""
    from training.budget import describe_plan, estimate_stage, split_budget

    assert request.time_budget_s is not None
    started = train_module.budget_clock()
    configs = [replace(request.base, mode=m, epochs=_epochs(request, m)) for m in modes]
    estimates = [estimate_stage(network, train_set, val_set, c) for c in configs]
    budget = max(1e-3, request.time_budget_s - (train_module.budget_clock() - started))
    share = request.stage1_share if len(modes) > 1 else None
    plans = split_budget(budget, estimates, [c.epochs for c in configs], share)
    note = getattr(progress, "note", None)
    if note is not None:
        for line in describe_plan(plans, request.time_budget_s, len(network.exits)):
            note(line)
    return [p.budget_s for p in plans]


def run_training(request: TrainRequest, *, progress: TrainProgress | None = None) -> TrainOutcome:
    """Run the stages of ``request``; each mode checkpoints to ``request.out`` per epoch.

    Raises:
        TrainingError: bad data, an existing --out without --resume, a checkpoint of another
            architecture or class count, incompatible resume settings.
    """
    all_modes = list(STAGES[request.stage])
    modes, start, resume_state = _plan(request)
    skipped = tuple(m for m in all_modes if m not in modes)
    train_set, val_set = load_datasets(request)
    network, start_meta = _network(request, start, train_set.num_classes)
    done = list(start_meta.get("completed_modes", []))
    history: dict[str, list[EpochRecord]] = {}
    budgets: list[float | None] = [None] * len(modes)
    if request.time_budget_s is not None and modes:
        budgets = list(_plan_budget(request, modes, network, train_set, val_set, progress))
    began = train_module.budget_clock()
    for index, mode in enumerate(modes):
        meta = {
            "input_size": list(request.input_size),
            "dataset": request.data,
            "class_names": list(train_set.class_names),
            "completed_modes": done,
        }
        budget = budgets[index]
        if budget is not None and index == len(modes) - 1 and index > 0:
            # the last stage gets what the earlier ones left (their overrun or their savings)
            budget = max(1e-3, sum(b or 0.0 for b in budgets) - (train_module.budget_clock() - began))
        config = replace(
            request.base, mode=mode, epochs=_epochs(request, mode), time_budget_s=budget
        )  # fmt: skip
        records = train_network(
            network, train_set, val_set, config,
            out=request.out, meta=meta, resume_state=resume_state, progress=progress,
        )  # fmt: skip
        resume_state = None
        history[mode] = records
        done = [*done, mode]
    if modes:
        _mark_completed(request.out, done)
    return TrainOutcome(out=request.out, history=history, skipped=skipped)


def _mark_completed(path: str, done: list[str]) -> None:
    """Record the finished modes in the checkpoint's meta (rewritten atomically)."""
    from training.checkpoint import atomic_torch_save

    payload = read_checkpoint(path)
    payload["meta"] = {**payload.get("meta", {}), "completed_modes": done}
    atomic_torch_save(payload, path)
