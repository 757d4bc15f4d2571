"""Speed of the denoiser's map predictions at a smaller training box (run by hand).

The denoiser projects the refined map once per particle for its training pairs and once
more for the agreement scores. Before stop 41 it projected at the particles' box and
Fourier-cropped the images to ``--train_box``; now ``predictions(..., box_out=train_box)``
projects the map Fourier-cropped to ``⌈√2·train_box⌉`` (the cube that holds every rotated
``train_box`` slice) and crops that. This script times both with the CTF at 128 and 256 px,
and reports their relative difference ``‖new − old‖ / ‖old‖``: the poses, shifts (2 px)
and CTFs of a simulated 64-px set (``cryogan simulate``, built-in volume), its map
Fourier-padded to each box with the pixel size scaled to keep the particle's size (a map
that has no signal above the 64-px Nyquist; ``tests/test_pairs_train_box.py`` checks the
agreement on maps with signal up to their Nyquist).

Measured (stop 41, 2 threads, 128 particles)::

    box 128 -> 128: old 57/s  new 61/s   (1.1x: the same code), difference 0.00 %
    box 128 ->  64: old 57/s  new 188/s  (3.3x), difference 0.16 %
    box 128 ->  32: old 57/s  new 713/s  (12.6x), difference 0.22 %
    box 256 -> 128: old 11/s  new 24/s   (2.3x), difference 0.05 %
    box 256 ->  64: old 11/s  new 170/s  (16.0x), difference 0.08 %

Usage::

    python benchmarks/pairs_at_train_box.py [--threads 2] [--n 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.commands.simulate import run_simulate  # noqa: E402
from cryogan_core.io.particles import load_particles  # noqa: E402
from cryogan_core.physics.resample import fourier_crop_images, fourier_crop_or_pad_map  # noqa: E402
from cryogan_core.train.pairs import predictions  # noqa: E402
from cryogan_core.train.reference_maps import MapsForPixel  # noqa: E402


def rate(fn, n: int) -> tuple[float, torch.Tensor]:
    """Particles per second of ``fn()`` (best of two runs: the first also makes the cropped map) and its result."""
    best, out = float("inf"), None
    for _ in range(2):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return n / best, out


def main() -> None:
    """Time old and new predictions at each box and training box; print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=128, help="particles per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_simulate(root / "sim", n=args.n, snr_db=0.0, shift_px=2.0, seed=1, box=64, pixel_size_A=4.0, project_dir=root)
        df64 = load_particles(root / "sim/particles.star", require_poses=True).particles.reset_index(drop=True)
        map64 = map_for_particles(root / "sim/ground_truth_map.mrc", 4.0, 64)
        for box, train_boxes in ((128, (128, 64, 32)), (256, (128, 64))):
            df = df64.copy()
            df["rlnImagePixelSize"] = 4.0 * 64 / box
            volume = fourier_crop_or_pad_map(map64, box)
            maps = MapsForPixel(lambda p: volume)
            r_old, full = rate(lambda: predictions(df, maps), len(df))
            for tb in train_boxes:
                old = fourier_crop_images(full, tb) if tb != box else full
                r_new, new = rate(lambda: predictions(df, maps, box_out=tb), len(df))
                diff = float((new - old).norm() / old.norm())
                print(f"box {box} -> {tb}: old {r_old:.0f}/s  new {r_new:.0f}/s  ({r_new / r_old:.1f}x), difference {100 * diff:.2f} %",
                      flush=True)


if __name__ == "__main__":
    main()
