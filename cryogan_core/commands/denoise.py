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

This module is the orchestration; its pieces are :mod:`~cryogan_core.commands.denoise_pairs`
(the training set), :mod:`~cryogan_core.commands.denoise_model` (``model.pt``, checkpoint
config), :mod:`~cryogan_core.commands.denoise_scores` (SNR, fit, held-out report) and
:mod:`~cryogan_core.commands.denoise_outputs` (the denoised particles).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from loguru import logger

from cryogan_core.commands._common import available_memory_bytes, map_for_particles, select_device
from cryogan_core.commands.backproject import half_set_labels
from cryogan_core.commands.denoise_model import MODEL_FORMAT, config_dict, load_model, save_model, stored_config
from cryogan_core.commands.denoise_options import DenoiseInputs, DenoiseOptions
from cryogan_core.commands.denoise_outputs import denoise_all
from cryogan_core.commands.denoise_pace import pace_advice
from cryogan_core.commands.denoise_pairs import (
    MAX_VALIDATION,
    MIN_VALIDATION,
    max_pairs_in_memory,
    select_rows,
    split_validation,
    synthetic_pairs_that_fit,
    synthetic_training_pairs,
    with_synthetic,
)
from cryogan_core.commands.denoise_scores import LOW_SNR_DB, estimated_snr, heldout_report, training_fit
from cryogan_core.commands.options import options_from_mapping
from cryogan_core.errors import InputError
from cryogan_core.io.atomic import atomic_path
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.mrc import read_map
from cryogan_core.io.particles import check_ctf_columns, load_particles
from cryogan_core.io.summary import write_summary
from cryogan_core.models.symmetry_average import symmetry_averaged
from cryogan_core.models.unet import UNetGenerator
from cryogan_core.report.denoise_report import write_denoise_report
from cryogan_core.report.progress import ProgressLog, eta_seconds
from cryogan_core.train.pairs import PairSettings, build_pairs, default_bg_radius_px
from cryogan_core.train.pix2pix import Pix2PixConfig, Pix2PixTrainer, reconstruction_loss, train_pix2pix
from cryogan_core.train.reference_maps import MapsForPixel
from cryogan_core.train.selection import BestWeights

# the API, with what it re-exports from denoise_model, denoise_pairs and denoise_scores
__all__ = [
    "LOW_SNR_DB", "MAX_VALIDATION", "MIN_VALIDATION", "MODEL_FORMAT", "DenoiseInputs", "DenoiseOptions", "load_model",
    "mask_radius_from_map", "run_denoise", "save_model",
]


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


