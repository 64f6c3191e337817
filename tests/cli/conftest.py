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
def store_counts():
    """`counts(db) -> {table: rows}`: what a refused command must leave unchanged."""
    from db import repository
    from db.session import open_store, session_scope

    def counts(db: str) -> dict[str, int]:
        engine = open_store(db)
        try:
            with session_scope(engine, readonly=True) as s:
                return repository.row_counts(s)
        finally:
            engine.dispose()

    return counts
