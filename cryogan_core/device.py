"""Host-to-GPU copies that do not make the CPU wait for the GPU's queue.

A plain ``tensor.to("cuda")`` of a CPU tensor copies from pageable memory and then
synchronises the stream (PyTorch's ``memcpy_and_sync``): the CPU stops until every kernel
queued before it has run. CryoGAN's training step draws its poses, shifts, CTF rows and
noise indices on the CPU (seeded CPU generators keep runs reproducible and resumable) and
moves them to the device a dozen times per step; with small batches those waits, not the
arithmetic, set the step time on a GPU. :func:`to_device` stages such a tensor in pinned
(page-locked) memory and copies it asynchronously instead, so the kernels keep queueing.
PyTorch's caching host allocator keeps the pinned block until the copy has run.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``, copied asynchronously when it goes from the CPU to a GPU.

    Args:
        tensor: any tensor (any shape and dtype).
        device: target torch device.

    Returns:
        The same values on ``device`` (the tensor itself when it is already there). For a
        CPU-to-CUDA copy the result is ready for every later operation on the current
        stream; reading it on the CPU synchronises as usual.
    """
    device = torch.device(device)
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


__all__ = ["to_device"]