def _progress(
    total_steps: int, batch_size: int, every_s: float = 20.0, loss_name: str = "L1", advise: Callable[[float], str | None] | None = None,
) -> Callable[[dict[str, float]], None]:
    """A per-step callback that logs step, losses, particles/s and time left every ``every_s``.

    ``loss_name`` labels the reconstruction term (``L1`` or ``L2``) in the log line. ``advise``
    is called once, with the time left (s) at the first log after the first step (the pace
    measured over ``every_s``, past the warm-up); a line it returns is logged as a warning.
    """
    t0 = time.time()
    state = {"last": 0.0, "first_step": None, "advised": False}

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
        if advise is not None and not state["advised"] and done > 1:
            state["advised"] = True
            line = advise(eta)
            if line:
                logger.warning(line)

    return on_step


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
            an empty half set, a model of another box, particles premultiplied by their CTF
            or phase-flipped, CTF columns in another unit).
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
    check_ctf_columns(inputs.star_path, df)
    images = ParticleImages(df, project_dir, inputs.star_path)
    box = images.box
    pixel_sizes = np.unique(df["rlnImagePixelSize"].to_numpy())
    pixel_size_A = float(pixel_sizes[0])
    if len(pixel_sizes) > 1:
        logger.info(f"{len(pixel_sizes)} pixel sizes among the optics groups: the map is resampled for each")
    logger.info(f"{len(df)} particles, box {box} px, {pixel_size_A:.3f} Å/px, {len(star.optics)} optics group(s)")

    # the map resampled to each optics group's pixel size at the particles' box (and its
    # crops to the training box), each made once
    volume_for_pixel = MapsForPixel(lambda p: map_for_particles(inputs.map_path, p, box, device))

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
        model_pixel_A = pixel_size_train * settings.train_box / settings.box
        if settings.box != box or abs(pixel_size_A - model_pixel_A) > 1e-3 * pixel_size_A:
            raise InputError(
                f"--model {opts.model}: trained on box {settings.box} at {model_pixel_A:.3f} Å/px; these particles are "
                f"box {box} at {pixel_size_A:.3f} Å/px (re-extract or rescale them to box {settings.box} at "
                f"{model_pixel_A:.3f} Å/px, or train a model on them)"
            )
        logger.info(f"Loaded {opts.model}: no training, denoising only (train box {settings.train_box})")
        summary["model_from"] = opts.model

    if opts.average_symmetries > 1:
        logger.info(f"Each particle is denoised {opts.average_symmetries} times (flips / 90° rotations) and averaged")
    denoiser = symmetry_averaged(generator, opts.average_symmetries)
    # the map serves training whatever --no_scores says; the per-particle scores only without it
    scores_from = None if opts.no_scores else volume_for_pixel
    written = denoise_all(inputs, opts, star, images, denoiser, settings, scores_from, project_dir, out_dir, device, should_stop, resume)
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
    pixel_size_train_A = float(df["rlnImagePixelSize"].iloc[0]) * settings.box / settings.train_box
    labels = half_set_labels(df, opts.seed, inputs.star_path)
    half1 = np.flatnonzero(labels == 1)
    n_train = opts.max_train_particles
    cap = max_pairs_in_memory(settings.train_box, settings.ctf_aware, available_memory_bytes())
    if cap is not None and min(len(half1), n_train or len(half1)) > cap:
        logger.warning(
            f"Training on {cap} particles of half set 1, not {min(len(half1), n_train or len(half1))}: the training pairs at box "
            f"{settings.train_box} px would take more than a quarter of this machine's memory (--train_box crops them)"
        )
        n_train = cap
    train_rows = select_rows(half1, n_train, rng)
    heldout_rows = select_rows(np.flatnonzero(labels == 2), opts.n_report, rng)
    train_rows, val_rows = split_validation(train_rows, opts.validation_fraction, opts.seed)
    n_synthetic = synthetic_pairs_that_fit(opts.synthetic_pairs, len(train_rows), cap)
    if n_synthetic < opts.synthetic_pairs:
        logger.warning(
            f"--synthetic_pairs {opts.synthetic_pairs}: making {n_synthetic}; more, with the {len(train_rows)} training pairs, "
            f"would take more than a quarter of this machine's memory at box {settings.train_box} px (--train_box crops them)"
        )
    logger.info(
        f"Training on {len(train_rows)} particles of half set 1"
        + (f" ({len(val_rows)} more of half set 1 choose the weights)" if len(val_rows) else "")
        + f"; reporting on {len(heldout_rows)} unseen particles of half set 2"
    )
    t0 = time.time()
    # one projection of the map per particle: ~58 particles/s at 128 px on 2 CPU threads, so minutes for a large set
    progress = ProgressLog("Preparing training/validation/report pairs:", len(train_rows) + len(val_rows) + len(heldout_rows))
    prepare = functools.partial(build_pairs, images, df, volume_for_pixel=volume_for_pixel, settings=settings, device=device,
                                should_stop=should_stop, on_batch=progress.advance)
    train = prepare(train_rows)
    held = prepare(heldout_rows)
    best: BestWeights | None = None
    if len(val_rows):
        val = prepare(val_rows)
        best = BestWeights(val["inputs"], val["targets"], settings.train_mask(), ctf=val.get("ctf"))
    logger.info(f"Prepared {len(train_rows) + len(val_rows) + len(heldout_rows)} training/validation/report pairs in {time.time() - t0:.0f} s (projection, CTF, scale fit)")
    summary["estimated_snr_db"] = estimated_snr(opts, [train, held] + ([val] if len(val_rows) else []))

    @functools.cache
    def synthetic() -> dict[str, torch.Tensor] | None:
        """The synthetic pairs, made on the first call (only when there are steps left to train)."""
        return synthetic_training_pairs(opts, n_synthetic, images, df, train_rows, volume_for_pixel, settings, train, device, should_stop)

    summary["n_synthetic_pairs"] = n_synthetic

    n_steps = opts.n_steps
    config = Pix2PixConfig(
        l1_weight=opts.l1_weight, recon_loss=opts.recon_loss, gan_weight=opts.gan_weight, lr=opts.lr, beta1=opts.beta1,
        batch_size=opts.batch_size, n_steps=n_steps, seed=opts.seed,
        generator={"base_channels": opts.base_channels, "depth": opts.depth, "n_res_blocks": opts.n_res_blocks},
        # the 70 x 70 PatchGAN (3 layers) needs >= 32 px; smaller training boxes judge 34-px patches
        discriminator={"n_layers": 3 if settings.train_box >= 32 else 2, "base_channels": opts.disc_channels},
    )
    if opts.recon_loss == "l2" and opts.gan_weight > 0:
        logger.warning(f"--recon_loss l2 with --gan_weight {opts.gan_weight:g}: the squared error is ~10x smaller than L1, so the "
                       "adversarial term dominates (at -20 dB this lowered the unseen CC from 0.52 to 0.40); --gan_weight 0 is advised")
    trainer = Pix2PixTrainer(config, device)
    validation_key = {"rows": len(val_rows), "every": opts.validate_every, "synthetic_pairs": n_synthetic}
    extra = n_steps + n_steps // 2  # the last step of the optional training on both halves
    # weights of the generator that made the held-out report, kept while it trains on both halves
    report_weights: dict[str, torch.Tensor] | None = None
    ckpt = out_dir / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        in_both_halves = opts.train_both_halves and state.get("report_weights") is not None
        expected = {**config_dict(config), "n_steps": extra} if in_both_halves else config_dict(config)
        # a checkpoint of a network trained with or without the CTF-aware mode only resumes in the same mode
        same_mode = bool(state.get("settings", {}).get("ctf_aware", False)) == settings.ctf_aware
        if stored_config(state) == expected and state.get("validation") == validation_key and same_mode:
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
        fit = with_synthetic(train, synthetic() if trainer.step_count < n_steps else None)
        train_pix2pix(
            trainer, fit["inputs"], fit["targets"], n_steps, on_step=_progress(
                n_steps, config.batch_size, loss_name=config.recon_loss.upper(),
                advise=lambda eta_s: pace_advice(settings.train_box, pixel_size_train_A, eta_s, str(device))),
            checkpoint=save_checkpoint, checkpoint_every=opts.checkpoint_every, should_stop=should_stop, validate=validate, validate_every=opts.validate_every,
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
    report = heldout_report(report_denoiser, held, settings, df.iloc[heldout_rows], volume_for_pixel, opts, device)
    report["average_symmetries"] = opts.average_symmetries
    report["estimated_snr_db"] = summary["estimated_snr_db"]
    summary["train_cc_denoised"] = training_fit(report_denoiser, train, settings, len(heldout_rows), report["scores"]["cc_denoised"])
    generator = trainer.generator
    if opts.train_both_halves:
        if report_weights is None:
            report_weights = {k: v.detach().clone() for k, v in trainer.generator.state_dict().items()}
        both_rows = np.concatenate([train_rows, heldout_rows])
        both = with_synthetic(build_pairs(images, df, both_rows, volume_for_pixel, settings, device=device, should_stop=should_stop),
                               synthetic() if trainer.step_count < extra else None)
        trainer.config.n_steps = extra
        logger.info(f"Training further on both halves ({len(both_rows)} particles) up to step {extra}")
        train_pix2pix(trainer, both["inputs"], both["targets"], extra, on_step=_progress(extra, config.batch_size, loss_name=config.recon_loss.upper()), checkpoint=save_checkpoint, checkpoint_every=opts.checkpoint_every,
                      should_stop=should_stop, validate=validate, validate_every=opts.validate_every, ctf=both.get("ctf"))
        use_best_weights()
        summary["train_steps"] = trainer.step_count
    if best is not None:
        report["validation_curve"] = list(best.curve)
        report["validation_best_step"] = best.best_step
    save_model(out_dir / "model.pt", generator, settings, pixel_size_train_A,
               {"train_steps": trainer.step_count, "seed": opts.seed})
    return generator, trainer.history, report
