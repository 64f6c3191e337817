"""The pruned early-exit network equals the in-framework cascade, in every export format."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from training.adapters import build_network, describe_positions
from training.cascade import build_cascade_module
from training.errors import TrainingError
from training.export import export_cascade, load_state_dict_export, script_cascade
from training.network import CascadeConfig
from training.policy import ExitDecision, confidence_map

SIZE = (32, 32)


def _network(arch: str = "fcn_resnet18"):
    torch.manual_seed(0)
    names = [p.name for p in describe_positions(arch)]
    return build_network(arch, num_classes=3, head_space=["nocrm-b0-fcn"], positions=names[1:4]).eval()


def _images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(1))


def _mixed_th_img(network, exit_id: str, x: torch.Tensor, th_pix: float) -> float:
    """An image threshold that sends some images out at `exit_id` and keeps the others."""
    with torch.no_grad():
        c_img = ExitDecision()(network.forward_native(x)[exit_id], th_pix)
    values = sorted(set(c_img.tolist()))
    assert len(values) > 1, "the seed should give images of different confidence"
    return values[len(values) // 2]


def _config(network, x: torch.Tensor) -> tuple[list[str], list[float], float]:
    exits = list(network.exit_ids[:2])
    th_pix = [0.4, 0.4]
    return exits, th_pix, _mixed_th_img(network, exits[0], x, th_pix[0])


@pytest.fixture(scope="module")
def resnet():
    return _network()


def _reference(network, x, exits, th_pix, th_img):
    with torch.no_grad():
        return network.cascade(x, CascadeConfig(exits=tuple(exits), th_pix=tuple(th_pix),
                                                th_img=th_img))


def test_pruned_module_equals_the_cascade_image_by_image_and_batched(resnet) -> None:
    x = _images()
    exits, th_pix, th_img = _config(resnet, x)
    module = build_cascade_module(resnet, exits=[*exits, "final"], th_pix=th_pix, th_img=th_img,
                                  input_size=SIZE)
    ref = _reference(resnet, x, exits, th_pix, th_img)
    assert len(set(ref.exit_ids)) > 1  # the configuration really exits early for some images
    with torch.no_grad():
        logits, index = module(x)
        assert [module.exit_ids[i] for i in index] == ref.exit_ids
        torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-5)
        for n in range(x.shape[0]):
            one = _reference(resnet, x[n : n + 1], exits, th_pix, th_img)
            got, where = module(x[n : n + 1])
            assert module.exit_ids[int(where[0])] == one.exit_ids[0]
            assert torch.equal(got, one.logits)


def test_later_stages_never_run_once_every_image_left(resnet) -> None:
    x = _images(3)
    exits = [resnet.exit_ids[0], "final"]
    module = build_cascade_module(resnet, exits=exits, th_pix=[0.01], th_img=0.01,
                                  input_size=SIZE)
    calls: list[int] = []
    hook = module.last_stage.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        _, index = module(x)
    hook.remove()
    assert index.tolist() == [0, 0, 0] and calls == []


def test_partial_exit_runs_later_stages_only_for_images_still_in(resnet) -> None:
    """Counting the work, as tests/training/test_network.py does for the eager cascade: a
    module that ran every image through every stage and masked the results would fail here."""
    x = _images()
    exits, th_pix, th_img = _config(resnet, x)
    module = build_cascade_module(resnet, exits=[*exits, "final"], th_pix=th_pix, th_img=th_img,
                                  input_size=SIZE)
    ref = _reference(resnet, x, exits, th_pix, th_img)
    batches: dict[str, list[int]] = {"stage1": [], "head1": [], "last": [], "final": [],
                                     "up0": [], "up_last": []}
    watched = {"stage1": module.early_stages[1], "head1": module.early_heads[1],
               "last": module.last_stage, "final": module.last_head,
               "up0": module.early_upsample[0], "up_last": module.last_upsample}
    hooks = [m.register_forward_hook(lambda _m, args, _o, name=name: batches[name].append(
        int(args[0].shape[0]))) for name, m in watched.items()]
    with torch.no_grad():
        _, index = module(x)
    for hook in hooks:
        hook.remove()
    left_first = ref.exit_ids.count(exits[0])
    left_second = ref.exit_ids.count(exits[1])
    still_in = x.shape[0] - left_first
    assert 0 < left_first < x.shape[0]
    assert [module.exit_ids[i] for i in index] == ref.exit_ids
    assert batches["up0"] == [left_first]  # only the leavers are upsampled there
    assert batches["stage1"] == [still_in] and batches["head1"] == [still_in]
    finals = still_in - left_second
    assert batches["last"] == ([finals] if finals else [])
    assert batches["final"] == batches["last"] and batches["up_last"] == batches["last"]


def test_torchscript_file_keeps_the_early_exit(resnet, tmp_path) -> None:
    x = _images()
    exits, th_pix, th_img = _config(resnet, x)
    module = build_cascade_module(resnet, exits=[*exits, "final"], th_pix=th_pix, th_img=th_img,
                                  input_size=SIZE)
    out = tmp_path / "cascade.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = export_cascade(module, fmt="torchscript", out=out, metadata={"run": 1},
                                 example=x[:1])
        loaded = torch.jit.load(str(out))
    assert written == [out, tmp_path / "cascade.pt.json"]
    assert "if " in loaded.code  # data-dependent control flow, not a traced single path
    ref = _reference(resnet, x, exits, th_pix, th_img)
    with torch.no_grad():
        logits, index = loaded(x)
    assert [module.exit_ids[i] for i in index] == ref.exit_ids
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-5)
    meta = json.loads((tmp_path / "cascade.pt.json").read_text())
    assert meta["exit_ids"] == [*exits, "final"] and meta["th_img"] == th_img
    assert [p.name for p in tmp_path.iterdir()] == sorted(p.name for p in written) or len(
        list(tmp_path.iterdir())) == 2  # nothing else (no temporary folder) left behind


def test_state_dict_export_rebuilds_on_a_fresh_network(resnet, tmp_path) -> None:
    x = _images()
    exits, th_pix, th_img = _config(resnet, x)
    module = build_cascade_module(resnet, exits=[*exits, "final"], th_pix=th_pix, th_img=th_img,
                                  input_size=SIZE)
    out = tmp_path / "cascade.sd"
    export_cascade(module, fmt="state-dict", out=out, metadata={"edge_correction": True},
                   example=x[:1])
    state = torch.load(out, weights_only=True)
    # only the configuration's parts: one early stage and head per kept early exit
    for part in ("early_stages", "early_heads"):
        assert {k.split(".")[1] for k in state if k.startswith(part + ".")} == {
            str(i) for i in range(len(exits))}
    assert sum(v.numel() for k, v in state.items() if "running" not in k
               and "num_batches" not in k) < sum(p.numel() for p in resnet.parameters())
    torch.manual_seed(123)  # other random weights: the export must bring its own
    fresh = build_network("fcn_resnet18", num_classes=3, head_space=["nocrm-b0-fcn"],
                          positions=[p.name for p in resnet.positions]).eval()
    rebuilt = load_state_dict_export(out, fresh)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], module(x)[0], rtol=0, atol=0)


def test_budgeted_configuration_ends_at_its_exit(resnet) -> None:
    x = _images(2)
    exit_id = resnet.exit_ids[1]
    module = build_cascade_module(resnet, exits=[exit_id], th_pix=[], th_img=0.5,
                                  input_size=SIZE)
    with torch.no_grad():
        logits, index = module(x)
        torch.testing.assert_close(logits, resnet.budgeted(exit_id)(x), rtol=0, atol=0)
    assert index.tolist() == [0, 0]
    assert sum(p.numel() for p in module.parameters()) < sum(
        p.numel() for p in resnet.parameters())


def test_lraspp_final_head_gets_its_skip_feature() -> None:
    network = _network("lraspp_mobilenet_v3_large")
    x = _images(4)
    exits = [network.exit_ids[0]]
    with torch.no_grad():  # random LR-ASPP heads are unconfident: threshold at the median pixel
        th_pix = float(confidence_map(network.forward_native(x)[exits[0]]).median())
    th_img = _mixed_th_img(network, exits[0], x, th_pix)
    module = build_cascade_module(network, exits=[*exits, "final"], th_pix=[th_pix],
                                  th_img=th_img, input_size=SIZE)
    ref = _reference(network, x, exits, [th_pix], th_img)
    assert len(set(ref.exit_ids)) > 1
    with torch.no_grad():
        logits, index = module(x)
        scripted = script_cascade(module, x[:1])
        s_logits, s_index = scripted(x)
    assert [module.exit_ids[i] for i in index] == ref.exit_ids
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(s_logits, ref.logits, rtol=0, atol=1e-5)
    assert torch.equal(s_index, index)


def test_bad_configurations_and_outputs_are_refused(resnet, tmp_path) -> None:
    first, second = resnet.exit_ids[0], resnet.exit_ids[1]
    with pytest.raises(TrainingError, match="unknown exit"):
        build_cascade_module(resnet, exits=["layer9.9/nocrm-b0-fcn", "final"], th_pix=[0.5],
                             th_img=0.5, input_size=SIZE)
    with pytest.raises(TrainingError, match="increasing"):
        build_cascade_module(resnet, exits=[second, first, "final"], th_pix=[0.5, 0.5],
                             th_img=0.5, input_size=SIZE)
    with pytest.raises(TrainingError, match="th_pix"):
        build_cascade_module(resnet, exits=[first, "final"], th_pix=[], th_img=0.5,
                             input_size=SIZE)
    module = build_cascade_module(resnet, exits=[first, "final"], th_pix=[0.5], th_img=0.5,
                                  input_size=SIZE)
    taken = tmp_path / "taken.pt"
    taken.write_text("keep me")
    with pytest.raises(TrainingError, match="already exists"):
        export_cascade(module, fmt="torchscript", out=taken, metadata={}, example=_images(1))
    assert taken.read_text() == "keep me"
    with pytest.raises(TrainingError, match="unknown export format"):
        export_cascade(module, fmt="tflite", out=tmp_path / "x", metadata={}, example=_images(1))


def _straddling_th_img(values: list[float]) -> float:
    """A th_img halfway between two distinct c_img values: no image sits on the threshold."""
    distinct = sorted(set(values))
    mid = len(distinct) // 2
    return (distinct[mid - 1] + distinct[mid]) / 2


def _onnx_runner(folder):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_cascade", folder / "run_cascade.py")
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)  # plain numpy + onnx: nothing of this project
    return runner


@pytest.mark.slow
# th_pix: not values any pixel holds exactly (ties differ by one ulp); for LR-ASPP (its final head
# reads an earlier feature, passed along as `skip`) some images leave and the rest reach the final.
@pytest.mark.parametrize(("arch", "first", "th_pix"), [
    ("fcn_resnet18", 0, [0.405, 0.405]),
    ("lraspp_mobilenet_v3_large", 1, [0.365, 0.405]),
])
def test_onnx_graphs_and_runner_equal_the_cascade_one_image_and_batched(
    arch, first, th_pix, tmp_path
) -> None:
    pytest.importorskip("onnx")
    network = _network(arch)
    x = _images()
    exits = list(network.exit_ids[first : first + 2])
    with torch.no_grad():
        c_img = ExitDecision()(network.forward_native(x)[exits[0]], th_pix[0]).tolist()
    th_img = _straddling_th_img(c_img)
    module = build_cascade_module(network, exits=[*exits, "final"], th_pix=th_pix, th_img=th_img,
                                  input_size=SIZE)
    out = tmp_path / "onnx"
    export_cascade(module, fmt="onnx", out=out, metadata={"run": 3}, example=x[:1])
    names = sorted(p.name for p in out.iterdir())
    assert "run_cascade.py" in names and "cascade.json" in names
    assert {"stage_0.onnx", "head_0.onnx", "decision_0.onnx", "upsample_2.onnx"} <= set(names)
    cascade = _onnx_runner(out).Cascade(out)
    ref = _reference(network, x, exits, th_pix, th_img)
    assert len(set(ref.exit_ids)) > 1 and "final" in ref.exit_ids
    singles = []
    for n in range(x.shape[0]):
        logits, exit_ids = cascade(x[n : n + 1].numpy())
        assert exit_ids == [ref.exit_ids[n]]
        torch.testing.assert_close(torch.from_numpy(logits), ref.logits[n : n + 1],
                                   rtol=0, atol=1e-4)
        singles.append(logits)
    # A batch is split at each exit and the images that continue are regrouped: per image the
    # same exits and logits as one at a time (up to the float rounding of batched kernels).
    logits, exit_ids = cascade(x.numpy())
    assert exit_ids == ref.exit_ids
    torch.testing.assert_close(torch.from_numpy(logits),
                               torch.from_numpy(np.concatenate(singles)), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_onnx_runner_batch_where_every_image_leaves_or_none_does(resnet, tmp_path) -> None:
    pytest.importorskip("onnx")
    x = _images(3)
    exit_id = resnet.exit_ids[0]
    for th, where in ((0.01, exit_id), (1.0, "final")):
        module = build_cascade_module(resnet, exits=[exit_id, "final"], th_pix=[th],
                                      th_img=th, input_size=SIZE)
        out = tmp_path / f"onnx-{th}"
        export_cascade(module, fmt="onnx", out=out, metadata={}, example=x[:1])
        logits, exit_ids = _onnx_runner(out).Cascade(out)(x.numpy())
        ref = _reference(resnet, x, [exit_id], [th], th)
        assert exit_ids == ref.exit_ids == [where] * 3
        torch.testing.assert_close(torch.from_numpy(logits), ref.logits, rtol=0, atol=1e-4)


def test_onnx_decision_equals_the_policy_on_real_logits(resnet) -> None:
    from training._onnx_export import OnnxDecision

    with torch.no_grad():
        for exit_id in resnet.exit_ids:
            logits = resnet.forward_native(_images())[exit_id]
            for width in (0, 1):
                policy = ExitDecision(edge_width=width)
                onnx_form = OnnxDecision(th_pix=0.41, edge_correction=True, edge_width=width,
                                         window=policy.window)
                assert torch.equal(onnx_form(logits), policy(logits, 0.41))


def test_missing_onnx_package_names_the_install(monkeypatch) -> None:
    import sys

    from training._onnx_export import check_onnx_available

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(TrainingError, match="pip install onnx"):
        check_onnx_available()


def _aten_ops(fn) -> set[str]:
    """Names of the aten operators one call runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record() as record:
        fn()
    return record.names


