"""The built-in procedural dataset: scenes whose difficulty varies from sample to sample.

Easy samples are a few large shapes in their class's own colour on smooth sky/ground regions: a
shallow exit reads them off by colour. Hard ones hold more, smaller objects painted in another
class's colour, sky and ground may swap colours, and grey clutter and noise hide the outlines:
only shape (disc vs square), texture (stripes, specks) and context (above or below the horizon)
tell the classes apart, which needs depth. That split is what makes early exits worth
searching. Every sample is a pure function of (seed, split, index) and the input size.
"""

from __future__ import annotations

import torch

from training._dataset import SegmentationDataset, _mix_seed
from training.errors import TrainingError

CLASS_NAMES = ("sky", "ground", "disc", "square", "stripes", "specks")
_COLOURS = torch.tensor(
    [
        [0.55, 0.68, 0.88],  # sky
        [0.45, 0.36, 0.26],  # ground
        [0.88, 0.18, 0.16],  # disc
        [0.18, 0.74, 0.22],  # square
        [0.92, 0.84, 0.18],  # stripes (modulated)
        [0.72, 0.20, 0.82],  # specks
    ]
)
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "calib": 4}
SPLITS = tuple(_SPLIT_CODES)
# Images a synthetic split may hold: generated on demand but cached decoded, so the bound keeps a
# typo such as --limit 10**30 from filling memory.
MAX_SIZE = 10_000


def check_request(split: str, size: int) -> None:
    """TrainingError unless `split` is a synthetic split and `size` within 1..MAX_SIZE.

    Any other split name would silently draw new images (a typo makes a new calibration set).
    """
    if split not in _SPLIT_CODES:
        raise TrainingError(f"the synthetic dataset has no split {split!r}; use one of {', '.join(SPLITS)}")
    if not 1 <= size <= MAX_SIZE:
        raise TrainingError(
            f"synthetic split {split!r} asked for {size} images; it has at most {MAX_SIZE:,}: "
            "lower --limit / the slice bounds"
        )


def _uniform(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def render_scene(
    gen: torch.Generator, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Draw one scene: (image float[3,H,W] in [0,1], label int64[H,W], difficulty in [0,1]).

    Classes are defined by what a deep network sees and a shallow one does not: sky is whatever
    lies above the horizon, discs and squares differ only in outline, stripes and specks in
    texture. Colour is a shortcut only in easy scenes; as difficulty grows, objects take a random
    palette colour, sky and ground may swap colours, and clutter and noise hide the outlines.
    """
    difficulty = _uniform(gen)
    unit = float(min(height, width))
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)

    def chance(p: float) -> bool:
        return _uniform(gen) < p

    horizon = height * (_uniform(gen, 0.3, 0.65) + _uniform(gen, -0.25, 0.25) * (xs / width - 0.5))
    label = (ys > horizon).long()  # 0 sky above, 1 ground below
    washout = 0.45 * difficulty * _uniform(gen, 0.5, 1.0)
    colours = _COLOURS * (1 - washout) + 0.5 * washout
    backdrop = colours[[1, 0]] if chance(0.5 * difficulty) else colours[:2]
    image = backdrop[label].permute(2, 0, 1).clone()
    image *= 0.85 + 0.3 * (ys / height)  # smooth vertical shading

    n_objects = 1 + int(difficulty * 6 + _uniform(gen, 0, 2))
    max_radius = unit * (0.30 - 0.16 * difficulty)
    for _ in range(n_objects):
        cls = int(torch.randint(2, 6, (), generator=gen))
        radius = max(2.5, max_radius * _uniform(gen, 0.5, 1.0))
        cy, cx = _uniform(gen, 0, height), _uniform(gen, 0, width)
        dy, dx = ys - cy, xs - cx
        if cls == 3:
            mask = (dy.abs() <= radius) & (dx.abs() <= radius)
        elif cls == 4:
            mask = (dy / radius) ** 2 + (dx / (1.6 * radius)) ** 2 <= 1.0
        else:  # disc, and the round patch that carries the specks
            mask = dy * dy + dx * dx <= radius * radius
        decoy = chance(0.85 * difficulty)
        paint = int(torch.randint(2, 6, (), generator=gen)) if decoy else cls
        fill = (colours[paint] * _uniform(gen, 0.8, 1.1)).view(3, 1, 1).expand(3, height, width)
        if cls == 4:  # stripes
            period = max(2.0, radius / 2)
            fill = fill * (0.55 + 0.45 * torch.sin(xs / period * 3.14159)).unsqueeze(0)
        elif cls == 5:  # specks: dark dots on a regular grid, jittered phase
            phase_y, phase_x = _uniform(gen, 0, 4), _uniform(gen, 0, 4)
            dots = ((ys + phase_y) % 4 < 2) & ((xs + phase_x) % 4 < 2)
            fill = fill * (1.0 - 0.5 * dots.float()).unsqueeze(0)
        image = torch.where(mask.unsqueeze(0), fill, image)
        label = torch.where(mask, torch.full_like(label, cls), label)

    for _ in range(int(difficulty * 8)):  # clutter: changes pixels, not labels
        h = max(1, int(unit * _uniform(gen, 0.03, 0.10)))
        w = max(1, int(unit * _uniform(gen, 0.03, 0.10)))
        top = int(_uniform(gen, 0, max(1, height - h)))
        left = int(_uniform(gen, 0, max(1, width - w)))
        image[:, top : top + h, left : left + w] = _uniform(gen, 0.25, 0.75)

    noise = 0.03 + 0.15 * difficulty
    image = image + noise * torch.randn(image.shape, generator=gen)
    return image.clamp(0, 1), label, difficulty


class SyntheticDataset(SegmentationDataset):
    """Procedural scenes with six classes, deterministic from (seed, split, index), any size."""

    name = "synthetic"
    class_names = CLASS_NAMES

    def __init__(
        self,
        *,
        split: str,
        input_size: tuple[int, int],
        augment: bool = False,
        seed: int = 0,
        size: int = 64,
    ) -> None:
        check_request(split, size)
        ids = [f"synthetic-s{seed}-{split}-{index:06d}" for index in range(size)]
        super().__init__(
            split=split, input_size=input_size, sample_ids=ids, augment=augment, seed=seed
        )
        self._code = _SPLIT_CODES[split]

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self._code, index))
        image, label, _ = render_scene(gen, *self.input_size)
        return (image * 255).round().to(torch.uint8), label

    def difficulty(self, index: int) -> float:
        """The difficulty the scene was drawn with (for analysis and tests)."""
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self._code, index))
        return render_scene(gen, 8, 8)[2]
