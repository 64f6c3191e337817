"""Accuracy profile: exact counts, exact c_img, chunked resume, nothing re-measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from db import repository
from db.session import session_scope
from profiling.accuracy import AccuracySettings, profile_accuracy
from profiling.errors import ProfilingError
from profiling.histogram import share_at_least


def _direct(network, dataset):
    """Per exit: predictions at input size and native logits, straight from the network."""
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.stack([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        native = network.forward_native(images)
    return native, labels


def test_stored_counts_rebuild_the_direct_miou_and_the_cascade_decision(
        engine, tiny_network, calib, model_id) -> None:
    from training.metrics import ConfusionMatrix

    result = profile_accuracy(engine, tiny_network, calib, model_id=model_id,
                              settings=AccuracySettings(batch_size=3, chunk_size=4))
    assert result.measured_samples == len(calib) == 7
    with session_scope(engine) as s:
        data = repository.load_accuracy(s, result.profile_id)
    assert data.exit_ids == (*tiny_network.exit_ids, "final")
    assert data.sample_ids == tuple(calib.sample_ids)
    native, labels = _direct(tiny_network, calib)
    for i, exit_id in enumerate(data.exit_ids):
        cm = ConfusionMatrix(tiny_network.num_classes)
        cm.update(tiny_network.upsample(native[exit_id], labels.shape[-2:]).argmax(1), labels)
        direct = cm.compute().miou
        rebuilt = result.summaries[exit_id].miou
        assert rebuilt == pytest.approx(direct, abs=1e-12), exit_id
        # the histogram gives the cascade's own decision for every threshold on an edge
        for th in (0.2, 0.5, 0.9, 0.95):
            expected = tiny_network.decision(native[exit_id], th).numpy()
            got = share_at_least(data.hist[i], data.edges, th)
            np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=f"{exit_id} @ {th}")


def test_a_subset_of_images_sums_to_its_own_miou(engine, tiny_network, calib, model_id) -> None:
    from training.metrics import ConfusionMatrix

    result = profile_accuracy(engine, tiny_network, calib, model_id=model_id)
    with session_scope(engine) as s:
        data = repository.load_accuracy(s, result.profile_id)
    native, labels = _direct(tiny_network, calib)
    pick = [0, 3, 5]
    e = 2
    exit_id = data.exit_ids[e]
    cm = ConfusionMatrix(tiny_network.num_classes)
    pred = tiny_network.upsample(native[exit_id][pick], labels.shape[-2:]).argmax(1)
    cm.update(pred, labels[pick])
    tp, fp, fn = (a[e, pick].sum(axis=0) for a in (data.tp, data.fp, data.fn))
    union = tp + fp + fn
    assert float((tp[union > 0] / union[union > 0]).mean()) == pytest.approx(cm.compute().miou)


def test_interrupted_run_resumes_and_a_rerun_measures_nothing(
        engine, tiny_network, calib, model_id, monkeypatch) -> None:
    import profiling.accuracy as accuracy

    settings = AccuracySettings(batch_size=2, chunk_size=3)
    real = accuracy._measure_chunk
    calls: list[tuple[int, int]] = []

    def failing(network, dataset, start, stop, *args):
        if start >= 3:
            raise KeyboardInterrupt
        calls.append((start, stop))
        return real(network, dataset, start, stop, *args)

    monkeypatch.setattr(accuracy, "_measure_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        profile_accuracy(engine, tiny_network, calib, model_id=model_id, settings=settings)
    assert calls == [(0, 3)]
    with session_scope(engine) as s:
        profiles = repository.find_accuracy_profiles(s, model_id)
        assert len(profiles) == 1 and not profiles[0].complete
        assert repository.completed_samples(s, profiles[0].id) == 3

    def counting(network, dataset, start, stop, *args):
        calls.append((start, stop))
        return real(network, dataset, start, stop, *args)

    monkeypatch.setattr(accuracy, "_measure_chunk", counting)
    resumed = profile_accuracy(engine, tiny_network, calib, model_id=model_id, settings=settings)
    assert calls == [(0, 3), (3, 6), (6, 7)] and resumed.measured_samples == 4
    again = profile_accuracy(engine, tiny_network, calib, model_id=model_id, settings=settings)
    assert again.measured_samples == 0 and len(calls) == 3
    assert again.profile_id == resumed.profile_id
    assert again.summaries["final"].miou == resumed.summaries["final"].miou


def test_wrong_classes_and_empty_split_write_nothing(engine, tiny_network, model_id) -> None:
    from training.data import build_dataset

    other = build_dataset("synthetic", split="val", input_size=(32, 32), size=2)
    with pytest.raises(ProfilingError, match="6 classes but the data has 3"):
        profile_accuracy(engine, tiny_network, _Relabel(other, 3), model_id=model_id)
    with pytest.raises(ProfilingError, match="no images"):
        profile_accuracy(engine, tiny_network, _Relabel(other, 6, empty=True), model_id=model_id)
    with session_scope(engine) as s:
        assert repository.find_accuracy_profiles(s, model_id) == []


class _Relabel(torch.utils.data.Dataset):
    """A dataset that claims another class count (or no images): the user's wrong pairing."""

    def __init__(self, base, num_classes: int, *, empty: bool = False) -> None:
        self.base, self.num_classes, self.empty = base, num_classes, empty
        self.name, self.split, self.sample_ids = base.name, base.split, base.sample_ids

    def __len__(self) -> int:
        return 0 if self.empty else len(self.base)

    def __getitem__(self, i):
        return self.base[i]
