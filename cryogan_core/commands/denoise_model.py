"""The denoiser's network on disk: ``model.pt``, its fingerprint, and the config ``checkpoint.pt`` keeps.

``model.pt`` (:func:`save_model`, :func:`load_model`) holds plain tensors and numbers, read
with ``torch.load(..., weights_only=True)``; :func:`model_fingerprint` names the network (and
output dtype) that made the denoised stacks, so a resumed run keeps only stacks of the same
one; :func:`config_dict` and :func:`stored_config` give the training config as
``checkpoint.pt`` stores it, so a checkpoint resumes only with the same config.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryogan_core.errors import InputError
from cryogan_core.io.atomic import atomic_path
from cryogan_core.models.patchgan import PatchGANDiscriminator
from cryogan_core.models.unet import UNetGenerator
from cryogan_core.train.pairs import PairSettings
from cryogan_core.train.pix2pix import Pix2PixConfig

MODEL_FORMAT = "cryogan-denoiser-v1"


def save_model(path: Path, generator: UNetGenerator, settings: PairSettings, pixel_size_train_A: float, extra: dict[str, Any]) -> None:
    """Write ``model.pt``: plain tensors and numbers, loadable with ``torch.load(..., weights_only=True)``.

    Args:
        path: the file to write (atomically: a temporary file renamed onto it).
        generator: the trained network (its config and ``state_dict``, float32 tensors).
        settings: the pair settings the network was trained with.
        pixel_size_train_A: the pixel size (Å) at the training box.
        extra: more plain entries (e.g. ``train_steps``, ``seed``).

    Raises:
        OSError: if the file cannot be written.
    """
    blob = {
        "format": MODEL_FORMAT,
        "generator_config": dict(generator.config),
        "generator_state": generator.state_dict(),
        "settings": settings.to_dict(),
        "pixel_size_train_A": float(pixel_size_train_A),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_model(path: Path, device: torch.device) -> tuple[UNetGenerator, PairSettings, float]:
    """Read a ``model.pt`` written by :func:`save_model` (``weights_only=True``).

    Returns:
        ``(generator in eval mode, pair settings, training pixel size in Å)``.

    Raises:
        InputError: if the file is missing or not one of our models.
    """
    if not Path(path).is_file():
        raise InputError(f"--model {path}: file not found")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a user-file problem
        raise InputError(f"--model {path}: not a cryogan denoiser model ({exc.__class__.__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise InputError(f"--model {path}: not a cryogan denoiser model (format {blob.get('format') if isinstance(blob, dict) else '?'})")
    gen = UNetGenerator.from_config(blob["generator_config"]).to(device)
    gen.load_state_dict(blob["generator_state"])
    gen.eval()
    return gen, PairSettings(**blob["settings"]), float(blob["pixel_size_train_A"])


def model_fingerprint(generator: torch.nn.Module, settings: PairSettings, dtype: type) -> str:
    """SHA-1 of the network weights, the pair settings and the output dtype.

    Args:
        generator: the network that denoises (its ``state_dict`` tensors, any device).
        settings: the pair settings.
        dtype: the written stacks' dtype, ``np.float16`` or ``np.float32``.

    Returns:
        The 40-character hex digest.
    """
    h = hashlib.sha1()
    for key, value in sorted(generator.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(sorted(settings.to_dict().items())).encode())
    h.update(np.dtype(dtype).name.encode())
    return h.hexdigest()


def _with_defaults(cls: type, kwargs: dict) -> dict:
    """``kwargs`` completed with the defaults of ``cls.__init__`` (for keys it has a default for).

    The network classes' own defaults must therefore never change: they are what a checkpoint
    that predates an argument trained with (the job's options may change theirs).
    """
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **kwargs}


def config_dict(config: Pix2PixConfig) -> dict:
    """The config as stored in checkpoints, its network keyword arguments completed with their defaults.

    A network argument a checkpoint predates (e.g. the discriminator's ``base_channels``, not
    stored before ``--disc_channels`` existed) compares equal to its default, which is what
    that older run trained with.

    Returns:
        ``dataclasses.asdict(config)`` with ``generator`` and ``discriminator`` completed from
        :class:`UNetGenerator` and :class:`PatchGANDiscriminator`: plain values and dicts only.
    """
    d = asdict(config)
    d["generator"] = _with_defaults(UNetGenerator, d["generator"])
    d["discriminator"] = _with_defaults(PatchGANDiscriminator, d["discriminator"])
    return d


def stored_config(state: dict) -> dict | None:
    """A checkpoint's config as :func:`config_dict` would write it now, or None if unreadable.

    Fields a checkpoint predates take the :class:`Pix2PixConfig` default, which is what that
    older run trained with (e.g. ``recon_loss`` "l1"); a config with unknown fields (a newer
    version's) gives None, so training starts over.

    Args:
        state: a loaded ``checkpoint.pt`` (its ``config`` entry is read).
    """
    stored = state.get("config")
    if not isinstance(stored, dict):
        return None
    try:
        return config_dict(Pix2PixConfig(**stored))
    except TypeError:
        return None
