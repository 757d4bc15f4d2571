"""Host-to-device copies (cryogan_core.device)."""

from __future__ import annotations

import pytest
import torch

from cryogan_core.device import to_device


def test_to_device_on_the_same_device_returns_the_tensor_itself():
    t = torch.arange(6.0).reshape(2, 3)
    assert to_device(t, "cpu") is t
    assert to_device(t, torch.device("cpu")) is t


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_device_copies_to_the_gpu_and_later_kernels_see_the_values():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1000, 7, generator=g)
    d = to_device(t, "cuda")
    assert d.device.type == "cuda"
    assert torch.equal((d * 2).cpu(), t * 2)
    t.zero_()  # the source may change at once: the copy was staged in pinned memory
    assert not torch.equal(d.cpu(), t)
