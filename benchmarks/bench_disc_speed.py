"""Training speed of the denoiser (particles/s) against the PatchGAN's width, run by hand, never as a test.

Usage::

    python benchmarks/bench_disc_speed.py [--threads 1] [--boxes 64 128] [--widths 32 16]

For each box and discriminator width (``--disc_channels``) it builds the job's default
networks (U-Net base 16, depth 3, 2 residual blocks; 3-layer PatchGAN), and times
:meth:`Pix2PixTrainer.step` (one discriminator and one generator update, the adversarial term
on) on a batch of 16 random image pairs: the mean of 10 steps at 64 px and below, 4 above,
after two warm-up steps. Random pixels cost what particles cost: the step's time does not
depend on the values.

Measured at stop 44 (2-core dev box, torch 2.13 CPU, ``--threads 1`` while another
benchmark used the other core):

    box   disc_channels   ms/step   particles/s
    64    32              480       33.3
    64    16              310       51.6
    128   32              2182      7.3
    128   16              1384      11.6

With 2 threads and the machine otherwise idle, 64 px: 325 -> 203 ms/step (49 -> 79
particles/s).
"""

from __future__ import annotations

import argparse
import time

import torch

from cryogan_core.train.pix2pix import Pix2PixConfig, Pix2PixTrainer

BATCH = 16


def step_seconds(box: int, disc_channels: int, n_steps: int) -> float:
    """Mean seconds of one training step of the default networks at ``box`` px (batch 16)."""
    config = Pix2PixConfig(batch_size=BATCH, generator={"base_channels": 16, "depth": 3, "n_res_blocks": 2},
                           discriminator={"n_layers": 3, "base_channels": disc_channels})
    trainer = Pix2PixTrainer(config, torch.device("cpu"))
    x, y = torch.randn(BATCH, 1, box, box), torch.randn(BATCH, 1, box, box)
    for _ in range(2):
        trainer.step(x, y)
    start = time.perf_counter()
    for _ in range(n_steps):
        trainer.step(x, y)
    return (time.perf_counter() - start) / n_steps


def main() -> None:
    """Print one line per box and width: ms per step and particles per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("box  disc_channels  ms/step  particles/s")
    for box in args.boxes:
        for width in args.widths:
            dt = step_seconds(box, width, 10 if box <= 64 else 4)
            print(f"{box:4d}  {width:13d}  {dt * 1000:7.0f}  {BATCH / dt:11.1f}", flush=True)


if __name__ == "__main__":
    main()
