"""Training pairs of the cGAN denoiser: (normalised particle, reference image at its pose).

Su et al. 2018 train the generator to map each particle to the projection of the refined
map at the particle's pose, modulated by the particle's CTF. Here:

1. the particle is normalised as RELION does (background outside ``bg_radius_px``: mean 0,
   std 1; RELION ``relion_preprocess --norm --bg_radius``);
2. the reference image is RELION's prediction of the particle (projection at the pose,
   CTF, shift by -origin: :func:`cryogan_core.physics.projection.forward_model`), or the
   same without the CTF for CTF-free targets (denoise and CTF-correct at once);
3. the reference is put in the particle's units by least squares inside the mask,
   ``target = a·ref + b`` with ``(a, b)`` the regression of the particle on the CTF'd
   prediction (per particle, or one pooled slope for all particles);
4. both are optionally Fourier-cropped to a smaller training box (then re-normalised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd
import torch

from cryogan_core.io.images import ParticleImages
from cryogan_core.io.star import pose_angles_deg
from cryogan_core.metrics.images import circular_mask, least_squares_scale, signal_and_noise_variance
from cryogan_core.physics.ctf import CtfParams, compute_ctf
from cryogan_core.physics.projection import Projector, forward_model
from cryogan_core.physics.resample import fourier_crop_images, fourier_crop_or_pad_map
from cryogan_core.train.reference_maps import MapsForPixel


@dataclass(frozen=True)
class PairSettings:
    """How particles and targets are prepared (stored with a trained model).

    Attributes:
        box: the particles' box in pixels.
        train_box: the box the network sees (``box``, or smaller: Fourier crop).
        bg_radius_px: RELION normalisation radius at ``box`` (pixels outside are background).
        mask_radius_px: radius of the circular mask (at ``box``) used for the target
            scale fit and the scores.
        ctf_targets: True: targets are CTF-modulated projections (Su et al.); False:
            CTF-free projections (the network also corrects the CTF).
        scale_mode: ``"particle"`` (a least-squares slope per particle) or ``"pooled"``
            (one slope over all particles of the batch set, robust at very low SNR).
        ctf_aware: the network sees phase-flipped particles and its output is multiplied by
            the particle's CTF (:mod:`cryogan_core.physics.ctf_filters`; only with
            ``ctf_targets``). False for models saved before the option existed.
    """

    box: int
    train_box: int
    bg_radius_px: float
    mask_radius_px: float
    ctf_targets: bool = True
    scale_mode: str = "particle"
    ctf_aware: bool = False

    def to_dict(self) -> dict:
        """Plain-dict form (for checkpoints loaded with ``weights_only=True``)."""
        return dict(self.__dict__)

    def at_train_box(self) -> PairSettings:
        """The settings for particles already at the training box: ``box = train_box`` and the
        radii scaled to it (``self`` when the boxes are equal). Normalising a Fourier-cropped
        particle with them is RELION's normalisation at the training box."""
        if self.train_box == self.box:
            return self
        scale = self.train_box / self.box
        return replace(self, box=self.train_box, bg_radius_px=self.bg_radius_px * scale, mask_radius_px=self.mask_radius_px * scale)

    def train_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The circular mask of the scores at the training box: ``(train_box, train_box)``
        bool, radius ``mask_radius_px`` scaled from ``box`` to ``train_box``."""
        return circular_mask(self.train_box, self.mask_radius_px * self.train_box / self.box, device=device)


def default_bg_radius_px(box: int) -> float:
    """RELION's default background radius: 75 % of half the box (``relion_preprocess``)."""
    return 0.375 * box


