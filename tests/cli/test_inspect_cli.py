"""`dse inspect`: human tables, JSON lines that add up, one-line errors for bad input."""

import json

import pytest

from dse.cli._app import main

KEYS = {"kind", "name", "position", "channels", "stride", "gflops", "params"}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lines_cover_every_component(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "fcn_resnet18", "--input-size", "64x64", "--num-classes", "3",
        "--heads", "nocrm-b0-fcn,crm16-b1-rdi-deeplabv3", "--json",
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(set(r) == KEYS for r in rows)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("segment") == 9 and kinds.count("final") == 1
    assert kinds.count("head") == kinds.count("decision") == 16
    segments = [r for r in rows if r["kind"] == "segment"]
    assert [(r["name"], r["channels"], r["stride"]) for r in segments[:3]] == [
        ("layer1.0", 64, 4), ("layer1.1", 64, 4), ("layer2.0", 128, 8),
    ]
    assert "layer3.1/crm16-b1-rdi-deeplabv3" in {r["name"] for r in rows if r["kind"] == "head"}


def test_json_segments_and_final_equal_the_plain_model(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from training.adapters import build_network
    from training.flops import count_gflops
    from training.heads import FINAL_EXIT

    code, out, _ = _run(capsys, "fcn_mobilenet_v2", "--input-size", "64x64", "--heads", "nocrm-b0-fcn", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    total = sum(r["gflops"] for r in rows if r["kind"] in ("segment", "final"))
    net = build_network("fcn_mobilenet_v2", num_classes=21, head_space=["nocrm-b0-fcn"], device="meta")
    full = count_gflops(net.budgeted(FINAL_EXIT).eval(), torch.zeros(1, 3, 64, 64, device="meta"))
    assert total == pytest.approx(full, rel=1e-9)


def test_human_output_lists_positions_and_head_space(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "fcn_efficientnet_lite0", "--input-size", "64", "--positions", "blocks.1*")
    assert code == 0
    assert "blocks.10" in out and "blocks.15" in out and "blocks.2 " not in out
    assert "20 heads x 7 positions = 140 candidate exits" in out
    assert "crm64-b2-rdi-deeplabv3" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fcn_resnet19"], "unknown architecture 'fcn_resnet19'; valid: fcn_resnet18"),
        (["fcn_resnet18", "--positions", "layer9.0"], "no candidate position matches 'layer9.0'; valid: layer"),
        (["fcn_resnet18", "--heads", "nocrm-b0-fc"], "bad head 'nocrm-b0-fc': kind must be one of fcn, deeplabv3"),
        (["fcn_resnet18", "--input-size", "64by64"], "--input-size must be HxW"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = _run(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
