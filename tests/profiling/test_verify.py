"""Predicted vs measured: the comparison rules and the image-by-image measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from db.counts import miou_from_counts
from profiling.counts import class_counts
from profiling.errors import ProfilingError
from profiling.timing import TimingSettings
from profiling.verify import (
    Measurement,
    Prediction,
    compare,
    measure_cascade,
    predicted_counts,
)


def _prediction(**over: object) -> Prediction:
    fields: dict = {
        "miou": 0.5,
        "latency_ms": 10.0,
        "latency_p95_ms": 12.0,
        "gflops": 1.0,
        "exit_rates": {"a/x": 0.3, "final": 0.7},
    }
    fields.update(over)
    return Prediction(**fields)


def _measurement(**over: object) -> Measurement:
    fields: dict = {
        "n_images": 10,
        "miou": 0.5,
        "latency_ms": 10.5,
        "latency_p95_ms": 12.0,
        "latency_std_ms": 1.0,
        "exit_counts": {"a/x": 3, "final": 7},
        "dataset": "synthetic",
        "split": "val",
        "device": "cpu-test",
    }
    fields.update(over)
    return Measurement(**fields)


def test_equal_prediction_passes_every_check() -> None:
    cmp = compare(_prediction(), _measurement(), same_images=True)
    assert cmp.ok and cmp.miou_ok and cmp.exits_ok and cmp.latency_ok
    assert cmp.predicted_exit_counts == {"a/x": 3, "final": 7}
    assert cmp.exit_count_diff == {"a/x": 0, "final": 0}
    assert cmp.latency_error == pytest.approx(0.05)


def test_miou_tolerance_is_a_hundredth_of_a_point() -> None:
    inside = compare(_prediction(), _measurement(miou=0.50009), same_images=True)
    outside = compare(_prediction(), _measurement(miou=0.5002), same_images=True)
    assert inside.miou_ok is True
    assert outside.miou_ok is False and not outside.ok
    assert outside.miou_diff_pp == pytest.approx(0.02)


def test_one_image_per_exit_is_allowed_two_are_not() -> None:
    one = compare(_prediction(), _measurement(exit_counts={"a/x": 4, "final": 6}),
                  same_images=True)
    two = compare(_prediction(), _measurement(exit_counts={"a/x": 5, "final": 5}),
                  same_images=True)
    assert one.exits_ok is True
    assert two.exits_ok is False
    assert two.exit_count_diff == {"a/x": 2, "final": -2}


def test_latency_outside_ten_percent_fails() -> None:
    cmp = compare(_prediction(), _measurement(latency_ms=11.5), same_images=True)
    assert cmp.latency_ok is False and cmp.latency_error == pytest.approx(0.15)


def test_another_split_only_judges_latency() -> None:
    cmp = compare(_prediction(), _measurement(miou=0.1, exit_counts={"a/x": 10, "final": 0}),
                  same_images=False)
    assert cmp.miou_ok is None and cmp.exits_ok is None and cmp.ok
    line = cmp.to_dict()
    for key in ("predicted_miou", "measured_miou", "predicted_latency_ms",
                "measured_latency_ms", "predicted_exit_rates", "measured_exit_rates"):
        assert key in line
    assert line["measured_exit_rates"] == {"a/x": 1.0, "final": 0.0}


def test_predicted_counts_round_shares_back_to_images() -> None:
    assert predicted_counts({"e": 1 / 3, "final": 2 / 3}, 3) == {"e": 1, "final": 2}


def test_measurement_validates_its_counts() -> None:
    with pytest.raises(ValueError, match="exit_counts"):
        _measurement(exit_counts={"a/x": 3, "final": 8})
    with pytest.raises(ValueError, match="miou"):
        _prediction(miou=1.5)


class _ThresholdCascade(torch.nn.Module):
    """A real two-exit cascade: exits early when the mean of the first channel is positive."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.early = torch.nn.Conv2d(3, 4, 1)
        self.final = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool(x[:, 0].mean() > 0):
            return self.early(x), torch.zeros(1, dtype=torch.int64)
        return self.final(x), torch.ones(1, dtype=torch.int64)


def test_measure_cascade_counts_exits_and_scores_like_the_profile() -> None:
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(3, 8, 8, generator=gen), torch.randint(0, 4, (8, 8), generator=gen))
        for _ in range(6)
    ]
    data[0][1][0, 0] = 255  # ignored pixel
    module = _ThresholdCascade()
    got = measure_cascade(
        module, data, exit_ids=["early/x", "final"], num_classes=4,
        device=torch.device("cpu"), dataset_name="toy", split="val", device_name="cpu",
        timing=TimingSettings(warmup=0, repeat=2), warmup=1,
    )
    early = sum(1 for img, _ in data if img[0].mean() > 0)
    assert 0 < early < len(data)  # the seed exercises both exits
    assert got.exit_counts == {"early/x": early, "final": len(data) - early}
    # Reference: the whole batch scored at once, each image by the branch it takes.
    with torch.no_grad():
        preds = torch.stack([module(img.unsqueeze(0))[0][0].argmax(0) for img, _ in data])
    tp, fp, fn = class_counts(preds, torch.stack([lbl for _, lbl in data]), num_classes=4)
    assert got.miou == pytest.approx(miou_from_counts(tp.numpy(), fp.numpy(), fn.numpy()),
                                     abs=1e-12)
    assert len(got.latency_samples_ms) == len(data)
    assert all(math.isfinite(s) and s > 0 for s in got.latency_samples_ms)
    assert got.latency_ms == pytest.approx(float(np.mean(got.latency_samples_ms)))


def test_measure_cascade_refuses_an_empty_split() -> None:
    with pytest.raises(ProfilingError, match="no images"):
        measure_cascade(
            _ThresholdCascade(), [], exit_ids=["final"], num_classes=4,
            device=torch.device("cpu"), dataset_name="toy", split="val", device_name="cpu",
        )


def test_measure_cascade_interleaves_images_and_reports_its_spread() -> None:
    from profiling.load import PassLoad

    class Load:
        def start(self) -> None:
            return None

        def stop(self, token: None) -> PassLoad:
            return PassLoad(wall_s=1.0, other_cores=0.3, free_cores=1.0, load_1m=2.5,
                            cpu_mhz=None, contended=False)

    order: list[int] = []
    data = [(torch.full((3, 8, 8), float(i + 1)), torch.zeros(8, 8, dtype=torch.int64))
            for i in range(3)]

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            order.append(int(x[0, 0, 0, 0]) - 1)
            return torch.zeros(1, 4, 8, 8), torch.zeros(1, dtype=torch.int64)

    got = measure_cascade(
        Recorder(), data, exit_ids=["final"], num_classes=4, device=torch.device("cpu"),
        dataset_name="toy", split="val", device_name="cpu",
        timing=TimingSettings(warmup=5, repeat=4, max_remeasure=0), warmup=0, load=Load(),
    )
    # one scoring run per image, then 4 rounds over the images in order (timing's warm-up unused)
    assert order == [0, 1, 2] + [0, 1, 2] * 4
    assert got.load["load_1m"] == 2.5 and got.latency_unstable in range(4)
    assert 0 <= got.latency_spread <= got.latency_max_spread
    assert {"latency_spread", "latency_max_spread", "latency_unstable", "load"} <= set(got.to_dict())