def _background_stats(images: torch.Tensor, radius_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std of the pixels outside ``radius_px`` (RELION's background)."""
    bg = ~circular_mask(images.shape[-1], radius_px, device=images.device)
    values = images[:, bg]
    return values.mean(dim=1), values.std(dim=1, unbiased=False).clamp_min(1e-12)


@dataclass
class InputTransform:
    """The per-particle affine map from raw particle units to network-input units.

    ``inputs = T2(T1(raw))`` with ``T1(img) = (img - mean1) / std1`` (RELION normalisation at
    the particle box) and, when the training box is smaller,
    ``T2(y) = (crop(y) - mean2) / std2`` (Fourier crop, then normalised again). Applying the
    same map to reference images keeps targets in exactly the inputs' units.

    Attributes:
        settings: the pair settings.
        mean1, std1: ``(n,)`` background statistics at the particle box.
        mean2, std2: ``(n,)`` background statistics after cropping (0 and 1 without crop).
    """

    settings: PairSettings
    mean1: torch.Tensor
    std1: torch.Tensor
    mean2: torch.Tensor
    std2: torch.Tensor

    def crop(self, normalised: torch.Tensor) -> torch.Tensor:
        """T2: ``(n, box, box)`` images in T1 units -> ``(n, train_box, train_box)`` input units."""
        if self.settings.train_box == self.settings.box:
            return normalised
        y = fourier_crop_images(normalised, self.settings.train_box)
        return (y - self.mean2[:, None, None]) / self.std2[:, None, None]

    def normalise(self, raw_units: torch.Tensor) -> torch.Tensor:
        """T1: ``(n, box, box)`` images in raw particle units -> normalised units at the box."""
        return (raw_units - self.mean1[:, None, None]) / self.std1[:, None, None]

    def __call__(self, raw_units: torch.Tensor) -> torch.Tensor:
        """T2(T1(x)): raw particle units -> network-input units."""
        return self.crop(self.normalise(raw_units))


def input_transform(raw: torch.Tensor, settings: PairSettings) -> InputTransform:
    """The normalisation (and crop) that turns these raw particles into network inputs.

    Args:
        raw: ``(n, box, box)`` float32 raw particles.
        settings: the pair settings.

    Returns:
        The :class:`InputTransform`; ``transform(raw)`` are the network inputs.
    """
    mean1, std1 = _background_stats(raw, settings.bg_radius_px)
    n = raw.shape[0]
    mean2 = torch.zeros(n, device=raw.device)
    std2 = torch.ones(n, device=raw.device)
    if settings.train_box != settings.box:
        y = fourier_crop_images((raw - mean1[:, None, None]) / std1[:, None, None], settings.train_box)
        mean2, std2 = _background_stats(y, settings.bg_radius_px * settings.train_box / settings.box)
    return InputTransform(settings, mean1, std1, mean2, std2)


def prepare_inputs(images: torch.Tensor, settings: PairSettings) -> torch.Tensor:
    """Normalise particles as RELION does and Fourier-crop them to the training box.

    Args:
        images: ``(n, box, box)`` float32 raw particles.
        settings: the pair settings.

    Returns:
        ``(n, train_box, train_box)`` float32, background mean 0 and std 1 (at the training box).
    """
    return input_transform(images, settings)(images)


def make_targets(
    particles_norm: torch.Tensor,
    predicted_ctf: torch.Tensor,
    predicted_target: torch.Tensor,
    mask: torch.Tensor,
    scale_mode: str = "particle",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put reference images in the particles' units by least squares inside the mask.

    ``target = a·predicted_target + b`` where ``a`` is the regression slope of the particle
    on ``predicted_ctf`` (:func:`least_squares_scale`) and ``b`` matches the masked means.

    Args:
        particles_norm: ``(n, D, D)`` normalised particles.
        predicted_ctf: ``(n, D, D)`` CTF-modulated predictions (used for the fit).
        predicted_target: ``(n, D, D)`` the images to scale (the same, or CTF-free).
        mask: ``(D, D)`` bool.
        scale_mode: ``"particle"`` or ``"pooled"`` (one slope for all n).

    Returns:
        ``(targets (n, D, D), slopes (n,))``.

    Raises:
        ValueError: for an unknown ``scale_mode``.
    """
    a = least_squares_scale(particles_norm, predicted_ctf, mask)
    if scale_mode == "pooled":
        m = mask.to(particles_norm.dtype)
        pc = particles_norm - (particles_norm * m).sum((-2, -1), keepdim=True) / m.sum()
        rc = predicted_ctf - (predicted_ctf * m).sum((-2, -1), keepdim=True) / m.sum()
        pooled = (pc * rc * m).sum() / (rc * rc * m).sum().clamp_min(1e-30)
        a = torch.full_like(a, float(pooled))
    elif scale_mode != "particle":
        raise ValueError(f"scale_mode must be 'particle' or 'pooled', got {scale_mode!r}")
    m = mask.to(particles_norm.dtype)
    mean_p = (particles_norm * m).sum((-2, -1)) / m.sum()
    mean_t = (predicted_target * m).sum((-2, -1)) / m.sum()
    b = mean_p - a * mean_t
    return a[:, None, None] * predicted_target + b[:, None, None], a


def train_box_ctf(df: pd.DataFrame, settings: PairSettings, device: torch.device | str = "cpu") -> torch.Tensor:
    """Each particle's CTF at the training box (what its Fourier-cropped image carries).

    Args:
        df: ``n`` particle rows with the CTF columns and ``rlnImagePixelSize`` (Å).
        settings: the pair settings (``box`` and ``train_box``).
        device: torch device of the result.

    Returns:
        ``(n, train_box, train_box//2+1)`` float32 CTFs in the ``rfft2`` layout
        (:func:`~cryogan_core.physics.ctf.compute_ctf`) at the training pixel size
        ``rlnImagePixelSize · box / train_box``: Fourier cropping keeps the low frequencies,
        so the cropped image's CTF is the CTF on the coarser grid.
    """
    pix = torch.tensor(df["rlnImagePixelSize"].to_numpy(), dtype=torch.float32) * settings.box / settings.train_box
    params = CtfParams.from_particles(df.reset_index(drop=True))
    return compute_ctf(params, settings.train_box, pix, rfft=True).to(device)


def particle_arrays(df: pd.DataFrame, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, CtfParams, torch.Tensor]:
    """Poses, origins, CTF and pixel sizes of a particle table as tensors.

    Returns:
        ``angles_deg (n, 3)``, ``origins_A (n, 2)``, :class:`CtfParams`, ``pixel_size_A (n,)``
        (float32, on ``device``).
    """
    angles = torch.tensor(pose_angles_deg(df), dtype=torch.float32, device=device)
    origins = torch.tensor(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), dtype=torch.float32, device=device)
    pix = torch.tensor(df["rlnImagePixelSize"].to_numpy(), dtype=torch.float32, device=device)
    return angles, origins, CtfParams.from_particles(df.reset_index(drop=True), device=device), pix


def build_pairs(
    images: ParticleImages,
    df: pd.DataFrame,
    rows: np.ndarray,
    volume_for_pixel: Callable[[float], torch.Tensor],
    settings: PairSettings,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Read particles and compute their training targets and reference images
    (:func:`train_box_pairs`: the map is projected at the training box).

    Args:
        images: lazy particle images.
        df: the full particle table (positional rows index it).
        rows: ``(n,)`` positional indices of the particles to prepare.
        volume_for_pixel: pixel size (Å) -> map ``(box, box, box)`` at that pixel size.
        settings: the pair settings.
        batch_size: particles per batch.
        device: torch device for the projections.
        should_stop: called between batches (raises to abort).
        on_batch: called after each batch with its number of particles (progress lines).

    Returns:
        Dict of CPU float32 tensors: ``inputs`` and ``targets`` ``(n, train_box, train_box)``,
        ``reference_ctf`` (the scaled CTF'd prediction, what the particle should look like
        without noise, at ``train_box``), ``slope (n,)`` (in the units of the normalisation at
        the particles' box), and ``signal_var`` / ``noise_var``
        ``(n,)``: the variance over the whole particle box (before any crop) of the scaled
        CTF'd prediction (up to the training box's Nyquist) and of the particle minus it
        (:func:`~cryogan_core.metrics.images.signal_and_noise_variance`; for the SNR); with
        ``settings.ctf_aware`` also ``ctf`` ``(n, train_box, train_box//2+1)`` (:func:`train_box_ctf`).
    """
    n = len(rows)
    tb = settings.train_box
    out = {k: torch.empty((n, tb, tb), dtype=torch.float32) for k in ("inputs", "targets", "reference_ctf")}
    for k in ("slope", "signal_var", "noise_var"):
        out[k] = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, batch_size):
        if should_stop is not None:
            should_stop()
        idx = rows[start : start + batch_size]
        raw = torch.from_numpy(images.read(idx)).to(device)
        batch = train_box_pairs(raw, df.iloc[idx], volume_for_pixel, settings)
        stop = start + len(idx)
        out["inputs"][start:stop] = batch.inputs.cpu()
        out["targets"][start:stop] = batch.targets.cpu()
        out["reference_ctf"][start:stop] = batch.reference_ctf.cpu()
        out["slope"][start:stop] = batch.slope.cpu()
        out["signal_var"][start:stop] = batch.signal_var.cpu()
        out["noise_var"][start:stop] = batch.noise_var.cpu()
        if on_batch is not None:
            on_batch(len(idx))
    if settings.ctf_aware:
        out["ctf"] = train_box_ctf(df.iloc[rows], settings)
    return out


def prediction_box(box: int, box_out: int) -> int:
    """The box ``m = min(box, ⌈√2·box_out⌉)`` of the map that a ``box_out`` prediction needs.

    By the Fourier slice theorem a ``box_out`` image holds the map's frequencies on a
    rotated ``box_out`` square, whose corners reach ``box_out/√2`` along each axis: a cube of
    side ``√2·box_out`` holds every orientation's.

    Args:
        box: the map's box (px).
        box_out: the predictions' box (px, ``1 <= box_out <= box``).

    Returns:
        ``m`` (px).
    """
    return min(box, math.ceil(math.sqrt(2.0) * box_out))


def project_at_box(
    volume: torch.Tensor,
    angles_deg: torch.Tensor,
    origins_A: torch.Tensor,
    pixel_size_A: float,
    ctf: CtfParams | None = None,
    box_out: int | None = None,
    volume_cropped: torch.Tensor | None = None,
    projector: Projector | None = None,
) -> torch.Tensor:
    """RELION's prediction (:func:`~cryogan_core.physics.projection.forward_model`) at the
    map's box ``D``, or its Fourier crop to ``box_out`` at a fraction of the cost.

    For ``box_out < D`` the map Fourier-cropped to ``m =`` :func:`prediction_box` (pixel
    ``pixel_size_A·D/m``) is projected with the CTF on that grid, scaled by ``D/m`` (a
    projection sums the voxels along the beam) and Fourier-cropped to ``box_out``: the same
    as ``fourier_crop_images(forward_model(volume, ...), box_out)`` within the projector's
    interpolation error (``tests/test_pairs_train_box.py``), at about ``(m/D)²`` of its cost.

    Args:
        volume: ``(D, D, D)`` map at ``pixel_size_A``.
        angles_deg: ``(n, 3)`` RELION ``[rot, tilt, psi]`` (degrees).
        origins_A: ``(n, 2)`` ``[rlnOriginXAngst, rlnOriginYAngst]`` (Å).
        pixel_size_A: the map's pixel size (Å).
        ctf: the n CTFs, or None for no CTF.
        box_out: the predictions' box (px); None: ``D``.
        volume_cropped: ``volume`` already Fourier-cropped to ``(m, m, m)`` (a cache's), or None;
            not used with a ``projector``.
        projector: a :class:`~cryogan_core.physics.projection.Projector` of the map this
            projects (``volume`` at ``D``, or its crop at ``m``), kept by a cache; None:
            made here.

    Returns:
        ``(n, box_out, box_out)`` float32 on the volume's device (``(n, D, D)`` without ``box_out``).

    Raises:
        ValueError: ``box_out`` above ``D`` or below 1; ``volume_cropped`` not ``(m, m, m)``;
            ``projector`` of another box.
    """
    d = volume.shape[-1]
    if box_out is None or box_out == d:
        _check_projector_box(projector, d)
        return forward_model(volume if projector is None else projector, angles_deg, origins_A, pixel_size_A, ctf=ctf)
    if not 1 <= box_out < d:
        raise ValueError(f"box_out {box_out} must be between 1 and the map's box {d}")
    m = prediction_box(d, box_out)
    if projector is not None:  # it holds the cropped map already
        _check_projector_box(projector, m)
        source: torch.Tensor | Projector = projector
    else:
        if volume_cropped is None:
            volume_cropped = volume if m == d else fourier_crop_or_pad_map(volume, m)
        if tuple(volume_cropped.shape) != (m, m, m):
            raise ValueError(f"volume_cropped must be ({m}, {m}, {m}), got {tuple(volume_cropped.shape)}")
        source = volume_cropped
    images = forward_model(source, angles_deg, origins_A, pixel_size_A * d / m, ctf=ctf) * (d / m)
    return fourier_crop_images(images, box_out)


def _check_projector_box(projector: Projector | None, box: int) -> None:
    """ValueError unless ``projector`` is None or projects a ``(box, box, box)`` map."""
    if projector is not None and projector.box != box:
        raise ValueError(f"the projector's map is {projector.box} px; this prediction projects a {box}-px map")


def predictions(
    df: pd.DataFrame,
    volume_for_pixel: Callable[[float], torch.Tensor],
    with_ctf: bool = True,
    device: torch.device | str = "cpu",
    box_out: int | None = None,
) -> torch.Tensor:
    """RELION's noise-free prediction of each particle: the map projected at its pose,
    shifted by ``-origin``, multiplied by its CTF (:func:`~cryogan_core.physics.projection.forward_model`).

    With ``box_out`` smaller than the map's box ``D``, the result is the Fourier crop of
    the prediction at ``D`` (``fourier_crop_images(predictions(...), box_out)``) made at a
    fraction of its cost (:func:`project_at_box`: it agrees with the crop of the full-box
    prediction as closely as that agrees with a finer projection). The cropped maps are
    cached by a :class:`~cryogan_core.train.reference_maps.MapsForPixel`; any other
    callable is cropped per call.

    Args:
        df: ``n`` particle rows (angles, origins in Å, CTF columns, ``rlnImagePixelSize``).
        volume_for_pixel: pixel size (Å) -> map ``(box, box, box)`` at that pixel size
            (particles of several optics groups are projected from their own resampling).
        with_ctf: False: the projection without the CTF.
        device: torch device of the projections.
        box_out: the box of the predictions (px, at most the map's box); None: the map's box.

    Returns:
        ``(n, box, box)`` float32 on ``device`` (``(n, box_out, box_out)`` with ``box_out``).

    Raises:
        ValueError: ``box_out`` larger than the map's box or below 1.
    """
    angles, origins, ctf, pix = particle_arrays(df, device)
    # one cache for the maps and their crops: a plain callable's crops are made per call
    maps = volume_for_pixel if isinstance(volume_for_pixel, MapsForPixel) else MapsForPixel(volume_for_pixel)
    out: torch.Tensor | None = None
    for p in torch.unique(pix):
        sel = torch.nonzero(pix == p).squeeze(1)
        vol = maps(float(p))
        d = vol.shape[-1]
        m = prediction_box(d, box_out) if box_out is not None and 1 <= box_out < d else d
        with torch.no_grad():  # the cache's projector holds the map cropped to m
            images = project_at_box(vol, angles[sel], origins[sel], float(p), ctf[sel] if with_ctf else None, box_out,
                                    projector=maps.projector(float(p), m))
        if out is None:
            out = torch.empty((len(df),) + tuple(images.shape[1:]), dtype=images.dtype, device=images.device)
        out[sel.to(out.device)] = images
    assert out is not None, "no particles"
    return out


def full_box_pairs(
    raw: torch.Tensor,
    df: pd.DataFrame,
    volume_for_pixel: Callable[[float], torch.Tensor],
    settings: PairSettings,
    mask: torch.Tensor,
) -> tuple[InputTransform, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of training pairs at the particles' box (before any crop): the full-box
    route, which the job no longer takes (:func:`train_box_pairs` projects at the training
    box) and which the tests compare it with.

    Args:
        raw: ``(n, box, box)`` float32 raw particles.
        df: their ``n`` rows (poses, origins, CTF, pixel size).
        volume_for_pixel: pixel size (Å) -> map at that pixel size and the particles' box.
        settings: the pair settings.
        mask: ``(box, box)`` bool, the scale-fit mask.

    Returns:
        ``(transform, x_full, ref_ctf, target, slope)``: the input normalisation
        (:func:`input_transform`), the normalised particles, the scaled CTF'd prediction,
        the training target (the same, or the scaled CTF-free prediction), each
        ``(n, box, box)``, and the slopes ``(n,)`` (:func:`make_targets`).
    """
    pred_ctf = predictions(df, volume_for_pixel, True, raw.device)
    transform = input_transform(raw, settings)
    x_full = transform.normalise(raw)
    ref_ctf, slope = make_targets(x_full, pred_ctf, pred_ctf, mask, settings.scale_mode)
    target = ref_ctf
    if not settings.ctf_targets:
        pred_free = predictions(df, volume_for_pixel, False, raw.device)
        target = make_targets(x_full, pred_ctf, pred_free, mask, settings.scale_mode)[0]
    return transform, x_full, ref_ctf, target, slope


@dataclass
class BatchPairs:
    """One batch of training pairs at the training box (:func:`train_box_pairs`).

    Attributes:
        transform: the particles' input normalisation (:func:`input_transform`).
        inputs: ``(n, train_box, train_box)`` the network inputs (``transform(raw)``).
        reference_ctf: ``(n, train_box, train_box)`` the scaled CTF'd prediction, in input units.
        targets: ``(n, train_box, train_box)`` the training targets (``reference_ctf``, or the
            scaled CTF-free prediction), in input units.
        slope: ``(n,)`` the particle/prediction scale in the units of RELION's
            normalisation at the particles' box (what :func:`full_box_pairs` returns).
        signal_var, noise_var: ``(n,)`` the whole-box variances of the scaled CTF'd
            prediction (up to the training box's Nyquist) and of the normalised particle
            minus it, at the particles' box
            (:func:`~cryogan_core.metrics.images.signal_and_noise_variance`).
    """

    transform: InputTransform
    inputs: torch.Tensor
    reference_ctf: torch.Tensor
    targets: torch.Tensor
    slope: torch.Tensor
    signal_var: torch.Tensor
    noise_var: torch.Tensor


def train_box_pairs(
    raw: torch.Tensor,
    df: pd.DataFrame,
    volume_for_pixel: Callable[[float], torch.Tensor],
    settings: PairSettings,
) -> BatchPairs:
    """One batch of training pairs, with the predictions made at the training box.

    The particles are normalised and cropped (:func:`input_transform`); the map's
    predictions are made at the training box (``predictions(..., box_out=train_box)``,
    the crop of the full-box prediction at a fraction of its cost) and put in the inputs'
    units by least squares inside the training box's mask (:func:`make_targets`). With
    ``train_box == box`` this is :func:`full_box_pairs` exactly. With a smaller training
    box, the scale fit sees only the frequencies the network sees, and for the SNR the
    prediction is Fourier-padded back to the particles' box, so signal beyond the training
    box's Nyquist counts as noise (one more way the SNR is a lower bound).

    Args:
        raw: ``(n, box, box)`` float32 raw particles.
        df: their ``n`` rows (poses, origins, CTF, pixel size).
        volume_for_pixel: pixel size (Å) -> map at that pixel size and the particles' box
            (a :class:`~cryogan_core.train.reference_maps.MapsForPixel` caches its crops).
        settings: the pair settings.

    Returns:
        The :class:`BatchPairs`.
    """
    box, tb = settings.box, settings.train_box
    transform = input_transform(raw, settings)
    x_full = transform.normalise(raw)
    x = transform.crop(x_full)
    mask = settings.train_mask(raw.device)
    pred_ctf = predictions(df, volume_for_pixel, True, raw.device, box_out=tb)
    ref_ctf, slope = make_targets(x, pred_ctf, pred_ctf, mask, settings.scale_mode)
    target = ref_ctf
    if not settings.ctf_targets:
        pred_free = predictions(df, volume_for_pixel, False, raw.device, box_out=tb)
        target = make_targets(x, pred_ctf, pred_free, mask, settings.scale_mode)[0]
    if tb == box:
        ref_full = ref_ctf
    else:  # undo the crop's normalisation (T2), then pad back to the particles' box
        ref_full = fourier_crop_images(ref_ctf * transform.std2[:, None, None] + transform.mean2[:, None, None], box)
    signal_var, noise_var = signal_and_noise_variance(x_full, ref_full)
    return BatchPairs(transform, x, ref_ctf, target, slope * transform.std2, signal_var, noise_var)
