"""Fixtures shared by the CLI tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained fcn_resnet18 MESS checkpoint at 32x32 with two exits."""
    from training.adapters import build_network
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    net = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                        positions=["layer1.1", "layer3.1"])
    save_checkpoint(path, net, meta={"input_size": [32, 32], "dataset": "synthetic"})
    return path


@pytest.fixture
def console_width(monkeypatch):
    """`console_width(n)`: print as if the terminal had n columns, for this test only.

    Patches rich's private ``_width`` rather than the ``width`` property: undoing a patched
    property writes back the width measured at patch time, which froze the console for every later
    test (a test-order failure in test_db_cli)."""
    from dse.cli import _app

    def set_width(width: int) -> None:
        monkeypatch.setattr(_app.console, "_width", width)

    return set_width
