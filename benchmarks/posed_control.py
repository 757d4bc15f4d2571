"""Known-pose control for the CryoGAN benchmark (run by hand): what the particles hold with their poses.

CryoGAN reconstructs without poses. As a control, this reconstructs the same simulated
particles with their TRUE poses (Wiener back-projection with CTF correction, C1,
:func:`cryogan_core.physics.reconstruct.reconstruct`) and reports the FSC with the truth at
0.5 and 0.143, at the particles' box and Fourier-cropped to a training box (as CryoGAN
trains), for all particles and for the first 1,000 and 200. Takes the ``sim/`` folder that
``benchmarks/bench_cryogan.py`` wrote::

    python benchmarks/posed_control.py bench_out/m10d2_2t bench_out/m20d2_2t

Results: one line per (run, box, particle count) on stdout and ``posed_control.json`` in
each run folder (with the FSC curves up to the box's Nyquist).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.io.images import ParticleImages  # noqa: E402
from cryogan_core.io.star import read_particles  # noqa: E402
from cryogan_core.metrics.fsc import fsc, resolution_at, shells_up_to  # noqa: E402
from cryogan_core.physics.reconstruct import reconstruct  # noqa: E402
from cryogan_core.physics.resample import fourier_crop_images, fourier_crop_or_pad_map  # noqa: E402
from cryogan_core.train.pairs import particle_arrays  # noqa: E402


def posed_control(run_dir: Path, train_box: int, counts: tuple[int, ...] = (1000, 200)) -> dict:
    """Reconstruct ``run_dir/sim`` particles with their true poses; FSC with ``sim/ground_truth_map.mrc``.

    Args:
        run_dir: a ``bench_cryogan.py`` output folder (``sim/particles.star``, ``sim/ground_truth_map.mrc``).
        train_box: the second box (px) to evaluate at, after Fourier cropping.
        counts: particle subsets (the first n) besides all of them.

    Returns:
        ``{"box{B}_n{N}": {"fsc0.5_A", "fsc0.143_A", "curve": [[resolution_A, fsc], ...]}}``.
    """
    star_path = run_dir / "sim/particles.star"
    df = read_particles(star_path, require_poses=True, require_images=True).particles
    images = torch.from_numpy(ParticleImages(df, run_dir, star_path).read(np.arange(len(df))))
    angles, origins, ctf, pixel_sizes = particle_arrays(df)
    pix, box = float(pixel_sizes[0]), int(images.shape[-1])
    truth = map_for_particles(run_dir / "sim/ground_truth_map.mrc", pix, box).cpu()
    out = {}
    for b in (box, train_box):
        imgs = images if b == box else fourier_crop_images(images, b)
        p = pix * box / b
        ref = truth if b == box else fourier_crop_or_pad_map(truth, b)
        for n in (len(df), *counts):
            t0 = time.time()
            vol = reconstruct(imgs[:n], angles[:n], origins[:n], p, ctf=ctf[:n])
            freq, curve = shells_up_to(*fsc(vol, ref, p), 1.0 / (2.0 * p))
            row = {"fsc0.5_A": resolution_at(freq, curve, 0.5), "fsc0.143_A": resolution_at(freq, curve, 0.143),
                   "curve": [[round(1.0 / f, 2), round(float(c), 4)] for f, c in zip(freq[1:], curve[1:])]}
            out[f"box{b}_n{n}"] = row
            print(f"{run_dir.name}: box {b}, {n} particles: FSC 0.5 at {row['fsc0.5_A']:.1f} Å, "
                  f"0.143 at {row['fsc0.143_A']:.1f} Å ({time.time() - t0:.0f} s)", flush=True)
    return out


def main() -> None:
    """Parse the run folders and write each one's ``posed_control.json``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="bench_cryogan.py output folders")
    ap.add_argument("--train-box", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for run in a.runs:
        result = posed_control(run, a.train_box)
        (run / "posed_control.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
