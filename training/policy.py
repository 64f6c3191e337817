"""The exit policy of method.md: per-pixel confidence, semantic-edge correction, image confidence.

Everything runs at the head's native output resolution (before upsampling) so the decision stays
cheap; `ExitDecision` wraps it as a module so it can be timed and costed like any component.

Window sizes are in native pixels. One native pixel covers `stride` input pixels, so the method's
median window of half-size 2 * stride input pixels is `window=2` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.errors import TrainingError

DEFAULT_EDGE_WIDTH = 0
DEFAULT_WINDOW = 2


def check_threshold(name: str, value: float) -> float:
    """A threshold in (0, 1], else TrainingError naming it and the valid range."""
    value = float(value)
    if not 0.0 < value <= 1.0 or math.isnan(value):
        raise TrainingError(f"{name} must be in (0, 1], got {value}")
    return value


def semantic_edges(labels: Tensor, *, edge_width: int = DEFAULT_EDGE_WIDTH) -> Tensor:
    """Pixels on a label change of the predicted label map, widened by `edge_width` pixels.

    A pixel is an edge when one of its 4 neighbours has another label, so a boundary gives a
    band two pixels wide (one on each side), as an edge detector on the label image would.

    Args:
        labels: int [N, h, w] label map.
        edge_width: extra pixels added on each side of the band (max-pool widening).

    Returns:
        bool [N, h, w].
    """
    if edge_width < 0:
        raise ValueError(f"edge_width must be >= 0, got {edge_width}")
    edges = torch.zeros_like(labels, dtype=torch.bool)
    horizontal = labels[:, :, 1:] != labels[:, :, :-1]
    vertical = labels[:, 1:, :] != labels[:, :-1, :]
    edges[:, :, 1:] |= horizontal
    edges[:, :, :-1] |= horizontal
    edges[:, 1:, :] |= vertical
    edges[:, :-1, :] |= vertical
    if edge_width > 0:
        k = 2 * edge_width + 1
        edges = F.max_pool2d(edges[:, None].float(), k, stride=1, padding=edge_width)[:, 0] > 0
    return edges


def window_median(values: Tensor, *, window: int = DEFAULT_WINDOW) -> Tensor:
    """Median of each pixel's (2*window+1)^2 neighbourhood, ignoring pixels outside the image."""
    n, h, w = values.shape
    k = 2 * window + 1
    padded = F.pad(values[:, None], (window, window, window, window), value=float("nan"))
    patches = F.unfold(padded, k)  # [N, k*k, h*w]
    return patches.nanmedian(dim=1).values.view(n, h, w)


def correct_edges(conf: Tensor, labels: Tensor, *, edge_width: int = DEFAULT_EDGE_WIDTH, window: int = DEFAULT_WINDOW) -> Tensor:
    """Edge pixels take the median confidence of the window around them; others keep theirs.

    No data-dependent shortcut (e.g. when there is no edge): the decision is traced for export,
    and a traced branch would be frozen to the example's case.
    """
    edges = semantic_edges(labels, edge_width=edge_width)
    return torch.where(edges, window_median(conf, window=window), conf)


def confidence_map(
    native_logits: Tensor,
    *,
    edge_correction: bool = True,
    edge_width: int = DEFAULT_EDGE_WIDTH,
    window: int = DEFAULT_WINDOW,
) -> Tensor:
    """Top-1 softmax probability per pixel, with semantic-edge correction.

    Args:
        native_logits: float [N, C, h, w] logits of one exit before upsampling.

    Returns:
        float [N, h, w] in [0, 1].
    """
    top1, labels = native_logits.float().softmax(dim=1).max(dim=1)
    if not edge_correction:
        return top1
    return correct_edges(top1, labels, edge_width=edge_width, window=window)


def image_confidence(conf_map: Tensor, th_pix: float) -> Tensor:
    """Share of pixels whose confidence is >= th_pix, per image: float [N]."""
    return (conf_map >= th_pix).flatten(1).float().mean(dim=1)


@dataclass(frozen=True, kw_only=True)
class ExitPolicy:
    """Everything the exit decision needs besides the thresholds: one value, stored with the
    accuracy profile and read back by export, verify and the closed loop, so a deployed cascade
    decides exactly as its profile was measured.

    The fields are stored as flat keys of the profile's settings (`as_settings`), the keys
    profiles have always had, so stores written before this type existed read back unchanged.
    """

    edge_correction: bool = True
    edge_width: int = DEFAULT_EDGE_WIDTH
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if not isinstance(self.edge_correction, bool):
            raise ValueError(f"edge_correction: must be True or False, got {self.edge_correction!r}")
        if self.edge_width < 0:
            raise ValueError(f"edge_width: must be >= 0, got {self.edge_width}")
        if self.window < 0:
            raise ValueError(f"window: must be >= 0, got {self.window}")

    def as_settings(self) -> dict[str, Any]:
        """The keys stored with an accuracy profile (and in an export's metadata)."""
        return {"edge_correction": self.edge_correction, "edge_width": int(self.edge_width),
                "window": int(self.window)}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> ExitPolicy:
        """Read back from stored settings; a key a store lacks takes the default it was
        measured with (older profiles stored only `edge_correction`)."""
        return cls(
            edge_correction=bool(settings.get("edge_correction", True)),
            edge_width=int(settings.get("edge_width", DEFAULT_EDGE_WIDTH)),
            window=int(settings.get("window", DEFAULT_WINDOW)),
        )

    def decision(self) -> ExitDecision:
        """The decision module that applies this policy."""
        return ExitDecision(edge_correction=self.edge_correction, edge_width=self.edge_width,
                            window=self.window)


class ExitDecision(nn.Module):
    """Image confidence of an exit from its native logits (no parameters; timed on its own)."""

    def __init__(self, *, edge_correction: bool = True, edge_width: int = DEFAULT_EDGE_WIDTH, window: int = DEFAULT_WINDOW) -> None:
        super().__init__()
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.edge_correction = edge_correction
        self.edge_width = edge_width
        self.window = window

    @property
    def policy(self) -> ExitPolicy:
        """The policy this module applies."""
        return ExitPolicy(edge_correction=bool(self.edge_correction), edge_width=int(self.edge_width),
                          window=int(self.window))

    def forward(self, native_logits: Tensor, th_pix: float = 0.9) -> Tensor:
        conf = confidence_map(
            native_logits, edge_correction=self.edge_correction, edge_width=self.edge_width, window=self.window
        )
        return image_confidence(conf, th_pix)

    def operations(self, *, num_classes: int, height: int, width: int) -> int:
        """Elementwise operations of one decision (flop_counter counts none of them).

        Softmax ~3C, top-1 C, edges 4 comparisons, the window median ~k log2 k over k = (2w+1)^2
        samples (computed for every pixel), threshold and mean 2.
        """
        per_pixel = 4 * num_classes + 2
        if self.edge_correction:
            k = (2 * self.window + 1) ** 2
            per_pixel += 4 + (2 * self.edge_width + 1) ** 2 + math.ceil(k * math.log2(max(k, 2)))
        return per_pixel * height * width
