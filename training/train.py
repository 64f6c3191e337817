"""The training loop shared by every mode: seeded, resumable, time-budgeted, silent.

One call trains one mode (see `_stages.MODES`) for a number of epochs. After every epoch the
weights, the optimizer state and the counters are checkpointed atomically, so an interrupted run
resumes from its last completed epoch and ends with the same weights as an uninterrupted one
(data order and augmentation depend only on (seed, epoch); dropout is reseeded per epoch).
Progress goes to an optional callback object; the library never prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader

from training._stages import (
    FROZEN_BACKBONE_MODES,
    MODES,
    batch_loss,
    head_loss,
    position_of,
    reference_exits,
    set_train_mode,
    trainable_parameters,
    upsample,
)
from training.checkpoint import save_checkpoint
from training.data import SegmentationDataset, class_weights
from training.errors import TrainingError
from training.feature_cache import CachedViews, load_or_build
from training.heads import FINAL_EXIT
from training.metrics import ConfusionMatrix, SegmentationScores

if TYPE_CHECKING:
    from training.network import MessNetwork

OPTIMIZERS = ("sgd", "adamw")
budget_clock = time.perf_counter  # the budget's clock (tests replace it with a simulated one)
# Settings that must not change between an interrupted run and its resumption.
_RESUME_KEYS = (
    "mode", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "poly_power",
    "early_weight", "alpha", "temperature", "class_weighting", "seed", "exits",
    "distill_class_weights", "stage2_views",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train one mode.

    Attributes:
        mode: stage1 | stage2 | ic-only | end-to-end | final-only.
        epochs: maximum number of epochs.
        time_budget_s: wall-clock budget; the run stops at the last epoch boundary that fits it
            and the poly schedule is fitted to the epochs that fit (measured on epoch 1).
        exits: candidate exit ids to train (None: stage1 the light head per position, other
            modes every candidate exit of the network).
        early_weight: stage 1 weight of the early exit's CE (the final exit's is 1).
        alpha, temperature: positive-filtering distillation (stage2).
        distill_class_weights: weight distilled pixels by their label's class weight, like the
            CE term (off: the method's plain mean).
        class_weighting: none | enet | median.
        threads: torch CPU threads (None: leave torch's default).
        stage2_views: augmentation of the frozen-backbone modes: this many fixed views per
            image (scale-up + crop, each also mirrored), one shown per epoch; None: a fresh
            random draw every epoch (then no feature cache is possible).
        feature_cache: frozen-backbone modes compute the backbone's outputs once per view and
            train the heads from them (`training.feature_cache`); the same result as without.
        feature_cache_path: keep that cache in this file for later runs on the same stage-1
            weights and data (None: in memory for this run only).
    """

    mode: str
    epochs: int = 10
    time_budget_s: float | None = None
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    early_weight: float = 1.0
    alpha: float = 1.0
    temperature: float = 1.0
    distill_class_weights: bool = False
    class_weighting: str = "none"
    exits: tuple[str, ...] | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    eval_batch_size: int = 8
    stage2_views: int | None = 4
    feature_cache: bool = True
    feature_cache_path: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size and eval_batch_size must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.alpha < 0 or self.temperature <= 0 or self.early_weight < 0:
            raise ValueError("alpha and early_weight must be >= 0 and temperature > 0")
        if self.class_weighting not in ("none", "enet", "median"):
            raise ValueError(
                f"class_weighting must be none, enet or median, got {self.class_weighting!r}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.stage2_views is not None and self.stage2_views < 1:
            raise ValueError(f"stage2_views must be >= 1, got {self.stage2_views}")


@dataclass(frozen=True, kw_only=True)
class EpochRecord:
    """One finished epoch: mean training loss, wall time, validation mIoU per exit (0-1)."""

    mode: str
    epoch: int
    train_loss: float
    seconds: float
    val_miou: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise ValueError(f"epoch must be >= 1, got {self.epoch}")
        if any(not 0.0 <= v <= 1.0 for v in self.val_miou.values()):
            raise ValueError("val_miou values must be in [0, 1]")


class TrainProgress(Protocol):
    """Callbacks the CLI implements with rich; all optional in spirit, all called in order."""

    def epoch_started(self, mode: str, epoch: int, epochs: int, batches: int) -> None: ...
    def batch_done(self, loss: float) -> None: ...
    def epoch_done(self, record: EpochRecord) -> None: ...


def evaluate_exits(
    network: MessNetwork,
    dataset: SegmentationDataset,
    *,
    exit_ids: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, float]:
    """Validation mIoU (0-1) per exit id and for ``final``, one backbone pass per batch."""
    scores = evaluate_exit_scores(network, dataset, exit_ids=exit_ids, batch_size=batch_size,
                                  device=device)
    return {e: score.miou for e, score in scores.items()}


def evaluate_exit_scores(
    network: MessNetwork,
    dataset: SegmentationDataset,
    *,
    exit_ids: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, SegmentationScores]:
    """Validation scores (mIoU, pixel accuracy, IoU per class) per exit id and for ``final``."""
    ids = [e.id for e in network.exits] if exit_ids is None else list(exit_ids)
    matrices = {e: ConfusionMatrix(network.num_classes) for e in [*ids, FINAL_EXIT]}
    was_training = network.training
    network.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for images, labels in loader:
            images, labels = _nhwc(images, device), labels.to(device)
            size = (labels.shape[-2], labels.shape[-1])
            features, final_native = network.backbone_features(images)
            matrices[FINAL_EXIT].update(upsample(final_native, size).argmax(1), labels)
            for exit_id in ids:
                logits = network.run_head(exit_id, features[position_of(exit_id)])
                matrices[exit_id].update(upsample(logits, size).argmax(1), labels)
    network.train(was_training)
    return {e: m.compute() for e, m in matrices.items()}


def exit_ids_of(network: MessNetwork, config: TrainConfig) -> list[str]:
    known = [e.id for e in network.exits]
    if config.mode == "final-only":
        return []
    if config.exits is not None:
        unknown = [e for e in config.exits if e not in known]
        if unknown:
            raise TrainingError(
                f"exit {unknown[0]} is not a candidate exit of this network; "
                f"see `dse inspect {network.arch}` for positions and head ids"
            )
        return list(config.exits)
    if config.mode == "stage1":
        return reference_exits(network)
    return known


def _optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _training_source(
    network: MessNetwork,
    train_set: SegmentationDataset,
    config: TrainConfig,
    exit_ids: list[str],
    progress: TrainProgress | None,
) -> SegmentationDataset | CachedViews:
    """What the loop iterates: the images, or (frozen backbone) fixed views, possibly cached."""
    if config.mode not in FROZEN_BACKBONE_MODES or config.stage2_views is None:
        return train_set
    views = train_set.with_fixed_views(config.stage2_views)
    if not config.feature_cache:
        return views
    used = {position_of(e) for e in exit_ids}
    positions = [p.name for p in network.positions if p.name in used]
    cache = load_or_build(
        network, views, positions, path=config.feature_cache_path,
        batch_size=config.eval_batch_size, device=config.device,
        note=getattr(progress, "note", None),
    )  # fmt: skip
    return CachedViews(cache, views)


def _loader(dataset: SegmentationDataset | CachedViews, config: TrainConfig, epoch: int) -> DataLoader:
    dataset.set_epoch(epoch)
    gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    # A lone last sample would give BatchNorm a batch of one.
    drop_last = len(dataset) % config.batch_size == 1 and len(dataset) > 1
    return DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, generator=gen, drop_last=drop_last
    )


