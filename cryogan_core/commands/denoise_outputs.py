"""``cryogan denoise``'s particles: every particle denoised into stacks, ``particles.star`` and the cryoSPARC files.

Writes ``Denoised/particles_NNNNNN.mrcs`` (with per-stack score files), ``particles.star``
(every input column kept; rlnImageName -> denoised, rlnImageOriginalName -> original;
per-particle agreement columns) and ``particles.cs/.csg``. A resumed run keeps the finished
stacks when the same network made them (:func:`~cryogan_core.commands.denoise_model.model_fingerprint`).
``summary.json`` and ``logfile.pdf`` are written by :func:`cryogan_core.commands.denoise.run_denoise`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from loguru import logger

from cryogan_core.commands.denoise_model import model_fingerprint
from cryogan_core.commands.denoise_options import DenoiseInputs, DenoiseOptions
from cryogan_core.commands.denoise_pace import scores_advice
from cryogan_core.commands.export_cryosparc import import_instructions
from cryogan_core.io.atomic import atomic_path
from cryogan_core.io.cryosparc import write_cryosparc_particles
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.mrc import StackWriter
from cryogan_core.io.star import ParticleStar, format_image_name, read_particles
from cryogan_core.io.star_write import write_particles
from cryogan_core.metrics.images import masked_pearson
from cryogan_core.report.progress import ProgressLog
from cryogan_core.train.pairs import PairSettings, input_transform, predictions, train_box_ctf
from cryogan_core.train.pix2pix import denoise_images

#: Seconds of denoising measured before the pace of the agreement scores is judged (once).
ADVISE_AFTER_S = 20.0


def denoise_all(
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

    Args:
        inputs: where the data are (not read here: ``project_dir`` and ``out_dir`` are).
        opts: the job options (``stack_size``, ``float16``).
        star: the particles (``rlnImagePixelSize`` in Å/px) and optics, as loaded.
        images: lazy particle images, float32 ``(box, box)`` each.
        generator: the denoiser: float32 ``(n, train_box, train_box)`` in and out.
        settings: the pair settings (normalisation, crop, mask, CTF-aware).
        volume_for_pixel: pixel size (Å) -> map ``(box, box, box)``; None: no agreement
            scores (``--no_scores``).
        project_dir: the folder image names are relative to.
        out_dir: the output folder (``Denoised/`` is made in it).
        device: torch device for the network and projections.
        should_stop: called between batches of 256; raises to abort.
        resume: keep finished stacks that the same network made.

    Returns:
        ``summary``: ``n_particles_written``, ``denoise_particles_per_s``,
        ``star_version_written``, ``cryosparc_import`` and, with scores, ``mean_cc_raw_all`` /
        ``mean_cc_denoised_all``; with scores also ``scores``: ``cc_raw`` and ``cc_denoised``,
        float32 ``(n,)`` masked CCs with the reference (NaN where not computed). The
        reference is made at the training box (``predictions(..., box_out=train_box)``),
        and both are taken there: ``cc_raw`` with the particle as the network sees it
        (normalised, Fourier-cropped), ``cc_denoised`` with its output, so that the two
        compare like with like (before stop 41, ``cc_raw`` was taken at the particles' box,
        where the noise beyond the training box's Nyquist lowered it).

    Raises:
        InputError: an image holds NaN or infinite values.
        OSError: if an output file cannot be written.
    """
    df = star.particles
    n = len(df)
    tb = settings.train_box
    stack_size = max(1, opts.stack_size)
    dtype = np.float16 if opts.float16 else np.float32
    den_dir = out_dir / "Denoised"
    den_dir.mkdir(exist_ok=True)
    # finished stacks are kept on "Continue!" only if the same network made them
    fingerprint = model_fingerprint(generator, settings, dtype)
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
    mask_train = settings.train_mask(device)
    chunks = []  # (rows, stack, its scores, kept from an earlier run)
    for chunk_start in range(0, n, stack_size):
        stack_path = den_dir / f"particles_{chunk_start // stack_size + 1:06d}.mrcs"
        scores_path = den_dir / f".scores_{chunk_start // stack_size + 1:06d}.npy"
        kept = resume and stack_path.is_file() and (scores_path.is_file() or not score)
        chunks.append((np.arange(chunk_start, min(chunk_start + stack_size, n)), stack_path, scores_path, kept))
    n_kept = sum(len(rows) for rows, _, _, kept in chunks if kept)
    if n_kept:
        logger.info(f"Keeping the {n_kept} particles of the finished stacks of an earlier run")
    overall = ProgressLog("Denoised", n - n_kept, every_s=math.inf)  # a line at the end of each stack
    t_scores = 0.0
    advised = False
    for rows, stack_path, scores_path, kept in chunks:
        rel = os.path.relpath(stack_path.resolve(), project_dir.resolve())
        names.extend(format_image_name(i + 1, rel) for i in range(len(rows)))
        if kept:
            if score:
                s = np.load(scores_path)
                cc_raw[rows], cc_den[rows] = s[0], s[1]
            continue
        # a stack of 10,000 takes minutes at large boxes (scores: 17 projections/s at 256 px): lines within it too
        progress = ProgressLog(f"Denoising into {stack_path.name}:", len(rows))
        with StackWriter(stack_path, len(rows), tb, float(df["rlnImagePixelSize"].iloc[0]) * settings.box / tb, dtype=dtype) as writer:
            for b in range(0, len(rows), 256):
                if should_stop is not None:
                    should_stop()
                idx = rows[b : b + 256]
                raw = torch.from_numpy(images.read(idx)).to(device)
                transform = input_transform(raw, settings)
                x = transform(raw)
                ctf_tb = train_box_ctf(df.iloc[idx], settings, device) if settings.ctf_aware else None
                y = denoise_images(generator, x, ctf=ctf_tb).to(device)
                writer.write(b, y.cpu().numpy().astype(dtype))
                if score:
                    t_score0 = time.time()
                    # predictions at the training box: 3.3x cheaper at 128 -> 64 px, 16x at 256 -> 64 (benchmarks/pairs_at_train_box.py)
                    pred_ctf = predictions(df.iloc[idx], volume_for_pixel, True, device, box_out=tb)
                    pred = pred_ctf if settings.ctf_targets else predictions(df.iloc[idx], volume_for_pixel, False, device, box_out=tb)
                    cc_raw[idx] = masked_pearson(x, pred_ctf, mask_train).cpu().numpy()
                    cc_den[idx] = masked_pearson(y, pred, mask_train).cpu().numpy()
                    t_scores += time.time() - t_score0
                progress.advance(len(idx))
                overall.advance(len(idx))
                elapsed = overall.elapsed_s()
                if score and not advised and elapsed > ADVISE_AFTER_S:
                    advised = True
                    line = scores_advice(overall.total - overall.done, overall.done / elapsed, min(1.0, t_scores / elapsed))
                    if line:
                        logger.warning(line)
        if score:
            with atomic_path(scores_path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.stack([cc_raw[rows], cc_den[rows]]))
        overall.log()
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
    elapsed = overall.elapsed_s()
    result: dict[str, Any] = {
        "summary": {
            "n_particles_written": int(n),
            "denoise_particles_per_s": overall.done / elapsed if overall.done else None,
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
