"""Benchmark of the cGAN denoiser against classical filters on held-out particles (run by hand).

Synthetic (truth = the clean CTF-modulated, shifted projection from ``cryogan simulate``)::

    python benchmarks/bench_denoise.py --snr-db -10 --n-train 5000 --n-heldout 200 --o bench_out/m10
    python benchmarks/bench_denoise.py --snr-db -20 --n-train 5000 --n-heldout 200 --o bench_out/m20

Real (the 1,211 real beta-gal particles; train half set 1, report half set 2; reference =
the CTF'd projection of the map at each particle's pose, scaled by least squares)::

    python benchmarks/bench_denoise.py --real --o bench_out/real

Every method is scored on the same held-out particles, in the network's input units
(RELION-normalised), inside the circular mask: mean CC, mean single-image FSC over 40-10 Å
(FSC ignores linear filters, so both are reported), PSNR, and particles per second on
``--threads`` CPU threads. Results: ``<o>/bench.json`` and a Markdown table on stdout.
Extra denoiser options: ``--opt n_steps=3000 --opt train_box=48``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from baselines import CtfWiener, bm3d_denoise, gaussian_lowpass  # noqa: E402
from betagal_data import BETAGAL_DIR as SHARED, BETAGAL_MAP, BETAGAL_STAR  # noqa: E402

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.commands.denoise import DenoiseInputs, load_model, run_denoise  # noqa: E402
from cryogan_core.commands.simulate import run_simulate  # noqa: E402
from cryogan_core.io.images import ParticleImages  # noqa: E402
from cryogan_core.io.mrc import open_stack  # noqa: E402
from cryogan_core.io.star import read_particles  # noqa: E402
from cryogan_core.io.star_write import write_particles  # noqa: E402
from cryogan_core.metrics.fsc import fsc, resolution_at  # noqa: E402
from cryogan_core.models.symmetry_average import symmetry_averaged  # noqa: E402
from cryogan_core.physics.reconstruct import reconstruct  # noqa: E402
from cryogan_core.physics.ctf import CtfParams  # noqa: E402
from cryogan_core.train.evaluate import image_scores  # noqa: E402
from cryogan_core.train.pairs import build_pairs, input_transform, particle_arrays, train_box_ctf  # noqa: E402
from cryogan_core.train.pix2pix import denoise_images  # noqa: E402


def _value(text: str) -> object:
    """Parse an option value: int, float, yes/no/true/false, else the string."""
    low = text.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _opts(pairs: list[str]) -> dict:
    """``["n_steps=3000", "ctf_free=yes"]`` -> ``{"n_steps": 3000, "ctf_free": True}``."""
    return {k: _value(v) for k, v in (p.split("=", 1) for p in pairs)}


def make_synthetic(out: Path, snr_db: float, n_train: int, n_heldout: int, seed: int) -> tuple[Path, Path, Path]:
    """Simulate from the beta-gal map (CTFs from the real STAR) or the built-in volume; half 2 = the held-out set."""
    have_real = BETAGAL_MAP.exists() and BETAGAL_STAR.exists()
    sim = out / "sim"
    run_simulate(sim, n_train + n_heldout, snr_db, map_path=BETAGAL_MAP if have_real else None,
                 ctf_from=BETAGAL_STAR if have_real else None, shift_px=2.0, seed=seed, project_dir=out)
    star = read_particles(sim / "particles.star", require_poses=True)
    df = star.particles.copy()
    subset = np.ones(len(df), dtype=int)
    subset[np.random.default_rng(seed).permutation(len(df))[:n_heldout]] = 2
    df["rlnRandomSubset"] = subset
    write_particles(sim / "particles.star", star.with_particles(df))
    return sim / "particles.star", sim / "ground_truth_map.mrc", sim / "clean.mrcs"


def backprojection_check(stacks: dict, df, map_path: Path, pixel_size_A: float, box: int) -> dict:
    """Su et al.'s check: reconstruct each stack with the particles' poses, FSC with the map.

    Args:
        stacks: name -> ``(n, box, box)`` float32 images (CTF-modulated, as particles).
        df: the n particles' rows (poses, origins, CTF).
        map_path: the reference/truth map (resampled to ``pixel_size_A`` and ``box``).
        pixel_size_A: pixel size of the images (Å).
        box: image box (px).

    Returns:
        name -> ``{"fsc_0.5_A", "fsc_0.143_A"}`` (resolution in Å where the FSC with the map
        crosses the threshold).
    """
    truth = map_for_particles(map_path, pixel_size_A, box).cpu()
    angles, origins, ctf, _ = particle_arrays(df)
    out = {}
    for name, images in stacks.items():
        vol = reconstruct(images.float(), angles, origins, pixel_size_A, ctf=ctf)
        freq, curve = fsc(vol, truth, pixel_size_A)
        out[name] = {"fsc_0.5_A": resolution_at(freq, curve, 0.5), "fsc_0.143_A": resolution_at(freq, curve, 0.143)}
    return out


def timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, float]:
    """``fn(*args, **kw)`` and its wall time in seconds."""
    t = time.time()
    out = fn(*args, **kw)
    return out, time.time() - t


def main() -> None:
    """Parse the options, make (or take) the data, run the job and the baselines, report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--o", type=Path, required=True)
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--snr-db", type=float, default=-10.0)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-heldout", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-bm3d", action="store_true")
    ap.add_argument("--opt", action="append", default=[], help="denoiser option key=value")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.o.mkdir(parents=True, exist_ok=True)
    if a.real:
        if not BETAGAL_STAR.exists():
            sys.exit(f"real data not found: {BETAGAL_STAR}")
        star_path, map_path, clean_path, project = BETAGAL_STAR, BETAGAL_MAP, None, SHARED
    else:
        star_path, map_path, clean_path = make_synthetic(a.o, a.snr_db, a.n_train, a.n_heldout, a.seed)
        project = a.o
    options = {"n_report": 100000, **_opts(a.opt)}
    summary, t_job = timed(run_denoise, DenoiseInputs(star_path, a.o / "job", map_path, project_dir=project), options)

    gen, settings, pix_train = load_model(a.o / "job/model.pt", torch.device("cpu"))
    gen = symmetry_averaged(gen, int(options.get("average_symmetries", 1)))  # as the job denoised
    star = read_particles(star_path, require_poses=True, require_images=True)
    df = star.particles
    rows = np.flatnonzero(df["rlnRandomSubset"].to_numpy() == 2)
    images = ParticleImages(df, project, star_path)
    raw = torch.from_numpy(images.read(rows))
    transform = input_transform(raw, settings)
    x = transform(raw)
    if clean_path is not None:
        truth = transform(torch.from_numpy(np.asarray(open_stack(clean_path), dtype=np.float32)[rows]))
        truth_label = "clean CTF'd projection (simulation truth)"
    else:
        vols = {}
        held = build_pairs(images, df, rows, lambda p: vols.setdefault(p, map_for_particles(map_path, p, images.box)), settings)
        truth = held["reference_ctf"]
        truth_label = "CTF'd projection of the map at the particle's pose, least-squares scaled"
    tb = settings.train_box
    mask = settings.train_mask()
    ctf_held = CtfParams.from_particles(df.iloc[rows].reset_index(drop=True))

    # Wiener filter fitted on training pairs of half set 1 (uses the map, as the cGAN does)
    train_rows = np.flatnonzero(df["rlnRandomSubset"].to_numpy() == 1)[:1000]
    vols2 = {}
    pairs = build_pairs(images, df, train_rows, lambda p: vols2.setdefault(p, map_for_particles(map_path, p, images.box)), settings)
    wiener = CtfWiener(pairs["inputs"], pairs["reference_ctf"], CtfParams.from_particles(df.iloc[train_rows].reset_index(drop=True)), pix_train)

    methods = {}
    methods["raw"] = (x, 0.0)
    methods["gaussian low-pass 20 Å"] = timed(lambda: torch.from_numpy(gaussian_lowpass(x.numpy(), pix_train, 20.0)))
    methods["CTF-aware Wiener"] = timed(lambda: wiener(x, ctf_held))
    if not a.skip_bm3d:
        try:
            methods["BM3D"] = timed(lambda: torch.from_numpy(bm3d_denoise(x.numpy(), 1.0)))
        except ImportError:
            print("bm3d not installed (pip install bm3d): skipped", file=sys.stderr)
    # a CTF-aware model (the default) sees phase-flipped particles and CTF-modulates its output
    ctf_tb = train_box_ctf(df.iloc[rows], settings) if settings.ctf_aware else None
    out_gan, _ = timed(denoise_images, gen, x, ctf=ctf_tb)
    # network speed alone (CTF filters included), on more particles, at the training box
    reps = max(1, 2000 // len(x) + 1)
    bench_in = x.repeat(reps, 1, 1)[:2000]
    bench_ctf = None if ctf_tb is None else ctf_tb.repeat(reps, 1, 1)[:2000]
    _, t_net = timed(denoise_images, gen, bench_in, ctf=bench_ctf)
    methods["cGAN (this job)"] = (out_gan, t_net * len(x) / len(bench_in))

    rows_out = []
    for name, (est, t) in methods.items():
        s = image_scores(est, truth, mask, pix_train)
        rows_out.append({"method": name, "cc": float(s["cc"].mean()), "fsc_40_10A": float(s["fsc_band"].mean()),
                         "psnr_db": float(np.mean(s["psnr_db"])), "particles_per_s": (len(x) / t) if t > 0 else None})
    backprojection = backprojection_check(
        {"raw": x, "cGAN (this job)": out_gan, "truth images": truth}, df.iloc[rows], map_path, pix_train, tb)
    result = {"mode": "real" if a.real else f"synthetic {a.snr_db} dB", "truth": truth_label, "n_heldout": int(len(rows)),
              "backprojection_check": backprojection,
              "n_train": int(summary.get("n_train_particles", 0)), "job_wall_time_s": t_job, "train_box": tb,
              "threads": a.threads, "methods": rows_out, "job_summary": {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}}
    (a.o / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"\n{result['mode']}: {len(rows)} held-out particles, truth = {truth_label}; job (train + denoise all) {t_job / 60:.1f} min on {a.threads} threads\n")
    print("| method | CC | FSC 40-10 Å | PSNR (dB) | particles/s |")
    print("|---|---|---|---|---|")
    for r in rows_out:
        sp = f"{r['particles_per_s']:.0f}" if r["particles_per_s"] else "-"
        print(f"| {r['method']} | {r['cc']:.3f} | {r['fsc_40_10A']:.3f} | {r['psnr_db']:.2f} | {sp} |")
    print(f"\nBack-projection check ({len(rows)} held-out particles, their poses; FSC with the map {map_path.name}):")
    for name, r in backprojection.items():
        print(f"  {name}: FSC 0.5 at {r['fsc_0.5_A']:.1f} Å, 0.143 at {r['fsc_0.143_A']:.1f} Å")
    bias = {k: v for k, v in summary.items() if k.startswith("bias_")}
    print("\nbias controls:", json.dumps(bias, indent=1))


if __name__ == "__main__":
    main()
