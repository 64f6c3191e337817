"""Tiny real networks, data and a real SQLite store for the profiler tests."""

from __future__ import annotations

import hashlib

import pytest
import torch

from db import repository
from db.session import open_store, session_scope

POSITIONS = ["layer1.1", "layer2.1", "layer3.1"]
HEADS = ["nocrm-b0-fcn", "crm8-b1-rdi-fcn"]


@pytest.fixture(scope="session")
def tiny_network():
    """fcn_resnet18 with 6 classes, 3 positions x 2 heads, random seeded weights, eval mode."""
    from training.adapters import build_network

    torch.manual_seed(0)
    net = build_network("fcn_resnet18", num_classes=6, head_space=HEADS, positions=POSITIONS)
    return net.eval()


@pytest.fixture(scope="session")
def calib():
    from training.data import build_dataset

    return build_dataset("synthetic", split="val", input_size=(32, 32), size=7)


@pytest.fixture
def engine(tmp_path):
    return open_store(str(tmp_path / "store.db"), create=True)


@pytest.fixture
def model_id(engine, tiny_network) -> int:
    """The tiny network's row in the store."""
    from training.checkpoint import describe_network

    digest = hashlib.sha256()
    for key, tensor in tiny_network.state_dict().items():
        digest.update(key.encode() + tensor.detach().reshape(-1).numpy().tobytes())
    with session_scope(engine) as s:
        return repository.upsert_model(
            s, name="tiny", arch=tiny_network.arch, architecture=describe_network(tiny_network),
            weights_sha256=digest.hexdigest(), num_classes=tiny_network.num_classes,
        ).id


class ConvClock:
    """Virtual time: every Conv2d call anywhere costs 1 ms, nothing else costs anything.

    A component's samples are then exact and identical run to run, and a deployed cascade costs
    exactly the sum of its components (the same convolutions run), so a latency pass judged
    with this clock is stable and closes its loop whatever the machine is doing.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def hook(self, module: torch.nn.Module, args: object, output: object) -> None:
        if isinstance(module, torch.nn.Conv2d):
            self.now += 1e-3


class QuietLoad:
    """A load probe that reports an idle machine."""

    def start(self) -> None:
        return None

    def stop(self, token: None):
        from profiling.load import PassLoad

        return PassLoad(wall_s=1.0, other_cores=0.0, free_cores=1.0, load_1m=0.1,
                        cpu_mhz=None, contended=False)


@pytest.fixture
def conv_clock():
    clock = ConvClock()
    handle = torch.nn.modules.module.register_module_forward_hook(clock.hook)
    yield clock
    handle.remove()


@pytest.fixture
def virtual_timing(conv_clock):
    """The interleaved protocol on virtual time and an idle machine (3 rounds, no warm-up)."""
    from profiling.backends import Interleaved
    from profiling.timing import TimingSettings

    return Interleaved(TimingSettings(warmup=0, repeat=3), load=QuietLoad(), clock=conv_clock)
