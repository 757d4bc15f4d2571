"""How exactly a simulated particle set gives its signal's second moment (run by hand).

The stop-33 experiment (``cryogan_path_experiments.py --moment-weight``) adds to CryoGAN's
volume update the distance between the simulated particles' second moment and the one the
real particles give, ``T = S(mean xxᵀ) − S(mean nnᵀ)`` (whitened, symmetrised; see
:func:`cryogan_path_experiments.use_moment_matching`). Started at the true map, that
distance did not fall to 0 (0.08–0.09 of ``‖T‖²``). This script says why from a
``cryogan simulate`` folder, whose ``clean.mrcs`` holds every particle's noise-free image:
it Fourier-crops the particles to the training box, normalises them as RELION does (each
image's background mean 0, std 1; the clean images by the same mean-free background and
std), takes one half (every second particle) and reports, relative to ``‖T_exact‖²`` with
``T_exact`` the moment of that half's clean images:

* ``T`` estimated with a perfect noise model (the half's data moment minus the other half's
  exact noise moment): what the job's estimate can be at best;
* the parts of that error: the signal × noise cross terms of the half, the sampling of the
  noise moment (two halves' exact noise), and of the poses (two halves' clean images).

Example (2 CPU threads, about a minute)::

    python benchmarks/moment_sampling_floor.py bench_out/m10d2_ctl32/sim --box 32 --radius-px 12.8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mrcfile
import torch

from cryogan_core.metrics.images import circular_mask
from cryogan_core.physics.resample import fourier_crop_images

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from baselines import radial_whitening_filter, subtract_background_mean  # noqa: E402
from cryogan_path_experiments import symmetrised_second_moment  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖a − b‖² / ‖ref‖²`` (Frobenius), a float."""
    return float(((a - b) ** 2).sum() / (ref ** 2).sum())


def main() -> None:
    """Load, crop and normalise the simulation, print the four relative errors."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sim", type=Path, help="a `cryogan simulate` folder (particles.mrcs, clean.mrcs)")
    p.add_argument("--box", type=int, default=32, help="training box (px) the particles are cropped to")
    p.add_argument("--radius-px", type=float, default=12.8, help="background radius at that box (px)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    noisy = fourier_crop_images(torch.from_numpy(mrcfile.read(a.sim / "particles.mrcs").astype("float32")), a.box)
    clean = fourier_crop_images(torch.from_numpy(mrcfile.read(a.sim / "clean.mrcs").astype("float32")), a.box)
    bg = ~circular_mask(a.box, a.radius_px)
    std = noisy[:, bg].std(1, unbiased=False)[:, None, None]
    noisy = subtract_background_mean(noisy, bg) / std
    clean = subtract_background_mean(clean, bg) / std
    noise = noisy - clean
    filt = radial_whitening_filter(noisy)
    one = torch.arange(len(noisy)) % 2 == 0
    m = {name: symmetrised_second_moment(x, filt) for name, x in
         [("data1", noisy[one]), ("clean1", clean[one]), ("clean2", clean[~one]), ("noise1", noise[one]),
          ("noise2", noise[~one])]}
    t_exact = m["clean1"]
    print(f"{int(one.sum())} particles of {len(noisy)}, box {a.box}; errors relative to the signal moment's ‖T‖²:")
    print(f"  T with a perfect noise model (data − the other half's noise): "
          f"{relative(m['data1'] - m['noise2'], t_exact, t_exact):.4f}")
    print(f"  signal × noise cross terms (data − this half's own noise):     "
          f"{relative(m['data1'] - m['noise1'], t_exact, t_exact):.4f}")
    print(f"  sampling of the noise moment (half 1 against half 2, /2):      "
          f"{relative(m['noise1'], m['noise2'], t_exact) / 2:.4f}")
    print(f"  sampling of the poses (clean half 1 against clean half 2, /2): "
          f"{relative(m['clean1'], m['clean2'], t_exact) / 2:.4f}")


if __name__ == "__main__":
    main()
