"""``cryogan denoise``: train the cGAN denoiser on refined particles and denoise them.

Gold standard by default: the network trains on half set 1 (rlnRandomSubset), is scored on
half set 2 as unseen particles, then denoises every particle. Outputs (in the output
folder): ``Denoised/particles_NNNNNN.mrcs``, ``particles.star`` (every input column kept;
rlnImageName -> denoised, rlnImageOriginalName -> original; per-particle agreement
columns), ``model.pt``, ``checkpoint.pt``, ``summary.json``, PNGs and ``logfile.pdf``.

By default the network is CTF-aware (``--ctf_aware``): it sees each particle phase-flipped
with the particle's CTF, and its output is multiplied by that CTF
(:mod:`cryogan_core.physics.ctf_filters`), so the written particles carry the CTF of their
own defocus, as the training targets do.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from loguru import logger

from cryogan_core.commands._common import map_for_particles, select_device
from cryogan_core.commands.backproject import half_set_labels
from cryogan_core.commands.denoise_options import DenoiseOptions
from cryogan_core.commands.options import options_from_mapping
from cryogan_core.commands.export_cryosparc import import_instructions
from cryogan_core.errors import InputError
from cryogan_core.io.atomic import atomic_path
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.mrc import StackWriter, read_map
from cryogan_core.io.cryosparc import write_cryosparc_particles
from cryogan_core.io.particles import load_particles
from cryogan_core.io.star import ParticleStar, format_image_name, read_particles, write_particles
from cryogan_core.io.summary import write_summary
from cryogan_core.metrics.images import circular_mask, masked_pearson, snr_db
from cryogan_core.models.symmetry_average import symmetry_averaged
from cryogan_core.models.unet import UNetGenerator
from cryogan_core.report.denoise_report import write_denoise_report
from cryogan_core.train.evaluate import (
    HeldoutSimulation,
    extra_domain_control,
    generator_cc,
    highres_control,
    image_scores,
    noise_control,
)
from cryogan_core.train.pairs import PairSettings, build_pairs, default_bg_radius_px, input_transform, particle_arrays, predictions, train_box_ctf
from cryogan_core.train.pix2pix import Pix2PixConfig, Pix2PixTrainer, denoise_images, eta_seconds, reconstruction_loss, train_pix2pix
from cryogan_core.train.selection import BestWeights
from cryogan_core.train.synthetic_pairs import synthetic_pairs

MODEL_FORMAT = "cryogan-denoiser-v1"
MIN_VALIDATION = 20  # fewer validation particles than this score too noisily to choose weights
MAX_VALIDATION = 1000  # more cost time at every validation and choose no better


@dataclass
class DenoiseInputs:
    """Where the data are: particles, reference map, optional mask, output folder."""

    star_path: Path
    output_dir: Path
    map_path: Path | None = None
    mask_path: Path | None = None
    project_dir: Path = field(default_factory=Path.cwd)


def mask_radius_from_map(mask_path: Path, pixel_size_A: float, box: int) -> float:
    """Radius (px at the particles' pixel size) of a circle holding a 3D mask's voxels > 0.5.

    Raises:
        InputError: if the mask has no voxel above 0.5.
    """
    mask, voxel_A = read_map(mask_path)
    d = mask.shape[0]
    zz, yy, xx = np.nonzero(mask > 0.5)
    if len(zz) == 0:
        raise InputError(f"{mask_path}: the mask has no voxel above 0.5")
    c = d // 2
    r_vox = float(np.sqrt((xx - c) ** 2 + (yy - c) ** 2 + (zz - c) ** 2).max())
    return min(r_vox * voxel_A / pixel_size_A + 1.0, box / 2.0)


def save_model(path: Path, generator: UNetGenerator, settings: PairSettings, pixel_size_train_A: float, extra: dict[str, Any]) -> None:
    """Write ``model.pt``: plain tensors and numbers, loadable with ``torch.load(..., weights_only=True)``."""
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


def _progress(total_steps: int, batch_size: int, every_s: float = 20.0, loss_name: str = "L1") -> Callable[[dict[str, float]], None]:
    """A per-step callback that logs step, losses, particles/s and time left every ``every_s``.

    ``loss_name`` labels the reconstruction term (``L1`` or ``L2``) in the log line.
    """
    t0 = time.time()
    state = {"last": 0.0, "first_step": None}

    def on_step(rec: dict[str, float]) -> None:
        """Log step, losses, particles/s and time left every few seconds (and at the first and last step)."""
        step = int(rec["step"])
        if state["first_step"] is None:
            state["first_step"] = step - 1
        now = time.time()
        if now - state["last"] < every_s and step != total_steps and step != state["first_step"] + 1:
            return
        state["last"] = now
        done = step - state["first_step"]
        rate = done * batch_size / max(now - t0, 1e-9)
        eta = eta_seconds(done, total_steps - state["first_step"], now - t0)
        logger.info(
            f"step {step}/{total_steps}  {loss_name} {reconstruction_loss(rec):.4f}  G_adv {rec['loss_g_gan']:.3f}  D {rec['loss_d']:.3f}  "
            f"{rate:.0f} particles/s  {eta / 60:.1f} min left"
        )

    return on_step


def _split_validation(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (training, validation): a random ``fraction`` of them, between
    ``MIN_VALIDATION`` and ``MAX_VALIDATION`` particles, or none (fraction 0, or too few rows).
    Both parts sorted; drawn with their own generator so the other subsets do not change."""
    if fraction <= 0:
        return rows, rows[:0]
    n_val = min(int(round(fraction * len(rows))), MAX_VALIDATION)
    if n_val < MIN_VALIDATION or len(rows) - n_val < MIN_VALIDATION:
        logger.warning(f"--validation_fraction {fraction}: {n_val} of {len(rows)} training particles are too few to choose the weights; using the last step's")
        return rows, rows[:0]
    val = np.random.default_rng(seed + 1).choice(rows, size=n_val, replace=False)
    return np.setdiff1d(rows, val), np.sort(val)


def _select_rows(rows: np.ndarray, n_max: int, rng: np.random.Generator) -> np.ndarray:
    """A sorted random subset of at most ``n_max`` rows (all when n_max <= 0)."""
    if n_max > 0 and len(rows) > n_max:
        return np.sort(rng.choice(rows, size=n_max, replace=False))
    return rows


def run_denoise(
    inputs: DenoiseInputs,
    options: DenoiseOptions | Mapping[str, Any] | None = None,
    should_stop: Callable[[], None] | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train (or load) the denoiser, report on held-out particles, denoise all particles.

    Args:
        inputs: particles, map, mask, output folder, project directory.
        options: the denoiser options, or ``name -> value`` for them (strings are converted;
            missing names take their defaults; see :class:`DenoiseOptions`).
        should_stop: called between training steps and batches; raises to abort.
        resume: continue from ``checkpoint.pt`` and finished stacks in the output folder
            (RELION's "Continue!"); False starts over.

    Returns:
        The summary dict (also written to ``summary.json``).

    Raises:
        InputError: for unusable inputs or options (an unknown option or a value out of
            range, missing columns, stacks, a map that cannot be matched, NaNs in images,
            an empty half set, a model of another box).
    """
    opts = options if isinstance(options, DenoiseOptions) else options_from_mapping(DenoiseOptions, options)
    t_start = time.time()
    out_dir = Path(inputs.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    project_dir = Path(inputs.project_dir)
    device = select_device(opts.device)
    seed = opts.seed
    rng = np.random.default_rng(seed)
    logger.info(f"cryogan denoise: device {device}, {torch.get_num_threads()} CPU threads, seed {seed}")

    training = not opts.model
    need_map = training or not opts.no_scores
    if need_map and inputs.map_path is None:
        raise InputError("a reference map (--in_3dref / --map) is needed to train (or to score particles; add --no_scores)")
    passthrough = tuple(Path(x) for x in opts.in_parts_passthrough.split(",") if x.strip())
    star = load_particles(
        inputs.star_path, require_ctf=True, require_images=True, require_poses=need_map, passthrough=passthrough,
        cs_project_dir=Path(opts.cs_project_dir) if opts.cs_project_dir else None, project_dir=project_dir,
    )
    df = star.particles
    images = ParticleImages(df, project_dir, inputs.star_path)
    box = images.box
    pixel_sizes = np.unique(df["rlnImagePixelSize"].to_numpy())
    pixel_size_A = float(pixel_sizes[0])
    if len(pixel_sizes) > 1:
        logger.info(f"{len(pixel_sizes)} pixel sizes among the optics groups: the map is resampled for each")
    logger.info(f"{len(df)} particles, box {box} px, {pixel_size_A:.3f} Å/px, {len(star.optics)} optics group(s)")

    volumes: dict[float, torch.Tensor] = {}

    def volume_for_pixel(p: float) -> torch.Tensor:
        """The map resampled to pixel size ``p`` (Å) and the particles' box, cached per optics group."""
        if p not in volumes:
            volumes[p] = map_for_particles(inputs.map_path, p, box, device)
        return volumes[p]

    if opts.mask_radius_px:
        mask_radius = opts.mask_radius_px
    elif inputs.mask_path is not None:
        mask_radius = mask_radius_from_map(inputs.mask_path, pixel_size_A, box)
        logger.info(f"Mask {inputs.mask_path}: circular mask of radius {mask_radius:.1f} px for fits and scores")
    else:
        mask_radius = 0.45 * box

    summary: dict[str, Any] = {"command": "denoise", "n_particles_in": int(len(df)), "box": box, "pixel_size_A": pixel_size_A, "seed": seed}
    history: list[dict[str, float]] = []
    report: dict[str, Any] = {}
    if training:
        train_box = opts.train_box or box
        if train_box > box or train_box < 16:
            raise InputError(f"--train_box {train_box}: must be between 16 and the particles' box ({box})")
        settings = PairSettings(box, train_box, default_bg_radius_px(box), mask_radius, not opts.ctf_free, opts.scale_mode,
                                ctf_aware=opts.ctf_aware and not opts.ctf_free)
        if settings.ctf_aware:
            logger.info("CTF-aware network: it sees each particle phase-flipped with its CTF; its output is multiplied by that CTF")
        generator, history, report = _train_and_report(
            inputs, opts, df, images, settings, volume_for_pixel, device, rng, should_stop, resume, out_dir, summary
        )
        pixel_size_train = pixel_size_A * box / train_box
    else:
        generator, settings, pixel_size_train = load_model(Path(opts.model), device)
        expected = round(box * pixel_size_A / pixel_size_train)
        if settings.box != box or abs(pixel_size_A - pixel_size_train * settings.train_box / settings.box) > 1e-3 * pixel_size_A:
            raise InputError(
                f"--model {opts.model}: trained on box {settings.box} at {pixel_size_train * settings.train_box / settings.box:.3f} Å/px; "
                f"these particles are box {box} at {pixel_size_A:.3f} Å/px (re-extract or rescale them to match; expected box {expected})"
            )
        logger.info(f"Loaded {opts.model}: no training, denoising only (train box {settings.train_box})")
        summary["model_from"] = opts.model

    if opts.average_symmetries > 1:
        logger.info(f"Each particle is denoised {opts.average_symmetries} times (flips / 90° rotations) and averaged")
    denoiser = symmetry_averaged(generator, opts.average_symmetries)
    written = _denoise_all(inputs, opts, star, images, denoiser, settings, volume_for_pixel if need_map else None, project_dir, out_dir, device, should_stop, resume)
    summary.update(written["summary"])
    summary.update({f"heldout_{k}": v for k, v in report.get("scores", {}).items()})
    summary.update(report.get("bias", {}))
    summary["train_box"] = settings.train_box
    summary["pixel_size_output_A"] = pixel_size_train
    summary["ctf_targets"] = settings.ctf_targets
    summary["ctf_aware"] = settings.ctf_aware
    summary["wall_time_s"] = time.time() - t_start
    summary["options"] = dataclasses.asdict(opts)
    write_denoise_report(out_dir, history, report, written.get("scores"), recon_loss=opts.recon_loss)
    write_summary(out_dir / "summary.json", summary)
    logger.info(f"Done in {summary['wall_time_s'] / 60:.1f} min: {summary['n_particles_written']} denoised particles in {out_dir / 'particles.star'}")
    return summary


def _train_and_report(
    inputs: DenoiseInputs,
    opts: DenoiseOptions,
    df: pd.DataFrame,
    images: ParticleImages,
    settings: PairSettings,
    volume_for_pixel: Callable[[float], torch.Tensor],
    device: torch.device,
    rng: np.random.Generator,
    should_stop: Callable[[], None] | None,
    resume: bool,
    out_dir: Path,
    summary: dict[str, Any],
) -> tuple[UNetGenerator, list[dict[str, float]], dict[str, Any]]:
    """Build pairs, train on half 1 (resuming from a checkpoint), score half 2, bias controls."""
    labels = half_set_labels(df, opts.seed)
    train_rows = _select_rows(np.flatnonzero(labels == 1), opts.max_train_particles, rng)
    heldout_rows = _select_rows(np.flatnonzero(labels == 2), opts.n_report, rng)
    train_rows, val_rows = _split_validation(train_rows, opts.validation_fraction, opts.seed)
    logger.info(
        f"Training on {len(train_rows)} particles of half set 1"
        + (f" ({len(val_rows)} more of half set 1 choose the weights)" if len(val_rows) else "")
        + f"; reporting on {len(heldout_rows)} unseen particles of half set 2"
    )
    t0 = time.time()
    train = build_pairs(images, df, train_rows, volume_for_pixel, settings, device=device, should_stop=should_stop)
    held = build_pairs(images, df, heldout_rows, volume_for_pixel, settings, device=device, should_stop=should_stop)
    best: BestWeights | None = None
    if len(val_rows):
        val = build_pairs(images, df, val_rows, volume_for_pixel, settings, device=device, should_stop=should_stop)
        best = BestWeights(val["inputs"], val["targets"], settings.train_mask(), ctf=val.get("ctf"))
    logger.info(f"Prepared {len(train_rows) + len(val_rows) + len(heldout_rows)} training/validation/report pairs in {time.time() - t0:.0f} s (projection, CTF, scale fit)")
    summary["estimated_snr_db"] = _estimated_snr(opts, [train, held] + ([val] if len(val_rows) else []))

    @functools.cache
    def synthetic() -> dict[str, torch.Tensor] | None:
        """The synthetic pairs, made on the first call (only when there are steps left to train)."""
        return _synthetic(opts, images, df, train_rows, volume_for_pixel, settings, train, device, should_stop)

    summary["n_synthetic_pairs"] = opts.synthetic_pairs

    n_steps = opts.n_steps
    config = Pix2PixConfig(
        l1_weight=opts.l1_weight, recon_loss=opts.recon_loss, gan_weight=opts.gan_weight, lr=opts.lr, beta1=opts.beta1,
        batch_size=opts.batch_size, n_steps=n_steps, seed=opts.seed,
        generator={"base_channels": opts.base_channels, "depth": opts.depth, "n_res_blocks": opts.n_res_blocks},
        # the 70 x 70 PatchGAN (3 layers) needs >= 32 px; smaller training boxes judge 34-px patches
        discriminator={"n_layers": 3 if settings.train_box >= 32 else 2},
    )
    if opts.recon_loss == "l2" and opts.gan_weight > 0:
        logger.warning(f"--recon_loss l2 with --gan_weight {opts.gan_weight:g}: the squared error is ~10x smaller than L1, so the "
                       "adversarial term dominates (at -20 dB this lowered the unseen CC from 0.52 to 0.40); --gan_weight 0 is advised")
    trainer = Pix2PixTrainer(config, device)
    validation_key = {"rows": len(val_rows), "every": opts.validate_every, "synthetic_pairs": opts.synthetic_pairs}
    extra = n_steps + n_steps // 2  # the last step of the optional training on both halves
    # weights of the generator that made the held-out report, kept while it trains on both halves
    report_weights: dict[str, torch.Tensor] | None = None
    ckpt = out_dir / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        in_both_halves = opts.train_both_halves and state.get("report_weights") is not None
        expected = {**_config_dict(config), "n_steps": extra} if in_both_halves else _config_dict(config)
        # a checkpoint of a network trained with or without the CTF-aware mode only resumes in the same mode
        same_mode = bool(state.get("settings", {}).get("ctf_aware", False)) == settings.ctf_aware
        if _stored_config(state) == expected and state.get("validation") == validation_key and same_mode:
            trainer.load_state_dict(state)
            if best is not None and state.get("selection") is not None:
                best.load_state_dict(state["selection"])
            if in_both_halves:
                report_weights = state["report_weights"]
                trainer.config.n_steps = extra
            logger.info(f"Continuing from {ckpt} at step {trainer.step_count}/{trainer.config.n_steps}"
                        + (" (training on both halves)" if in_both_halves else ""))
        else:
            logger.warning(f"{ckpt} was made with other training options: starting training over")

    def save_checkpoint() -> None:
        """Write the trainer's state (and the best weights so far) to checkpoint.pt (atomically)."""
        state = trainer.state_dict()
        state["validation"] = validation_key
        state["settings"] = settings.to_dict()
        state["selection"] = best.state_dict() if best is not None else None
        state["report_weights"] = report_weights
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)

    def log_validation(selection: BestWeights, step: int) -> None:
        """Score the generator on the validation particles; the best weights are kept."""
        cc = selection.update(trainer.generator, step)
        logger.info(f"Validation at step {step}: CC {cc:.3f} on {len(val_rows)} particles of half set 1 (best {selection.best_cc:.3f} at step {selection.best_step})")

    validate = None if best is None else functools.partial(log_validation, best)

    def use_best_weights() -> None:
        """Load the best-scoring weights into the generator and say so."""
        if best is not None and best.restore(trainer.generator):
            logger.info(f"Using the weights of step {best.best_step}: validation CC {best.best_cc:.3f} (last step {best.last_cc:.3f})")
            summary.update({"validation_best_step": best.best_step, "validation_cc_best": best.best_cc, "validation_cc_last": best.last_cc})

    if report_weights is None:
        fit = _with_synthetic(train, synthetic() if trainer.step_count < n_steps else None)
        train_pix2pix(
            trainer, fit["inputs"], fit["targets"], n_steps, on_step=_progress(n_steps, config.batch_size, loss_name=config.recon_loss.upper()),
            checkpoint=save_checkpoint, should_stop=should_stop, validate=validate, validate_every=opts.validate_every,
            ctf=fit.get("ctf"),
        )
        use_best_weights()
        report_generator = trainer.generator
    else:
        # interrupted while training on both halves: the report is made again with the weights
        # chosen before that phase, never with weights that have seen half set 2
        report_generator = copy.deepcopy(trainer.generator)
        report_generator.load_state_dict(report_weights)
    summary["train_steps"] = trainer.step_count
    summary["n_train_particles"] = int(len(train_rows))
    summary["n_validation_particles"] = int(len(val_rows))
    summary["n_heldout_particles"] = int(len(heldout_rows))

    # the report is made by the same denoiser as the written particles (symmetry averaging included)
    report_denoiser = symmetry_averaged(report_generator, opts.average_symmetries)
    report = _heldout_report(report_denoiser, held, settings, df.iloc[heldout_rows], volume_for_pixel, opts, device)
    report["average_symmetries"] = opts.average_symmetries
    report["estimated_snr_db"] = summary["estimated_snr_db"]
    summary["train_cc_denoised"] = _training_fit(report_denoiser, train, settings, len(heldout_rows), report["scores"]["cc_denoised"])
    generator = trainer.generator
    if opts.train_both_halves:
        if report_weights is None:
            report_weights = {k: v.detach().clone() for k, v in trainer.generator.state_dict().items()}
        both_rows = np.concatenate([train_rows, heldout_rows])
        both = _with_synthetic(build_pairs(images, df, both_rows, volume_for_pixel, settings, device=device, should_stop=should_stop),
                               synthetic() if trainer.step_count < extra else None)
        trainer.config.n_steps = extra
        logger.info(f"Training further on both halves ({len(both_rows)} particles) up to step {extra}")
        train_pix2pix(trainer, both["inputs"], both["targets"], extra, on_step=_progress(extra, config.batch_size, loss_name=config.recon_loss.upper()), checkpoint=save_checkpoint,
                      should_stop=should_stop, validate=validate, validate_every=opts.validate_every, ctf=both.get("ctf"))
        use_best_weights()
        summary["train_steps"] = trainer.step_count
    if best is not None:
        report["validation_curve"] = list(best.curve)
        report["validation_best_step"] = best.best_step
    save_model(out_dir / "model.pt", generator, settings, float(df["rlnImagePixelSize"].iloc[0]) * settings.box / settings.train_box,
               {"train_steps": trainer.step_count, "seed": opts.seed})
    return generator, trainer.history, report


def _synthetic(
    opts: DenoiseOptions,
    images: ParticleImages,
    df: pd.DataFrame,
    train_rows: np.ndarray,
    volume_for_pixel: Callable[[float], torch.Tensor],
    settings: PairSettings,
    train: dict[str, torch.Tensor],
    device: torch.device,
    should_stop: Callable[[], None] | None,
) -> dict[str, torch.Tensor] | None:
    """``opts.synthetic_pairs`` extra pairs (:mod:`cryogan_core.train.synthetic_pairs`), or None.

    The signal's scale is the median of the real training pairs' slopes; the seed is
    ``opts.seed``, so a resumed run trains on the same pairs.
    """
    if opts.synthetic_pairs == 0:
        return None
    t0 = time.time()
    slope = float(train["slope"].median())
    pairs, _ = synthetic_pairs(images, df, train_rows, volume_for_pixel, settings, opts.synthetic_pairs, slope, opts.seed,
                               device=device, should_stop=should_stop)
    logger.info(f"Made {opts.synthetic_pairs} synthetic training pairs in {time.time() - t0:.0f} s: the map at new poses with the CTFs "
                f"and the noise (residuals) of the {len(train_rows)} training particles, signal scale {slope:.3f}")
    return pairs


def _with_synthetic(pairs: dict[str, torch.Tensor], synthetic: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The real pairs' ``inputs``, ``targets`` (and ``ctf``) followed by the synthetic ones."""
    if synthetic is None:
        return pairs
    keys = [k for k in ("inputs", "targets", "ctf") if k in pairs]
    return {k: torch.cat([pairs[k], synthetic[k]]) for k in keys}


# Below this particle SNR the adversarial default painted the reference over what the map
# lacks (README, "What the denoiser recovers": r 0.21 at -20 dB against 0.62 at -10 dB) and
# lost 0.09 in CC to L2 without the adversarial term.
LOW_SNR_DB = -15.0


def _estimated_snr(opts: DenoiseOptions, pair_sets: list[dict[str, torch.Tensor]]) -> float:
    """The particles' SNR (dB) from their training pairs, logged, with advice below ``LOW_SNR_DB``.

    Signal: each particle's scaled CTF'd prediction; noise: the particle minus it; both over
    the whole box (:func:`cryogan_core.metrics.images.snr_db`, the definition ``cryogan
    simulate`` uses, so a simulation at -10 dB reads about -10 dB). Pose, CTF or map errors
    count as noise, so it is a lower bound on the particles' true SNR.

    Args:
        opts: the job options (the advice depends on ``gan_weight``).
        pair_sets: outputs of :func:`build_pairs` with ``signal_var`` and ``noise_var``.

    Returns:
        The SNR in dB.
    """
    signal = torch.cat([p["signal_var"] for p in pair_sets])
    noise = torch.cat([p["noise_var"] for p in pair_sets])
    value = snr_db(signal, noise)
    logger.info(f"Particle SNR {value:.1f} dB ({len(signal)} particles; signal: the map's CTF'd projection at each pose, "
                "scaled by least squares; noise: the particle minus it; whole box, as `cryogan simulate` defines it)")
    if value < LOW_SNR_DB and opts.gan_weight > 0:
        logger.warning(f"Particle SNR {value:.1f} dB is below {LOW_SNR_DB:g} dB: there the adversarial term paints the reference "
                       "over what the map lacks and lowers the CC; --recon_loss l2 --gan_weight 0 is advised (README), "
                       "and read bias_extra_domain_recovery_r in summary.json")
    return value


def _training_fit(generator: torch.nn.Module, train: dict[str, torch.Tensor], settings: PairSettings, n: int, cc_heldout: float) -> float:
    """Mean CC (inside the mask) of denoised training particles with their targets, over the
    first ``n`` training pairs: next to the held-out CC it tells over-fitting (training CC
    well above held-out) from under-fitting (both alike). Logged and returned."""
    n = max(1, min(n, train["inputs"].shape[0]))
    ctf = train.get("ctf")
    cc = generator_cc(generator, train["inputs"][:n], train["targets"][:n], settings.train_mask(), ctf=None if ctf is None else ctf[:n])
    verdict = "over-fitting: more particles or fewer steps would help" if cc - cc_heldout > 0.05 else "no over-fitting"
    logger.info(f"Fit: CC with the target {cc:.3f} on {n} training particles vs {cc_heldout:.3f} on unseen ones ({verdict})")
    return cc


def _model_fingerprint(generator: torch.nn.Module, settings: PairSettings, dtype: type) -> str:
    """SHA-1 of the network weights, the pair settings and the output dtype."""
    import hashlib

    h = hashlib.sha1()
    for key, value in sorted(generator.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(sorted(settings.to_dict().items())).encode())
    h.update(np.dtype(dtype).name.encode())
    return h.hexdigest()


def _config_dict(config: Pix2PixConfig) -> dict:
    """The config as stored in checkpoints."""
    from dataclasses import asdict

    return asdict(config)


def _stored_config(state: dict) -> dict | None:
    """A checkpoint's config as :func:`_config_dict` would write it now, or None if unreadable.

    Fields a checkpoint predates take the :class:`Pix2PixConfig` default, which is what that
    older run trained with (e.g. ``recon_loss`` "l1"); a config with unknown fields (a newer
    version's) gives None, so training starts over.
    """
    stored = state.get("config")
    if not isinstance(stored, dict):
        return None
    try:
        return _config_dict(Pix2PixConfig(**stored))
    except TypeError:
        return None


def _heldout_report(
    generator: torch.nn.Module,
    held: dict[str, torch.Tensor],
    settings: PairSettings,
    held_df: pd.DataFrame,
    volume_for_pixel: Callable[[float], torch.Tensor],
    opts: DenoiseOptions,
    device: torch.device,
) -> dict[str, Any]:
    """Scores of raw and denoised unseen particles against their references, and bias controls."""
    tb = settings.train_box
    pixel_train = float(held_df["rlnImagePixelSize"].iloc[0]) * settings.box / tb
    mask = settings.train_mask()
    held_ctf = held.get("ctf")
    denoised = denoise_images(generator, held["inputs"], ctf=held_ctf)
    raw_scores = image_scores(held["inputs"], held["reference_ctf"], mask, pixel_train)
    den_scores = image_scores(denoised, held["targets"], mask, pixel_train)
    scores = {
        "cc_raw": float(raw_scores["cc"].mean()),
        "cc_denoised": float(den_scores["cc"].mean()),
        "fsc_40_10A_raw": float(raw_scores["fsc_band"].mean()),
        "fsc_40_10A_denoised": float(den_scores["fsc_band"].mean()),
        "psnr_db_raw": float(np.mean(raw_scores["psnr_db"])),
        "psnr_db_denoised": float(np.mean(den_scores["psnr_db"])),
    }
    logger.info(
        f"Held-out half set 2 ({len(held_df)} particles): CC with reference {scores['cc_raw']:.3f} raw -> {scores['cc_denoised']:.3f} denoised; "
        f"mean FSC 40-10 Å {scores['fsc_40_10A_raw']:.3f} -> {scores['fsc_40_10A_denoised']:.3f}"
    )
    report: dict[str, Any] = {"scores": scores, "raw": raw_scores, "denoised_scores": den_scores,
                              "montage": {"raw (unseen)": held["inputs"][:8].numpy(), "denoised": denoised[:8].numpy(), "reference": held["targets"][:8].numpy()}}
    if not opts.no_bias_controls:
        def denoiser_with(ctf: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
            """The trained generator on ``(n, d, d)`` float32 images (CPU in, CPU out); a
            CTF-aware one uses ``ctf`` (the n particles' CTFs, cycled when n is larger)."""
            def denoise(x: torch.Tensor) -> torch.Tensor:
                """``(n, d, d)`` float32 network inputs -> ``(n, d, d)`` float32 outputs (CPU)."""
                c = None if ctf is None else ctf[torch.arange(x.shape[0]) % ctf.shape[0]]
                return denoise_images(generator, x.cpu(), ctf=c)
            return denoise

        # pure-noise inputs get the held-out particles' CTFs (a CTF-aware network needs one)
        bias = noise_control(denoiser_with(held_ctf), held["inputs"], denoised, held["targets"], mask, seed=opts.seed)
        angles, origins, ctf, pix = particle_arrays(held_df, device)
        p0 = float(pix[0])
        sel = torch.nonzero(pix == p0).squeeze(1)
        slope = float(held["slope"].median())
        sel_ctf = None if held_ctf is None else held_ctf[sel.cpu()]
        held = HeldoutSimulation(angles[sel], origins[sel], ctf[sel], p0, slope, settings)
        bias.update(extra_domain_control(denoiser_with(sel_ctf), volume_for_pixel(p0), held, seed=opts.seed))
        bias.update(highres_control(denoiser_with(sel_ctf), volume_for_pixel(p0), held, seed=opts.seed))
        logger.info(
            f"Bias controls: noise outputs' best CC with references {bias['bias_noise_max_cc_with_references']:.3f} "
            f"(real particles {bias['bias_real_max_cc_with_references']:.3f}), noise output RMS ratio {bias['bias_noise_output_rms_ratio']:.2f}; "
            f"extra domain ({100 * bias['bias_extra_domain_mass_fraction']:.0f}% mass) recovered r = {bias['bias_extra_domain_recovery_r']:.2f} "
            f"(noise-free {bias['bias_extra_domain_r_noise_free']:.2f}); "
            f"FRC {bias['bias_highres_band_A'][0]:.0f}-{bias['bias_highres_band_A'][1]:.0f} Å with the reference: "
            f"{bias['bias_highres_frc_full_map']:.3f} for particles of the map, {bias['bias_highres_frc_lowpass_map']:.3f} "
            f"for particles of the map low-passed at {bias['bias_highres_band_A'][0]:.0f} Å (painted detail)"
        )
        report["bias"] = bias
    return report


def _denoise_all(
    inputs: DenoiseInputs,
    opts: DenoiseOptions,
    star: ParticleStar,
    images: ParticleImages,
    generator: torch.nn.Module,
    settings: PairSettings,
    volume_for_pixel: Callable[[float], torch.Tensor] | None,
    project_dir: Path,
    out_dir: Path,
    device: torch.device,
    should_stop: Callable[[], None] | None,
    resume: bool,
) -> dict[str, Any]:
    """Denoise every particle into stacks of ``stack_size``; write particles.star.

    Finished stacks (and their score files) are kept on a resumed run.
    """
    df = star.particles
    n = len(df)
    tb = settings.train_box
    stack_size = max(1, opts.stack_size)
    dtype = np.float16 if opts.float16 else np.float32
    den_dir = out_dir / "Denoised"
    den_dir.mkdir(exist_ok=True)
    # finished stacks are kept on "Continue!" only if the same network made them
    fingerprint = _model_fingerprint(generator, settings, dtype)
    marker = den_dir / ".model_fingerprint"
    if resume and (not marker.is_file() or marker.read_text() != fingerprint):
        if any(den_dir.glob("particles_*.mrcs")):
            logger.info("Denoised stacks of an earlier run were made by another network: denoising all particles again")
        resume = False
    with atomic_path(marker) as tmp:
        Path(tmp).write_text(fingerprint)
    generator.eval()
    score = volume_for_pixel is not None
    cc_raw = np.full(n, np.nan, dtype=np.float32)
    cc_den = np.full(n, np.nan, dtype=np.float32)
    names: list[str] = []
    mask_full = circular_mask(settings.box, settings.mask_radius_px, device=device)
    mask_train = settings.train_mask(device)
    t0 = time.time()
    done = 0
    for chunk_start in range(0, n, stack_size):
        rows = np.arange(chunk_start, min(chunk_start + stack_size, n))
        stack_path = den_dir / f"particles_{chunk_start // stack_size + 1:06d}.mrcs"
        scores_path = den_dir / f".scores_{chunk_start // stack_size + 1:06d}.npy"
        rel = os.path.relpath(stack_path.resolve(), project_dir.resolve())
        names.extend(format_image_name(i + 1, rel) for i in range(len(rows)))
        if resume and stack_path.is_file() and (scores_path.is_file() or not score):
            if score:
                s = np.load(scores_path)
                cc_raw[rows], cc_den[rows] = s[0], s[1]
            continue
        with StackWriter(stack_path, len(rows), tb, float(df["rlnImagePixelSize"].iloc[0]) * settings.box / tb, dtype=dtype) as writer:
            for b in range(0, len(rows), 256):
                if should_stop is not None:
                    should_stop()
                idx = rows[b : b + 256]
                raw = torch.from_numpy(images.read(idx)).to(device)
                transform = input_transform(raw, settings)
                x = transform(raw)
                ctf_tb = train_box_ctf(df.iloc[idx], settings, device) if settings.ctf_aware else None
                y = denoise_images(generator, x, batch_size=len(idx), ctf=ctf_tb).to(device)
                writer.write(b, y.cpu().numpy().astype(dtype))
                if score:
                    pred_ctf = predictions(df.iloc[idx], volume_for_pixel, True, device)
                    pred = pred_ctf if settings.ctf_targets else predictions(df.iloc[idx], volume_for_pixel, False, device)
                    cc_raw[idx] = masked_pearson(raw, pred_ctf, mask_full).cpu().numpy()
                    cc_den[idx] = masked_pearson(y, transform.crop(pred), mask_train).cpu().numpy()
                done += len(idx)
        if score:
            with atomic_path(scores_path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.stack([cc_raw[rows], cc_den[rows]]))
        rate = done / max(time.time() - t0, 1e-9)
        logger.info(f"Denoised {chunk_start + len(rows)}/{n} particles ({rate:.0f} particles/s)")
    out = df.copy()
    if "rlnImageOriginalName" in out:
        logger.info("rlnImageOriginalName is replaced by the names of the particles given to this job")
    out["rlnImageOriginalName"] = df["rlnImageName"].to_numpy()
    out["rlnImageName"] = names
    if score:
        out["rlnCryoganCCRaw"] = cc_raw.astype(np.float64)
        out["rlnCryoganCCDenoised"] = cc_den.astype(np.float64)
    if tb != settings.box:
        out["rlnImagePixelSize"] = df["rlnImagePixelSize"].to_numpy() * settings.box / tb
        out["rlnImageSize"] = tb
    version = star.source_version if star.source_version in ("3.1", "4.0", "5.0") else "3.1"
    if version != star.source_version:
        logger.info(f"Input is {star.source_version}: particles.star is written in RELION 3.1+ format")
    write_particles(out_dir / "particles.star", star.with_particles(out), version=version)
    export = write_cryosparc_particles(read_particles(out_dir / "particles.star", require_ctf=False, require_images=True), out_dir, project_dir)
    logger.info(f"For cryoSPARC: Import Result Group with {export.csg_path} (slots: {', '.join(export.slots)})")
    elapsed = time.time() - t0
    result: dict[str, Any] = {
        "summary": {
            "n_particles_written": int(n),
            "denoise_particles_per_s": done / elapsed if done else None,
            "star_version_written": version,
            "cryosparc_import": {"job": "Import Result Group", "csg": str(export.csg_path.absolute()), "cs": str(export.cs_path.absolute()),
                                 "steps": import_instructions(export.csg_path, out_dir.absolute().name)},
        }
    }
    if score:
        result["scores"] = {"cc_raw": cc_raw, "cc_denoised": cc_den}
        result["summary"]["mean_cc_raw_all"] = float(np.nanmean(cc_raw))
        result["summary"]["mean_cc_denoised_all"] = float(np.nanmean(cc_den))
    return result
