"""Device resolution and fingerprint."""

import pytest
import torch

from profiling.device import device_fingerprint, resolve_device, resolve_dtype
from profiling.errors import ProfilingError


def test_fingerprint_is_stable_and_names_what_matters() -> None:
    dev = resolve_device("cpu")
    a = device_fingerprint(dev, dtype=torch.float32, threads=1)
    b = device_fingerprint(dev, dtype=torch.float32, threads=1)
    assert a == b
    assert a["threads"] == 1 and a["dtype"] == "float32" and a["compute"] == "cpu"
    assert a["torch"] == torch.__version__ and a["cpu"]
    assert device_fingerprint(dev, dtype=torch.float32, threads=2) != a


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_user_error() -> None:
    with pytest.raises(ProfilingError, match="no CUDA device"):
        resolve_device("cuda")


def test_half_precision_needs_cuda_and_unknown_names_fail() -> None:
    with pytest.raises(ProfilingError, match="float16 needs a CUDA"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ProfilingError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ProfilingError, match="unknown compute"):
        resolve_device("tpu")
