"""Few-shot prediction: the transfer fit, its cross-validated error, the choice of components."""

from __future__ import annotations

import numpy as np
import pytest

from profiling.fewshot import choose_components, fit_transfer


def _reference(seed: int = 0, n: int = 40) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    kinds = ["segment", "head", "decision", "upsample", "final"]
    ref, kind = {}, {}
    for i in range(n):
        key = (kinds[i % 5], f"c{i}")
        ref[key] = float(np.exp(rng.uniform(-4, 3)))
        kind[key] = key[0]
    return ref, kind


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_an_exact_scaling_of_the_reference_is_recovered_to_float_precision(k: int) -> None:
    ref, kinds = _reference()
    other, _ = _reference(seed=1)
    new = {key: 2.75 * v for key, v in ref.items()}
    chosen = choose_components(ref, kinds, k)
    model = fit_transfer({key: new[key] for key in chosen}, {"ref": ref, "other": other})
    assert model.kind == "scale" and model.references == ("ref",) or k == 1
    predicted = model.predict({"ref": ref, "other": other}, list(ref))
    if k > 1:
        for key, value in predicted.items():
            assert value == pytest.approx(new[key], rel=1e-12)
        assert model.cv_error == pytest.approx(0.0, abs=1e-12)
    else:  # one measurement: a scale on the first reference, no error estimate possible
        assert model.cv_error is None


def test_a_power_law_device_picks_the_power_model_and_its_cv_error_is_honest() -> None:
    ref, kinds = _reference(n=60)
    rng = np.random.default_rng(5)
    new = {key: 0.5 * v ** 0.8 * float(np.exp(rng.normal(0, 0.05))) for key, v in ref.items()}
    chosen = choose_components(ref, kinds, 20)
    model = fit_transfer({key: new[key] for key in chosen}, {"ref": ref})
    assert model.kind == "power" and model.coef[1] == pytest.approx(0.8, abs=0.05)
    predicted = model.predict({"ref": ref}, list(ref))
    errors = [abs(predicted[k] / new[k] - 1) for k in ref if k not in chosen]
    assert float(np.median(errors)) < 0.08
    assert model.cv_error is not None and model.cv_error < 0.1


def test_the_choice_spreads_over_kinds_and_sizes_and_k_beyond_all_takes_all() -> None:
    ref, kinds = _reference()
    chosen = choose_components(ref, kinds, 5)
    assert len(set(chosen)) == 5 and {kinds[k] for k in chosen} == set(kinds.values())
    assert max(ref, key=ref.get) in chosen  # the most expensive component anchors the line
    assert choose_components(ref, kinds, 1000) == list(ref)
    with pytest.raises(ValueError, match="k: must be >= 1"):
        choose_components(ref, kinds, 0)


def test_a_reference_lacking_a_measured_component_is_named() -> None:
    ref, _ = _reference()
    key = next(iter(ref))
    with pytest.raises(ValueError, match="reference 'partial' has no latency"):
        fit_transfer({key: 1.0}, {"partial": {}})


def test_kinds_that_move_apart_are_recovered_by_a_kind_model() -> None:
    ref, kinds = _reference(n=50)
    factor = {"segment": 0.4, "head": 0.5, "decision": 1.6, "upsample": 1.2, "final": 0.8}
    new = {key: factor[kinds[key]] * v for key, v in ref.items()}
    chosen = choose_components(ref, kinds, 10)
    targets = [k for k in ref if k not in chosen]
    model = fit_transfer({key: new[key] for key in chosen}, {"ref": ref}, kinds, targets)
    assert model.kind == "kind-scale" and model.cv_error == pytest.approx(0.0, abs=1e-12)
    assert model.as_dict()["offsets"]["decision"] == pytest.approx(np.log(1.6))
    predicted = model.predict({"ref": ref}, targets, kinds)
    for key in targets:
        assert predicted[key] == pytest.approx(new[key], rel=1e-12)
    # without the kinds, no single line fits: the error estimate says so
    plain = fit_transfer({key: new[key] for key in chosen}, {"ref": ref})
    assert plain.cv_error is not None and plain.cv_error > 0.2
    with pytest.raises(ValueError, match="needs each component's kind"):
        model.predict({"ref": ref}, targets)
