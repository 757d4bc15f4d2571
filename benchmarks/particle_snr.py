"""Particle SNR of a posed particle set against its map (run by hand; the denoiser job logs
the same number before it trains, as ``estimated_snr_db``).

Signal: each particle's CTF'd projection of the map at its pose, put in the particle's units
by least squares; noise: the particle minus it; both variances over the whole box, the
definition ``cryogan simulate`` uses (Gupta et al. 2021, Sec. V;
:func:`cryogan_core.metrics.images.snr_db`). Pose, CTF and map errors count as noise, so
it is a lower bound.

Examples (default: the 1,211 real beta-gal particles with the map simulated from 5a1a)::

    python benchmarks/particle_snr.py
    python benchmarks/particle_snr.py --star bench_out/m20_l2_g0/sim/particles.star \\
        --map bench_out/m20_l2_g0/sim/ground_truth_map.mrc --project bench_out/m20_l2_g0
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from betagal_data import BETAGAL_DIR, BETAGAL_MAP, BETAGAL_STAR  # noqa: E402

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.io.images import ParticleImages  # noqa: E402
from cryogan_core.io.particles import load_particles  # noqa: E402
from cryogan_core.metrics.images import snr_db  # noqa: E402
from cryogan_core.train.pairs import PairSettings, build_pairs, default_bg_radius_px  # noqa: E402


def main() -> None:
    """Parse the options, build the particles' pairs, print the SNR in dB."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--star", type=Path, default=BETAGAL_STAR, help="posed particles (STAR)")
    ap.add_argument("--map", type=Path, default=BETAGAL_MAP, help="their map (MRC)")
    ap.add_argument("--project", type=Path, default=BETAGAL_DIR, help="directory that rlnImageName is relative to")
    ap.add_argument("--n", type=int, default=1500, help="use the first N particles")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    df = load_particles(a.star, require_ctf=True, require_images=True, require_poses=True, project_dir=a.project).particles
    images = ParticleImages(df, a.project, a.star)
    volume_for_pixel = functools.lru_cache(maxsize=None)(lambda p: map_for_particles(a.map, p, images.box, "cpu"))
    settings = PairSettings(images.box, images.box, default_bg_radius_px(images.box), 0.45 * images.box)
    rows = np.arange(min(len(df), a.n))
    pairs = build_pairs(images, df, rows, volume_for_pixel, settings)
    print(f"{a.star}: {len(rows)} particles, SNR {snr_db(pairs['signal_var'], pairs['noise_var']):.2f} dB")


if __name__ == "__main__":
    main()
