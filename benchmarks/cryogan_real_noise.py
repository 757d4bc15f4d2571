"""Where CryoGAN loses the real β-gal particles: their noise or their signal? (run by hand)

CryoGAN reaches 25.8 Å on 1,211 simulated particles at −10 dB but stays at ~51 Å on the
1,211 real ones (docs/cryogan_benchmarks.md). This script makes two particle sets from the
real particles that keep one of the two and replace the other, then
``bench_cryogan.py --star`` reconstructs each:

1. ``map_real_noise``: each real particle's noise residual ``r_i = x_i − a·p_i − b_i``
   (``p_i`` the known map's CTF-modulated projection at the particle's RELION pose and
   origin, ``a`` one pooled least-squares scale, ``b_i`` the particle's mean offset) added to
   the map at a **new** uniform pose and a new ±2 px origin, with the particle's own CTF:
   ``y_i = a·p'_i + b_i + r_i``. The signal is exactly the map's, the noise is the real
   one (its spectrum, neighbours, ice, detector).
2. ``map_white_noise``: the same ``a·p'_i + b_i`` with white Gaussian noise of each
   residual's variance: the benchmark's simulation at the real particles' CTFs and SNR.

If (1) reconstructs like the real particles, the gap is in the noise; if like (2), in how
the real particles' signal departs from the map's simulation (their pose and origin
distribution, the map itself, heterogeneity, envelope). ``--poses real`` and ``--origins
real`` put the map at each particle's own RELION pose or origin instead (the folders get a
``_<poses>_poses_<origins>_origins`` suffix): with both, the set is the real particles as
the map predicts them, which splits the signal's part into positions and the rest::

    python benchmarks/cryogan_real_noise.py --out bench_out/real_noise
    python benchmarks/bench_cryogan.py --star bench_out/real_noise/map_real_noise/particles.star \
        --minutes 30 --threads 1 --out bench_out/real_noise_rec --set symmetry=D2
    python benchmarks/bench_cryogan.py --star bench_out/real_noise/map_white_noise/particles.star \
        --minutes 30 --threads 1 --out bench_out/white_noise_rec --set symmetry=D2
    python benchmarks/cryogan_real_noise.py --out bench_out/real_noise --poses real --origins real

Results (stop 35) in docs/cryogan_benchmarks.md, "The real particles' gap, taken apart".

The half sets (``rlnRandomSubset``) and CTFs are the real particles'. Needs
``../shared/data/betagal-relion-tutorial``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from betagal_data import BETAGAL_DIR, BETAGAL_MAP, BETAGAL_STAR  # noqa: E402

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.commands.simulate import build_particle_star  # noqa: E402
from cryogan_core.io.images import ParticleImages  # noqa: E402
from cryogan_core.io.mrc import write_stack  # noqa: E402
from cryogan_core.io.star import read_particles  # noqa: E402
from cryogan_core.io.star_write import write_particles  # noqa: E402
from cryogan_core.physics.ctf import CtfParams  # noqa: E402
from cryogan_core.physics.euler import random_euler_deg  # noqa: E402
from cryogan_core.physics.simulator import uniform_shifts_px  # noqa: E402
from cryogan_core.train.pairs import make_targets, predictions  # noqa: E402


def write_set(folder: Path, images: torch.Tensor, angles_deg: np.ndarray, origins_A: np.ndarray, ctf: CtfParams,
              pixel_size_A: float, subset: np.ndarray) -> Path:
    """Write ``folder/particles.mrcs`` and ``folder/particles.star`` (names relative to ``folder``).

    Args:
        folder: output folder (created).
        images: ``(n, D, D)`` float32 particles.
        angles_deg: ``(n, 3)`` RELION Euler angles (degrees) written with them.
        origins_A: ``(n, 2)`` origins (Å).
        ctf: the ``n`` CTFs.
        pixel_size_A: pixel size (Å).
        subset: ``(n,)`` rlnRandomSubset (1 or 2).

    Returns:
        The STAR path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stack = folder / "particles.mrcs"
    star_path = folder / "particles.star"
    star = build_particle_star(angles_deg, origins_A, ctf, pixel_size_A, images.shape[-1],
                               os.path.relpath(stack, folder), star_path, subset)
    write_stack(stack, images.numpy().astype(np.float32), pixel_size_A)
    write_particles(star_path, star)
    return star_path


def main() -> None:
    """Fit the residuals of the real particles and write the two particle sets."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/real_noise"))
    ap.add_argument("--shift-px", type=float, default=2.0, help="half-width of the new origins (px)")
    ap.add_argument("--poses", choices=("uniform", "real"), default="uniform",
                    help="the map's new poses: uniform over SO(3), or each real particle's own RELION pose")
    ap.add_argument("--origins", choices=("uniform", "real"), default="uniform",
                    help="the new origins: uniform in ±shift-px, or each real particle's own origin")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not BETAGAL_STAR.exists():
        sys.exit(f"real data not found: {BETAGAL_STAR}")
    df = read_particles(BETAGAL_STAR, require_poses=True, require_images=True).particles.reset_index(drop=True)
    images = ParticleImages(df, BETAGAL_DIR, BETAGAL_STAR)
    pix = float(df["rlnImagePixelSize"].iloc[0])
    vol = map_for_particles(BETAGAL_MAP, pix, images.box)
    x = torch.from_numpy(images.read(np.arange(len(df)))).float()
    p = predictions(df, lambda _p: vol)
    # one pooled least-squares scale a and each particle's mean offset b_i, over the whole box
    fitted, slopes = make_targets(x, p, p, torch.ones(x.shape[-2:], dtype=torch.bool), scale_mode="pooled")
    scale = float(slopes[0])
    offset = fitted - scale * p  # b_i, constant over each image
    residual = x - fitted

    n = len(df)
    gen = torch.Generator().manual_seed(a.seed)
    new = df.copy()
    angles = random_euler_deg(n, generator=gen).numpy()
    origins_A = uniform_shifts_px(n, a.shift_px, generator=gen).numpy() * pix
    if a.poses == "real":
        angles = df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    if a.origins == "real":
        origins_A = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    new[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]] = angles
    new[["rlnOriginXAngst", "rlnOriginYAngst"]] = origins_A
    signal = scale * predictions(new, lambda _p: vol) + offset
    white = residual.std(dim=(-2, -1))[:, None, None] * torch.randn(residual.shape, generator=gen)

    ctf = CtfParams.from_particles(df)
    subset = df["rlnRandomSubset"].to_numpy().astype(int)
    tag = "" if (a.poses, a.origins) == ("uniform", "uniform") else f"_{a.poses}_poses_{a.origins}_origins"
    stars = {name + tag: str(write_set(a.out / (name + tag), signal + noise, angles, origins_A, ctf, pix, subset))
             for name, noise in (("map_real_noise", residual), ("map_white_noise", white))}
    snr_db = 10 * np.log10(float((scale * p).var(dim=(-2, -1)).mean()) / float(residual.var(dim=(-2, -1)).mean()))
    info = {"n": n, "scale": scale, "snr_db_whole_box": snr_db, "stars": stars,
            "fraction_of_variance_explained": 1.0 - float(residual.var()) / float(x.var())}
    (a.out / f"real_noise{tag}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