BOOKKEEPING = {"index", "index_put", "index_put_", "arange", "zeros", "new_empty", "nonzero"}


@pytest.mark.parametrize("th", [0.01, 1.0])  # every image leaves early / none does
def test_one_image_pays_no_buffer_or_index_bookkeeping(resnet, th: float) -> None:
    x = _images(1)
    exit_id = resnet.exit_ids[0]
    module = build_cascade_module(resnet, exits=[exit_id, "final"], th_pix=[th], th_img=th,
                                  input_size=SIZE)
    ref = _reference(resnet, x, [exit_id], [th], th)
    assert ref.exit_ids == [exit_id if th < 0.5 else "final"]
    assert not _aten_ops(lambda: module(x)) & BOOKKEEPING
    config = CascadeConfig(exits=(exit_id,), th_pix=th, th_img=th)
    assert not _aten_ops(lambda: resnet.cascade(x, config)) & (BOOKKEEPING - {"arange"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = script_cascade(module, x)
    with torch.no_grad():
        for run in (module, scripted):  # the TorchScript file keeps the one-image path
            logits, index = run(x)
            assert module.exit_ids[int(index[0])] == ref.exit_ids[0]
            torch.testing.assert_close(logits, ref.logits, rtol=0, atol=0 if run is module
                                       else 1e-5)