def _check_resume(state: dict[str, Any], config: TrainConfig, exit_ids: list[str]) -> None:
    saved = state.get("config", {})
    now = {**asdict(config), "exits": exit_ids}
    defaults = asdict(TrainConfig(mode=config.mode))
    for key in _RESUME_KEYS:  # a key older checkpoints lack had its default then
        old, new = saved.get(key, defaults.get(key)), now.get(key)
        if isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
            old, new = list(old or []), list(new or [])
        if old != new:
            raise TrainingError(
                f"cannot resume: the checkpoint was trained with {key}={old!r}, now {key}={new!r}; "
                "use the same settings or start a new --out"
            )


def train_network(
    network: MessNetwork,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset | None,
    config: TrainConfig,
    *,
    out: str,
    meta: dict[str, Any],
    resume_state: dict[str, Any] | None = None,
    progress: TrainProgress | None = None,
) -> list[EpochRecord]:
    """Train ``network`` in ``config.mode``; checkpoint to ``out`` after every epoch.

    Args:
        meta: checkpoint meta (``input_size``, ``dataset``, ...); ``history`` is added.
        resume_state: ``train_state`` of the checkpoint the network was loaded from, to continue
            an interrupted run of the same mode and settings.

    Returns:
        The epoch records of this mode (including those done before a resume).

    Raises:
        TrainingError: unknown exits, a dataset smaller than one batch, incompatible resume.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--compute cuda asked but torch sees no CUDA device; use --compute cpu")
    if len(train_set) == 0:
        raise TrainingError("the training set is empty")
    if train_set.num_classes != network.num_classes:
        raise TrainingError(
            f"the dataset has {train_set.num_classes} classes but the network {network.num_classes}"
        )
    exit_ids = exit_ids_of(network, config)
    # NHWC convolutions: 1.7x faster per stage-1 step than NCHW on this 2-core CPU (measured)
    network.to(config.device).to(memory_format=torch.channels_last)
    set_train_mode(network, config.mode)
    params = trainable_parameters(network, config.mode, exit_ids)
    optimizer = _optimizer(params, config)
    weight = None
    if config.class_weighting != "none":
        weight = class_weights(train_set, method=config.class_weighting).to(config.device)
    setup_started = budget_clock()
    source = _training_source(network, train_set, config, exit_ids, progress)
    batches = len(_loader(source, config, 0))
    history: list[EpochRecord] = []
    iteration, start_epoch, spent_s = 0, 0, 0.0
    planned = config.epochs
    total_iters = planned * batches
    if resume_state is not None:
        _check_resume(resume_state, config, exit_ids)
        optimizer.load_state_dict(resume_state["optimizer"])
        iteration = int(resume_state["iteration"])
        start_epoch = int(resume_state["epoch"])
        planned = int(resume_state["planned_epochs"])
        total_iters = int(resume_state.get("total_iters", planned * batches))
        spent_s = float(resume_state["elapsed_s"])
        history = [EpochRecord(**r) for r in resume_state.get("history", [])]
    budget = config.time_budget_s
    step_s: float | None = None  # measured seconds per training step (budget runs)
    eval_s = 0.0  # seconds of one validation pass (budget runs)
    if budget is not None:
        if val_set is not None:
            eval_s = time_validation(network, val_set, exit_ids, config)
        spent_s += budget_clock() - setup_started  # feature cache, probe: budget time too
    last_epoch = config.epochs if budget is not None else planned
    for epoch in range(start_epoch + 1, last_epoch + 1):
        started = budget_clock()
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout draws: per epoch, resumable
        set_train_mode(network, config.mode)
        if progress is not None:
            progress.epoch_started(config.mode, epoch, planned, batches)
        losses: list[float] = []
        stopped = False
        for batch in _loader(source, config, epoch):
            if budget is not None and (
                iteration >= total_iters
                or step_s is not None
                and spent_s + budget_clock() - started + step_s + eval_s > budget
            ):
                stopped = True  # the schedule has ended or the next step would not fit
                break
            lr = config.lr * max(0.0, 1.0 - iteration / total_iters) ** config.poly_power
            for group in optimizer.param_groups:
                group["lr"] = lr
            if isinstance(source, CachedViews):
                features, final_native, labels = batch
                loss = head_loss(
                    network, config.mode,
                    {p: _nhwc(t, config.device) for p, t in features.items()},
                    final_native.to(config.device), labels.to(config.device),
                    exit_ids=exit_ids, weight=weight, alpha=config.alpha,
                    temperature=config.temperature,
                    distill_class_weights=config.distill_class_weights,
                )  # fmt: skip
            else:
                images, labels = batch
                loss = batch_loss(
                    network, config.mode,
                    _nhwc(images, config.device), labels.to(config.device),
                    iteration=iteration, exit_ids=exit_ids, weight=weight,
                    early_weight=config.early_weight, alpha=config.alpha,
                    temperature=config.temperature,
                    distill_class_weights=config.distill_class_weights,
                )  # fmt: skip
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {float(loss)} at epoch {epoch}; lower --lr and start again"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress.batch_done(losses[-1])
            if budget is not None and step_s is None and len(losses) == 2:
                # Plan the schedule from the first two measured steps (the first includes
                # warm-up, so the plan errs short); it is re-planned after every epoch.
                step_s = (budget_clock() - started) / 2
                elapsed = spent_s + budget_clock() - started
                total_iters = _fit_iters(
                    iteration, budget - elapsed, step_s, eval_s, batches, config.epochs * batches
                )  # fmt: skip
                planned = max(epoch, math.ceil(total_iters / batches))
        train_s = budget_clock() - started
        val: dict[str, float] = {}
        if val_set is not None:
            val = evaluate_exits(
                network, val_set, exit_ids=exit_ids, batch_size=config.eval_batch_size,
                device=config.device,
            )  # fmt: skip
            if config.mode == "final-only":
                val = {FINAL_EXIT: val[FINAL_EXIT]}
        seconds = budget_clock() - started
        spent_s += seconds
        record = EpochRecord(
            mode=config.mode, epoch=epoch, train_loss=sum(losses) / max(1, len(losses)),
            seconds=seconds, val_miou=val,
        )  # fmt: skip
        history.append(record)
        if budget is not None:
            if losses:
                step_s = train_s / len(losses)
            if val_set is not None:
                eval_s = seconds - train_s
            if step_s is not None:
                total_iters = _fit_iters(
                    iteration, budget - spent_s, step_s, eval_s, batches, config.epochs * batches
                )  # fmt: skip
            planned = max(epoch, math.ceil(total_iters / batches))
        finished = epoch >= planned or stopped or iteration >= total_iters
        state = {
            "mode": config.mode,
            "config": {**asdict(config), "exits": exit_ids},
            "epoch": epoch,
            "planned_epochs": planned,
            "total_iters": total_iters,
            "iteration": iteration,
            "elapsed_s": spent_s,
            "finished": finished,
            "history": [asdict(r) for r in history],
            "optimizer": optimizer.state_dict() if not finished else {},
        }
        save_checkpoint(out, network, meta={**meta, "history": state["history"]}, train_state=state)
        if progress is not None:
            progress.epoch_done(record)
        if finished:
            break
    network.to("cpu").to(memory_format=torch.contiguous_format)
    return history


def _nhwc(images: torch.Tensor, device: str) -> torch.Tensor:
    return images.to(device, memory_format=torch.channels_last)


def _fit_iters(
    iteration: int, remaining_s: float, step_s: float, eval_s: float, batches: int, cap: int
) -> int:
    """The iteration the schedule ends at: the steps (with their share of the per-epoch
    validation) that fit in ``remaining_s``, at most ``cap``, never before ``iteration``."""
    per_step = max(step_s + eval_s / batches, 1e-9)
    fits = math.floor(max(0.0, remaining_s) / per_step)
    return max(iteration, min(cap, iteration + fits))


def time_validation(
    network: MessNetwork,
    val_set: SegmentationDataset,
    exit_ids: Sequence[str],
    config: TrainConfig,
) -> float:
    """Seconds of one validation pass, extrapolated from one timed batch."""
    count = min(len(val_set), config.eval_batch_size)
    images = torch.stack([val_set[i][0] for i in range(count)])
    was_training = network.training
    network.eval()
    started = budget_clock()
    with torch.no_grad():
        features, _ = network.backbone_features(_nhwc(images, config.device))
        for exit_id in exit_ids:
            network.run_head(exit_id, features[position_of(exit_id)])
    seconds = budget_clock() - started
    network.train(was_training)
    return seconds * math.ceil(len(val_set) / count)


__all__ = [
    "FROZEN_BACKBONE_MODES",
    "MODES",
    "EpochRecord",
    "TrainConfig",
    "TrainProgress",
    "evaluate_exits",
    "exit_ids_of",
    "time_validation",
    "train_network",
]
