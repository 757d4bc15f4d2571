"""Diagnostics of CryoGAN's path (run by hand): ``bench_cryogan.py`` with the start or the
volume update changed, to reproduce the stop-22 paragraphs of the README.

``--start-truth`` is not a feature of the job: it replaces the job's start volume
(:func:`cryogan_core.commands.reconstruct.gaussian_ball`) before the benchmark runs.

* ``--start-truth``: both half volumes start at the true map (the benchmark's β-gal map,
  Fourier-cropped to the training box, scaled to maximum 1; then masked and clamped at 0 as
  the job's Gaussian ball is), optionally low-passed (``--start-lowpass-A``: hard cut at that
  resolution in Å). Uses the truth, so it is a diagnostic, never a method: it tells whether
  a plateau is the objective's optimum or where the path from the ball ends.
* ``--march``: frequency marching of the volume, now the job's ``march`` option (this flag
  adds ``march=yes`` to ``--set``; stop 22 ran the same steps as a replacement of
  ``VoxelVolume.project_``). After every volume update (after the positivity clamp) the
  density is projected onto the Fourier shells ``|k| <= kc`` of the training box,
  ``kc = 0.342 · box / σ`` (the frequency at which the critic's Gaussian blur of σ px,
  response ``exp(−2π² σ² f²)``, passes 0.1), never below 4 shells, and no limit once ``kc``
  exceeds the box's corner (``box/2 · √3``): :func:`cryogan_core.train.wgan.marching_cutoff_shells`.

Every other argument goes to ``bench_cryogan.py``. Examples (2 CPU cores, one thread each)::

    python benchmarks/cryogan_path_experiments.py --start-truth --n 10000 --snr-db -10 \\
        --minutes 30 --threads 1 --out bench_out/m10d2_truthstart --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --start-truth --start-lowpass-A 40 --n 5000 \\
        --snr-db -20 --minutes 30 --threads 1 --out bench_out/m20d2_lp40start --set symmetry=D2
    python benchmarks/cryogan_path_experiments.py --march --n 5000 --snr-db -20 --minutes 60 \\
        --threads 1 --out bench_out/m20d2_march --set symmetry=D2
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import mrcfile
import torch

import cryogan_core.commands.reconstruct as reconstruct
from cryogan_core.metrics.bias import lowpass_volume
from cryogan_core.physics.resample import fourier_crop_or_pad_map

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from betagal_data import BETAGAL_MAP, BETAGAL_PIXEL_A  # noqa: E402


def truth_start(lowpass_A: float):
    """A replacement for ``gaussian_ball(box, sigma_px, device)``: the true map at ``box``."""

    def start(box: int, sigma_px: float, device: torch.device | str | None = None) -> torch.Tensor:
        """``(box, box, box)`` float32 true map, maximum 1 (``sigma_px`` is ignored)."""
        v = fourier_crop_or_pad_map(torch.from_numpy(mrcfile.read(BETAGAL_MAP).astype("float32")), box)
        if lowpass_A > 0:
            box_A = mrcfile.open(BETAGAL_MAP, header_only=True).header.nx * BETAGAL_PIXEL_A
            v = lowpass_volume(v, box_A / box, lowpass_A)
        v = v / v.abs().max()
        print(f"[path experiment] start = the true map at box {box}, low-pass {lowpass_A or 'none'} Å", flush=True)
        return v.to(device) if device is not None else v

    return start


def with_reconstruct_option(argv: list[str], item: str) -> list[str]:
    """``bench_cryogan.py``'s arguments with ``item`` (``OPTION=VALUE``) added to ``--set``
    (a second ``--set`` would replace the first, so it goes into the existing one)."""
    if "--set" in argv:
        i = argv.index("--set") + 1
        return [*argv[:i], item, *argv[i:]]
    return [*argv, "--set", item]


def main() -> None:
    """Parse our options, install the replacements, run ``bench_cryogan.py`` with the rest."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("--start-truth", action="store_true")
    p.add_argument("--start-lowpass-A", type=float, default=0.0)
    p.add_argument("--march", action="store_true")
    ours, rest = p.parse_known_args()
    if ours.start_truth:
        reconstruct.gaussian_ball = truth_start(ours.start_lowpass_A)
    if ours.march:
        rest = with_reconstruct_option(rest, "march=yes")
    sys.argv = [str(HERE / "bench_cryogan.py"), *rest]
    runpy.run_path(str(HERE / "bench_cryogan.py"), run_name="__main__")


if __name__ == "__main__":
    main()
