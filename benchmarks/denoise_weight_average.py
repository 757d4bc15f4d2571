"""The denoiser with a moving average of its generator's weights (run by hand; stop 31).

``bench_denoise.py`` with one change: an exponential moving average of the U-Net's
weights and BatchNorm statistics is kept over the training steps (``ema ← β · ema +
(1 − β) · θ`` after every step, :class:`torch.optim.swa_utils.AveragedModel` with
``get_ema_multi_avg_fn(β)``; Polyak averaging, as in Karras et al. 2018 for GAN
generators), and the validation that picks the weights (``train/selection.py``) scores
the averaged network instead of the current one, so the job keeps, reports and writes
the best averaged weights. Training itself is unchanged (the optimiser steps the current
weights). Not a feature of the job.

    python benchmarks/denoise_weight_average.py --ema-decay 0.999 --snr-db -10 --n-train 5000 \\
        --n-heldout 200 --skip-bm3d --threads 1 --o bench_out/m10_ema999

Every argument but ``--ema-decay`` goes to ``bench_denoise.py``.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cryogan_core.train import pix2pix, selection  # noqa: E402


def use_weight_average(decay: float) -> None:
    """Make every denoiser trainer keep an EMA of its generator, and validation score it.

    Args:
        decay: β of the moving average, in (0, 1).
    """
    init, step, update = pix2pix.Pix2PixTrainer.__init__, pix2pix.Pix2PixTrainer.step, selection.BestWeights.update
    averages: dict[int, AveragedModel] = {}  # id(generator) -> its average

    def patched_init(self, *a, **k) -> None:  # noqa: ANN001, ANN002, ANN003
        """``Pix2PixTrainer.__init__`` (same arguments), then the average of the new generator."""
        init(self, *a, **k)
        averages[id(self.generator)] = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                                     use_buffers=True)

    def patched_step(self, *a, **k) -> dict:  # noqa: ANN001, ANN002, ANN003
        """``Pix2PixTrainer.step`` (same arguments and losses), then the average updated."""
        record = step(self, *a, **k)
        with torch.no_grad():
            averages[id(self.generator)].update_parameters(self.generator)
        return record

    def patched_update(self, generator, step_: int) -> float:  # noqa: ANN001
        """``BestWeights.update`` of the generator's average (its module has the same keys)."""
        avg = averages.get(id(generator))
        return update(self, avg.module if avg is not None else generator, step_)

    pix2pix.Pix2PixTrainer.__init__ = patched_init
    pix2pix.Pix2PixTrainer.step = patched_step
    selection.BestWeights.update = patched_update
    print(f"[weight average] validation and the kept weights use an EMA of the generator, decay {decay}", flush=True)


def main() -> None:
    """Parse ``--ema-decay``, install the change, run ``bench_denoise.py`` with the rest."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("--ema-decay", type=float, required=True)
    ours, rest = p.parse_known_args()
    if not 0.0 < ours.ema_decay < 1.0:
        sys.exit("--ema-decay must be in (0, 1)")
    use_weight_average(ours.ema_decay)
    sys.argv = [str(HERE / "bench_denoise.py"), *rest]
    runpy.run_path(str(HERE / "bench_denoise.py"), run_name="__main__")


if __name__ == "__main__":
    main()
