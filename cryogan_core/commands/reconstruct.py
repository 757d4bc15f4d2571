"""``cryogan reconstruct``: CryoGAN reconstruction without pose estimation (gold standard).

Gupta, McCann, Donati & Unser, "CryoGAN", IEEE TCI 2021. The two half sets
(``rlnRandomSubset``, a seeded random split when absent) are reconstructed independently
from the same starting volume by :mod:`cryogan_core.train.wgan`: a voxel volume whose
simulated particles (random poses from the prior, the CTF of a random real particle of the
same half, shifts from the prior, noise from the real background) a WGAN-GP critic learns
to tell from the real ones. Poses in the input are ignored unless ``pose_prior = star``.

Maps reconstructed without poses have an arbitrary orientation and hand, so half 2 is
aligned to half 1 (rotation over both hands, then translation, :func:`align_half_maps`) before
the half-map FSC and the average; with a reference, all maps are then aligned to it and
written in its frame (the reference is never used in training). Evaluations during training
align the maps at the training box; the last one aligns them Fourier-padded to the
particles' box, and the written maps, FSC and summary come from that same alignment.

Outputs in ``output_dir`` (names as RELION's Refine3D): ``run_half1_class001_unfil.mrc``,
``run_half2_class001_unfil.mrc``, ``run_class001.mrc`` (their average; all at the
particles' pixel size and box, Fourier-padded from the training box), ``fsc.star`` and
``fsc.png`` (half-map FSC), ``fsc_vs_reference.star/.png`` (with a reference),
``snapshots/`` (central slices and real-versus-simulated particles during training),
``logfile.pdf`` (every plot), ``summary.json`` and ``checkpoint.pt`` (resume).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from loguru import logger

from cryogan_core.commands._common import available_memory_bytes, map_for_particles, select_device
from cryogan_core.commands.backproject import half_set_labels
from cryogan_core.commands.options import options_from_mapping
from cryogan_core.commands.reconstruct_checkpoint import CHECKPOINT, checkpoint_meta, read_checkpoint
from cryogan_core.commands.reconstruct_inputs import (
    AUTO_TRAIN_NYQUIST_A,
    LOW_SNR_DB,
    NOISE_SOURCE_BYTES,
    ORIGINS_OUTSIDE_PRIOR_WARN,
    HalfData,
    Sampling,
    build_noise,
    check_star,
    estimate_snr,
    load_images,
    max_particles_in_memory,
    origins_outside_prior,
    training_boxes,
)
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.commands.reconstruct_outputs import particles_figure, write_outputs
from cryogan_core.errors import InputError
from cryogan_core.io.atomic import atomic_path
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.particles import load_particles
from cryogan_core.io.star import pose_angles_deg
from cryogan_core.metrics.align import align_half_maps
from cryogan_core.metrics.fsc import resolution_at, shells_up_to
from cryogan_core.models.volume import VoxelVolume
from cryogan_core.physics.ctf import CtfParams
from cryogan_core.physics.micrograph_noise import micrograph_noise_patches
from cryogan_core.physics.resample import fourier_crop_or_pad_map
from cryogan_core.report.plots import save_figure
from cryogan_core.report.progress import ProgressLog
from cryogan_core.report.reconstruct_report import format_duration, slices_figure
from cryogan_core.train.cryogan_simulator import (
    SimulationPriors,
    clean_signal_variance,
    estimate_signal_variance,
)
from cryogan_core.train.cryogan_volume import (
    ScaledVolume,
    gaussian_ball,
    initial_volume,
    resize_volume,
    soft_sphere_mask,
)
from cryogan_core.train.wgan import CryoGanTrainer, WganConfig, train_cryogan



def run_reconstruct(
    star_path: str | Path,
    output_dir: str | Path,
    options: ReconstructOptions | Mapping[str, Any] | None = None,
    ref_path: str | Path | None = None,
    mask_path: str | Path | None = None,
    mics_path: str | Path | None = None,
    project_dir: str | Path | None = None,
    should_stop: Callable[[], None] | None = None,
    resume: bool = True,
) -> dict:
    """Reconstruct both half sets with CryoGAN and write maps, FSC, plots and summary.

    Args:
        star_path: particle STAR with CTF and rlnImageName, or a cryoSPARC particle ``.cs``
            (passthrough files and project directory from ``in_parts_passthrough`` and
            ``cs_project_dir``); one pixel size; poses ignored unless ``pose_prior = star``.
        output_dir: output folder (created); see the module docstring for the files.
        options: the settings, or ``name -> value`` for them (strings are converted;
            missing names take their defaults; see :class:`ReconstructOptions`).
        ref_path: optional reference map, only for alignment and FSC after training.
        mask_path: optional mask (resampled to the particles, then to the training box),
            multiplied into the volume (a non-spherical mask fixes the orientation, so the
            log warns).
        mics_path: optional micrograph STAR for noise windows.
        project_dir: RELION project directory (rlnImageName and micrograph paths are
            relative to it; default: the current directory).
        should_stop: called before every training iteration; raises to stop (RELION abort).
            A checkpoint is written first.
        resume: continue from ``output_dir/checkpoint.pt`` when it exists.

    Returns:
        The summary dict (also in ``summary.json``), with ``resolution_A_fsc_0.143`` and,
        with a reference, ``resolution_A_vs_reference_fsc_0.5``.

    Raises:
        InputError: unusable inputs or options (one line naming the file, column, row or value).
    """
    opts = options if isinstance(options, ReconstructOptions) else options_from_mapping(ReconstructOptions, options)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    snap_dir = output_dir / "snapshots"
    snap_dir.mkdir(exist_ok=True)
    project_dir = Path(project_dir) if project_dir is not None else Path.cwd()
    star_path = Path(star_path)
    device = select_device(opts.device)

    passthrough = tuple(Path(x.strip()) for x in opts.in_parts_passthrough.split(",") if x.strip())
    star = load_particles(
        star_path, require_ctf=True, require_images=True, require_poses=opts.pose_prior == "star", passthrough=passthrough,
        cs_project_dir=Path(opts.cs_project_dir) if opts.cs_project_dir else None, project_dir=project_dir,
    )
    df = star.particles
    pixel_A = check_star(star_path, df)
    images = ParticleImages(df, project_dir, star_path)
    box = images.box
    boxes = training_boxes(opts, box, pixel_A, star_path)
    diameter_A = opts.particle_diameter_A or 0.8 * box * pixel_A
    samplings = [Sampling(b, pixel_A * box / b, 0.5 * diameter_A / (pixel_A * box / b)) for b in boxes]
    for s in samplings:
        if s.radius_px >= s.box / 2 * math.sqrt(2):
            raise InputError(f"--particle_diameter_A {diameter_A:g}: larger than the box ({box * pixel_A:.0f} Å): no background left")
        if s.radius_px < 2:
            raise InputError(f"--particle_diameter_A {diameter_A:g}: smaller than 4 training pixels ({s.pixel_A:.2f} Å each)")

    labels = half_set_labels(df, opts.seed, star_path)
    rng = np.random.default_rng(opts.seed)
    use = np.arange(len(df))
    if 0 < opts.max_particles < len(df):
        use = np.sort(rng.choice(len(df), opts.max_particles, replace=False))
        logger.info(f"Using a random subset of {opts.max_particles} of {len(df)} particles (--max_particles)")
    box_max = max(s.box for s in samplings)
    cap = max_particles_in_memory(box_max, available_memory_bytes())
    if cap is not None and len(use) > cap:
        logger.warning(
            f"Using a random subset of {cap} of {len(use)} particles: at the training box {box_max} px more would take over a "
            "quarter of this machine's memory (--max_particles sets the subset; a smaller --box_train fits more)"
        )
        use = np.sort(rng.choice(use, cap, replace=False))
    s0 = samplings[0]
    schedule = ""
    if len(samplings) > 1:
        s1 = samplings[1]
        schedule = (f", then at {s1.box} px ({s1.pixel_A:.3f} Å/px, Nyquist {2 * s1.pixel_A:.2f} Å) from "
                    f"{100 * opts.box_final_at:.0f} % of the run on (--box_final)")
    crop = ""
    if s0.box != box:
        crop = (f" by Fourier cropping (--box_train {opts.box_train})" if opts.box_train else
                f" by Fourier cropping (--box_train 0: the box nearest a {AUTO_TRAIN_NYQUIST_A:g}-Å Nyquist; give --box_train {box} to train at the particles' box)")
    logger.info(
        f"{len(use)} particles of {box} px at {pixel_A:.3f} Å/px; training at {s0.box} px ({s0.pixel_A:.3f} Å/px, "
        f"Nyquist {2 * s0.pixel_A:.2f} Å){crop}{schedule}; "
        f"particle diameter {diameter_A:.0f} Å (radius {s0.radius_px:.1f} training px); device {device}"
    )
    if "rlnAngleRot" in df and opts.pose_prior == "uniform":
        logger.info("The input has poses: they are ignored (pose prior uniform over SO(3))")
    off = origins_outside_prior(df.iloc[use], pixel_A, opts.shift_prior, opts.shift_px)
    origins_check = None if off is None else {
        "fraction_outside": off[0], "sigma_px": off[1], "warned": off[0] > ORIGINS_OUTSIDE_PRIOR_WARN}
    if origins_check is not None and origins_check["warned"]:
        logger.warning(
            f"{100 * off[0]:.0f} % of the particles are off-centre beyond the shift prior ({opts.shift_prior}, "
            f"--shift_px {opts.shift_px:g}) by their own rlnOriginXAngst/YAngst (σ {off[1]:.1f} px): the simulated "
            "particles are more centred than these. Use --shift_prior star (their origins as the prior; on the real "
            "β-gal particles 46 Å against 52 Å), widen --shift_px, or re-extract the particles re-centred"
        )
    snr, n_snr = estimate_snr(images, use, box, 0.5 * diameter_A / pixel_A, opts.seed)
    logger.info(
        f"Particle SNR {snr:.1f} dB ({n_snr} particles; pose-free: whole-box variance over the variance outside "
        f"the particle radius, Gupta et al.'s definition; neighbours and signal spread past the radius count as noise, so it reads low)"
    )
    if snr < LOW_SNR_DB:
        logger.warning(
            f"Particle SNR {snr:.1f} dB is below {LOW_SNR_DB:.0f} dB: there (the README's -20 dB benchmark) CryoGAN maps moved "
            "by 10 Å or more with the training seed while their half maps agreed. Run it again with another --seed and "
            "compare the two maps with each other (or with an independent map), not by their half-map FSC"
        )
    if opts.noise == "micrographs" and mics_path is None:
        raise InputError("--noise micrographs needs --in_mics (a micrograph STAR)")
    use_mics = opts.noise in ("auto", "micrographs") and mics_path is not None
    mask_full = None
    if mask_path is not None:
        mask_full = map_for_particles(mask_path, pixel_A, box).cpu()
        if float(mask_full.clamp(0.0, 1.0).sum()) <= 0:
            raise InputError(f"{mask_path}: the mask is empty (no voxel > 0)")
        logger.warning(
            f"Using the mask {mask_path}: a CryoGAN map has no fixed orientation, so a non-spherical mask "
            "imposes the orientation of the mask"
        )
    ref_full = map_for_particles(ref_path, pixel_A, box).cpu() if ref_path is not None else None  # a bad file fails early
    initial_full = map_for_particles(opts.initial_model, pixel_A, box).cpu() if opts.initial_model else None

    def volume_mask(s: Sampling) -> torch.Tensor:
        """The volume mask at the training box of ``s``: the input mask resampled, or a soft sphere."""
        if mask_full is None:
            return soft_sphere_mask(s.box, s.radius_px, 2.0)
        m = mask_full if s.box == box else fourier_crop_or_pad_map(mask_full, s.box)
        return m.clamp(0.0, 1.0)

    def build_halves(s: Sampling) -> list[HalfData]:
        """Both half sets' particles, noise and priors at the training sampling ``s``."""
        mics_windows = None
        if use_mics:
            mics_windows = micrograph_noise_patches(
                mics_path, project_dir, pixel_A, box, s.box, particles=df, generator=torch.Generator().manual_seed(opts.seed)
            )
            logger.info(f"{len(mics_windows)} background windows of {box} px cut from the micrographs of {mics_path}")
        out: list[HalfData] = []
        progress = ProgressLog(f"Reading particles (Fourier-cropped to {s.box} px):" if s.box < box else "Reading particles:", len(use))
        for h in (1, 2):
            rows = use[labels[use] == h]
            if len(rows) < opts.batch_size:
                raise InputError(f"{star_path}: half set {h} has {len(rows)} particles, fewer than --batch_size {opts.batch_size}")
            sub = df.iloc[rows].reset_index(drop=True)
            imgs = load_images(images, rows, s.box, s.radius_px, should_stop=should_stop, on_batch=progress.advance)
            gen = torch.Generator().manual_seed(opts.seed * 31 + h)
            full = None
            if s.box < box and not use_mics:
                # noise is made at the particles' box and cropped as they are (CroppedNoise)
                radius_full = s.radius_px * box / s.box
                n_full = min(len(rows), max(200, NOISE_SOURCE_BYTES // (4 * box * box)))
                pick = np.sort(np.random.default_rng(opts.seed * 31 + h).permutation(len(rows))[:n_full])
                full = (load_images(images, rows[pick], box, radius_full, should_stop=should_stop), radius_full)
            noise = build_noise(opts, imgs, s.radius_px, mics_windows, gen, full)
            del full
            angles = origins = None
            if opts.pose_prior == "star":
                angles = torch.tensor(pose_angles_deg(sub), dtype=torch.float32)
            if opts.shift_prior == "star":
                origins = torch.tensor(sub[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), dtype=torch.float32) / s.pixel_A
            priors = SimulationPriors(
                ctf=CtfParams.from_particles(sub), pixel_size_A=s.pixel_A, box=s.box, noise=noise.to(device),
                bg_radius_px=s.radius_px, shift_prior=opts.shift_prior, shift_px=opts.shift_px * s.box / box,
                angles_deg=angles, origins_px=origins, pad_factor=opts.pad_factor,
            )
            sv = estimate_signal_variance(imgs, s.radius_px)
            out.append(HalfData(h, rows, imgs, priors, sv))
            logger.info(f"Half set {h} at {s.box} px: {len(rows)} particles; noise: {noise.describe()}; signal variance {sv:.4f}")
        return out

    base_config = WganConfig(
        n_critic=opts.n_critic, gp_lambda=opts.gp_lambda, lr=opts.lr, lr_critic=opts.lr_critic or None,
        lr_gamma=opts.lr_gamma, beta1=opts.beta1, beta2=opts.beta2, batch_size=opts.batch_size,
        blur_sigma_px=opts.blur_sigma_px, blur_end=opts.blur_end, n_epochs=opts.n_epochs, seed=opts.seed,
        march=opts.march,
        critic={"channels": tuple(opts.critic_width * 2**i for i in range(4))},
    )

    def stage_config(s: Sampling) -> WganConfig:
        """The hyper-parameters at the training box of ``s`` (the blur σ is given in pixels of
        the first training box, so that its physical width runs on smoothly across stages)."""
        return dataclasses.replace(base_config, blur_sigma_px=opts.blur_sigma_px * s.box / s0.box)

    def new_trainers(s: Sampling, halves: list[HalfData], volumes: list[ScaledVolume]) -> list[CryoGanTrainer]:
        """One trainer per half set at ``s`` for the given volumes (a new critic each)."""
        return [CryoGanTrainer(v, h.priors, stage_config(s), device, name=f"half{h.label}", seed_offset=h.label)
                for v, h in zip(volumes, halves)]

    def start_volumes(s: Sampling, halves: list[HalfData]) -> list[ScaledVolume]:
        """The same start inside the mask for both halves (the Gaussian ball, or the initial
        model by :func:`initial_volume`), scaled to each half's signal."""
        m = volume_mask(s)
        if initial_full is None:
            start = gaussian_ball(s.box, s.radius_px / 2.0) * m
        else:
            start = initial_volume(initial_full, s.box, s.pixel_A, opts.initial_lowpass_A, opts.initial_model) * m
        out = []
        for half in halves:
            voxels = VoxelVolume(s.box, init=start, positivity=opts.positivity, mask=m, symmetry=opts.symmetry)
            sv0 = clean_signal_variance(voxels().detach().to(device), half.priors, seed=opts.seed)
            out.append(ScaledVolume(voxels, math.sqrt(max(half.signal_variance, 1e-4) / max(sv0, 1e-12))))
        return out

    ckpt_path = output_dir / CHECKPOINT
    meta = checkpoint_meta(opts, boxes, use, labels, star_path)
    saved_state = None
    stage = 0
    if resume and ckpt_path.exists():
        saved_state = read_checkpoint(ckpt_path, meta)
        stage = boxes.index(int(saved_state.get("stage_box", boxes[0])))
    cur_s = samplings[stage]
    halves = build_halves(cur_s)
    trainers = new_trainers(cur_s, halves, start_volumes(cur_s, halves))
    evals: list[dict] = []
    if saved_state is not None:
        for t, st in zip(trainers, saved_state["trainers"]):
            t.load_state_dict(st)
        evals = list(saved_state.get("evals", []))
        logger.info(
            f"Continuing from {ckpt_path}: step {trainers[0].step_count} at {cur_s.box} px, "
            f"{format_duration(trainers[0].elapsed_s)} of training done"
        )
    else:
        logger.info("Starting both half sets from the same volume ("
                    + (f"{opts.initial_model} low-passed at {opts.initial_lowpass_A:g} Å" if initial_full is not None
                       else "a Gaussian ball") + " inside the mask)")
    state = {"s": cur_s, "halves": halves, "trainers": trainers}

    def save_checkpoint() -> None:
        """Write both trainers, the stage, the evaluations and the options to checkpoint.pt (atomically)."""
        ckpt = {"meta": meta, "stage_box": state["s"].box, "trainers": [t.state_dict() for t in state["trainers"]],
                "evals": evals, "options": dataclasses.asdict(opts)}
        with atomic_path(ckpt_path) as tmp:
            torch.save(ckpt, tmp)

    max_seconds = opts.max_minutes * 60.0 if opts.max_minutes > 0 else None
    last_log = [time.monotonic() - opts.log_seconds]

    def time_left(elapsed: float) -> float:
        """Seconds left (s): the slower half's epochs to go at its rate so far, capped by max_minutes."""
        eps = [t.epoch(len(h.rows)) for t, h in zip(state["trainers"], state["halves"])]
        rate = elapsed / max(min(eps), 1e-9)
        left = (opts.n_epochs - min(eps)) * rate if min(eps) > 0 else math.inf
        if max_seconds is not None:
            left = min(left, max_seconds - elapsed)
        return left

    def on_step(records: list[dict], elapsed: float, progress: float) -> None:
        """Log one progress line (both halves' losses, blur, lr, time left) every log_seconds."""
        if time.monotonic() - last_log[0] < opts.log_seconds:
            return
        last_log[0] = time.monotonic()
        r = records[0]
        join = lambda key, fmt: "/".join(format(x[key], fmt) for x in records)  # noqa: E731
        logger.info(
            f"epoch {r['epoch']:.2f}/{opts.n_epochs:g} | step {int(r['step'])} | box {state['s'].box} | "
            f"critic loss {join('loss_critic', '.3f')} | generator loss {join('loss_gen', '.3f')} | "
            f"Wasserstein {join('wasserstein', '.3f')} | blur {r['sigma_px']:.2f} px | lr {r['lr']:.2e} | "
            f"{format_duration(elapsed)} elapsed, {format_duration(time_left(elapsed))} left"
        )

    def evaluate(elapsed: float, at_particles_box: bool = False) -> dict:
        """Align half 2 to half 1, record their FSC resolutions (Å, up to the training
        Nyquist) and, with a reference, the FSC with it; save the snapshots. Returns the
        record added to ``evals``. ``at_particles_box``: align the volumes Fourier-padded to
        the particles' box, as the written maps are (the final evaluation, whose alignment
        :func:`write_outputs` then reuses); otherwise at the training box."""
        s, trs = state["s"], state["trainers"]
        v1, v2 = (t.current_volume() for t in trs)
        b = box if at_particles_box else s.box
        if b != s.box:
            v1, v2 = (fourier_crop_or_pad_map(v, b) for v in (v1, v2))
        ref_b = None if ref_full is None else (ref_full if b == box else fourier_crop_or_pad_map(ref_full, b))
        hm = align_half_maps(v1, v2, s.pixel_A if b == s.box else pixel_A, ref_b)
        state["alignment"] = (trs[0].step_count, b, hm)  # the final one is reused by write_outputs
        al = hm.halves
        nyquist_t = 1.0 / (2.0 * s.pixel_A)  # Å⁻¹: the padded shells beyond it hold nothing learned
        curve = shells_up_to(al.freq_inv_A, al.fsc, nyquist_t)
        res = resolution_at(*curve, 0.143)
        entry = {"elapsed_s": elapsed, "step": trs[0].step_count, "box_train": s.box,
                 "epoch": trs[0].epoch(len(state["halves"][0].rows)), "resolution_A_fsc_0.143": res,
                 "resolution_A_fsc_0.5": resolution_at(*curve, 0.5)}
        if hm.to_reference is not None:
            ral = hm.to_reference
            entry["resolution_A_vs_reference_fsc_0.5"] = resolution_at(*shells_up_to(ral.freq_inv_A, ral.fsc, nyquist_t), 0.5)
        evals.append(entry)
        tag = f"step{trs[0].step_count:06d}"
        save_figure(slices_figure({"half 1": v1.numpy(), "half 2 (aligned to half 1)": al.aligned.numpy()},
                                  f"{format_duration(elapsed)}, step {trs[0].step_count}"), snap_dir / f"slices_{tag}.png")
        save_figure(particles_figure(state["halves"][0], trs[0], trs[0].step_count, f"half 1, step {trs[0].step_count}"),
                    snap_dir / f"particles_{tag}.png")
        vs_ref = (f"; average vs reference (aligned): 0.5 at {entry['resolution_A_vs_reference_fsc_0.5']:.1f} Å"
                  if ref_full is not None else "")
        logger.info(
            f"half-map FSC after {format_duration(elapsed)} (step {entry['step']}, epoch {entry['epoch']:.2f}): "
            f"0.143 at {res:.1f} Å, 0.5 at {entry['resolution_A_fsc_0.5']:.1f} Å (training Nyquist {2 * s.pixel_A:.1f} Å)"
            f"{vs_ref}"
        )
        return entry

    t_start = time.monotonic()
    while True:
        last_stage = stage == len(samplings) - 1
        reason = train_cryogan(
            state["trainers"], [h.images.to(device) for h in state["halves"]], max_seconds=max_seconds,
            should_stop=should_stop, on_step=on_step,
            on_eval=evaluate if opts.eval_minutes > 0 else None,
            eval_every_s=opts.eval_minutes * 60.0 if opts.eval_minutes > 0 else None,
            checkpoint=save_checkpoint, end_progress=1.0 if last_stage else opts.box_final_at,
        )
        if reason != "stage":
            break
        if opts.eval_minutes > 0 and (not evals or evals[-1]["step"] != state["trainers"][0].step_count):
            evaluate(state["trainers"][0].elapsed_s)  # the map just before the move, at the old box
        stage += 1
        _move_to_box(state, samplings[stage], build_halves(samplings[stage]), volume_mask(samplings[stage]), new_trainers,
                     opts, device, save_checkpoint)
    trainers, halves, s_end = state["trainers"], state["halves"], state["s"]
    logger.info(
        f"Training ended ({'epochs done' if reason == 'epochs' else 'time budget reached'}) after step "
        f"{trainers[0].step_count}, {format_duration(trainers[0].elapsed_s)} of training "
        f"({format_duration(time.monotonic() - t_start)} in this run)"
    )
    last = state.get("alignment")
    if last is None or last[:2] != (trainers[0].step_count, box):
        # the final evaluation is made at the particles' box; one made at this step at the
        # training box (a timed one, or one of an earlier run) is replaced by it, at its time
        elapsed_final = trainers[0].elapsed_s
        if evals and evals[-1]["step"] == trainers[0].step_count:
            elapsed_final = evals.pop()["elapsed_s"]
        evaluate(elapsed_final, at_particles_box=True)
        save_checkpoint()
    summary = write_outputs(output_dir, opts, trainers, halves, evals, pixel_A, box, s_end.pixel_A, s_end.box, ref_path,
                             star_path, reason, snr, state["alignment"][2], origins_check)
    return summary


def _move_to_box(state: dict, s: "Sampling", halves: list[HalfData], mask: torch.Tensor,
                 new_trainers: Callable[["Sampling", list[HalfData], list[ScaledVolume]], list[CryoGanTrainer]],
                 opts: ReconstructOptions, device: torch.device, save_checkpoint: Callable[[], None]) -> None:
    """Coarse-to-fine: continue both reconstructions at the training box of ``s``.

    Each volume is Fourier-padded to the new box (:func:`resize_volume`), a new critic is
    built for the new image size and trained for ``critic_warmup`` rounds against the fixed
    volume, then the trainers take over the old ones' counters; ``state`` (keys ``s``,
    ``halves``, ``trainers``) is updated in place and a checkpoint is written.
    """
    old_s, old_halves, old_trainers = state["s"], state["halves"], state["trainers"]
    t0 = time.monotonic()
    volumes = [
        resize_volume(t.volume, s.box, mask, oh.priors, nh.priors, oh.signal_variance, nh.signal_variance, seed=opts.seed)
        for t, oh, nh in zip(old_trainers, old_halves, halves)
    ]
    trainers = new_trainers(s, halves, volumes)
    rec = old_trainers[0].history[-1] if old_trainers[0].history else {"sigma_px": 0.0, "epoch": 0.0}
    sigma = rec["sigma_px"] * s.box / old_s.box
    w = [t.warm_up_critic(h.images, opts.critic_warmup, sigma, rec["epoch"]) for t, h in zip(trainers, halves)]
    spent = time.monotonic() - t0
    for new, old in zip(trainers, old_trainers):
        new.continue_from(old)
        new.elapsed_s += spent
    state.update(s=s, halves=halves, trainers=trainers)
    logger.info(
        f"Step {trainers[0].step_count}: training box {old_s.box} -> {s.box} px ({s.pixel_A:.3f} Å/px, Nyquist "
        f"{2 * s.pixel_A:.2f} Å); volumes Fourier-padded, new critics trained for {opts.critic_warmup} rounds "
        f"(Wasserstein {'/'.join(f'{x:.3f}' for x in w)}, {format_duration(spent)})"
    )
    save_checkpoint()
