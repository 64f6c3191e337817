"""What one training iteration computes in each mode; the loop in train.py is shared.

Modes (method.md): ``stage1`` exit-aware backbone (final exit + ONE early exit per iteration,
cycling over positions with a reference light head each); ``stage2`` every candidate head on a
frozen backbone, CE + positive-filtering distillation, one shared backbone forward per batch;
ablations ``ic-only`` (stage 2 without distillation) and ``end-to-end`` (all exits and the backbone
jointly); ``final-only`` is the plain single-exit network, the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from training.losses import pfd_loss, segmentation_ce
from training.network import upsample as network_upsample

if TYPE_CHECKING:
    from training.network import MessNetwork

MODES = ("stage1", "stage2", "ic-only", "end-to-end", "final-only")
FROZEN_BACKBONE_MODES = ("stage2", "ic-only")


def upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """The network's upsampling, skipped for logits already at label size (nothing to resample)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return network_upsample(logits, list(size))


def head_module(network: MessNetwork, exit_id: str) -> nn.Module:
    """The module of one candidate head (its parameters are what stage 1/2 optimise)."""
    return network.head(exit_id)


def backbone_modules(network: MessNetwork) -> list[nn.Module]:
    """Segments and the final head: what stage 2 freezes."""
    return [network.segments, network.final_head]


def reference_exits(network: MessNetwork) -> list[str]:
    """Stage 1's light head per position: the candidate with the fewest parameters there."""
    best: dict[str, tuple[int, str]] = {}
    for spec in network.exits:
        params = sum(p.numel() for p in head_module(network, spec.id).parameters())
        current = best.get(spec.position)
        if current is None or params < current[0]:
            best[spec.position] = (params, spec.id)
    order = [p.name for p in network.positions]
    return [best[name][1] for name in order if name in best]


def position_of(exit_id: str) -> str:
    return exit_id.split("/", 1)[0]


def trainable_parameters(
    network: MessNetwork, mode: str, exit_ids: Sequence[str]
) -> list[nn.Parameter]:
    """Parameters the optimiser updates in ``mode`` (a stable order, for resumable state)."""
    modules: list[nn.Module] = []
    if mode not in FROZEN_BACKBONE_MODES:
        modules.extend(backbone_modules(network))
    if mode != "final-only":
        modules.extend(head_module(network, e) for e in exit_ids)
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def set_train_mode(network: MessNetwork, mode: str) -> None:
    """train() everywhere, except a frozen backbone stays in eval(): its BN statistics never move."""
    network.train()
    frozen = mode in FROZEN_BACKBONE_MODES
    for module in backbone_modules(network):
        if frozen:
            module.eval()
        for p in module.parameters():
            p.requires_grad_(not frozen)


def batch_loss(
    network: MessNetwork,
    mode: str,
    images: Tensor,
    labels: Tensor,
    *,
    iteration: int,
    exit_ids: Sequence[str],
    weight: Tensor | None,
    early_weight: float,
    alpha: float,
    temperature: float,
    distill_class_weights: bool = False,
) -> Tensor:
    """The loss of one batch in ``mode`` (``exit_ids``: heads trained in this mode, in order)."""
    size = (labels.shape[-2], labels.shape[-1])
    if mode in FROZEN_BACKBONE_MODES:
        with torch.no_grad():
            features, final_native = network.backbone_features(images)
        return head_loss(
            network, mode, features, final_native, labels, exit_ids=exit_ids, weight=weight,
            alpha=alpha, temperature=temperature, distill_class_weights=distill_class_weights,
        )  # fmt: skip
    features, final_native = network.backbone_features(images)
    loss = segmentation_ce(upsample(final_native, size), labels, weight=weight)
    if mode == "final-only" or not exit_ids:
        return loss
    if mode == "stage1":
        exit_id = exit_ids[iteration % len(exit_ids)]
        early = network.run_head(exit_id, features[position_of(exit_id)])
        return loss + early_weight * segmentation_ce(upsample(early, size), labels, weight=weight)
    for exit_id in exit_ids:  # end-to-end: every exit and the backbone together
        early = network.run_head(exit_id, features[position_of(exit_id)])
        loss = loss + segmentation_ce(upsample(early, size), labels, weight=weight)
    return loss


def head_loss(
    network: MessNetwork,
    mode: str,
    features: dict[str, Tensor],
    final_native: Tensor,
    labels: Tensor,
    *,
    exit_ids: Sequence[str],
    weight: Tensor | None,
    alpha: float,
    temperature: float,
    distill_class_weights: bool = False,
) -> Tensor:
    """Stage 2 / IC-only loss from the frozen backbone's outputs (computed now or cached)."""
    size = (labels.shape[-2], labels.shape[-1])
    with torch.no_grad():
        teacher = upsample(final_native, size)
    total = final_native.new_zeros(())
    distil = alpha if mode == "stage2" else 0.0
    for exit_id in exit_ids:  # heads are independent: one summed backward trains each alone
        logits = upsample(network.run_head(exit_id, features[position_of(exit_id)]), size)
        total = total + pfd_loss(
            logits, teacher, labels, alpha=distil, temperature=temperature, weight=weight,
            distill_class_weights=distill_class_weights,
        )  # fmt: skip
    return total
