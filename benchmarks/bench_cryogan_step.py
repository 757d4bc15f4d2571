"""Speed of one CryoGAN training step, and how often it makes the CPU wait for the GPU (run by hand).

Usage::

    python benchmarks/bench_cryogan_step.py --device cpu --threads 1
    python benchmarks/bench_cryogan_step.py --device cuda                 # on a GPU
    python benchmarks/bench_cryogan_step.py --device cuda --batch-size 64  # larger batches

Builds one trainer as ``cryogan reconstruct`` does (a Gaussian-ball start in a soft mask,
background-patch noise from the particles, the amplitude from the signal variance) on
particles simulated from the built-in phantom at -10 dB, times ``--steps`` training steps
(``n_critic`` critic updates and one volume update each) after ``--warmup`` steps, and prints
the steps per second and the images per second the critic sees. On a CUDA device it also
counts, with PyTorch's sync debug mode, the operations of one step that make the CPU wait
for the GPU's queue (read-backs of device values, blocking host-to-device copies): with
small batches those waits, not the arithmetic, set the step time on a GPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryogan_core.metrics.images import normalize_background  # noqa: E402
from cryogan_core.models.volume import VoxelVolume  # noqa: E402
from cryogan_core.physics.euler import random_euler_deg  # noqa: E402
from cryogan_core.physics.noise import BackgroundNoise  # noqa: E402
from cryogan_core.physics.phantom import procedural_volume  # noqa: E402
from cryogan_core.physics.simulator import random_ctf_params, simulate_particles, uniform_shifts_px  # noqa: E402
from cryogan_core.train.cryogan_simulator import (  # noqa: E402
    SimulationPriors,
    clean_signal_variance,
    estimate_signal_variance,
)
from cryogan_core.train.cryogan_volume import ScaledVolume, gaussian_ball, soft_sphere_mask  # noqa: E402
from cryogan_core.train.wgan import CryoGanTrainer, WganConfig  # noqa: E402

PIXEL_A = 7.08  # the β-gal benchmark's training pixel size at box 32


def make_trainer(box: int, n: int, batch_size: int, n_critic: int, device: torch.device) -> tuple[CryoGanTrainer, torch.Tensor]:
    """A trainer and its ``(n, box, box)`` real particles on ``device`` (phantom, -10 dB)."""
    g = torch.Generator().manual_seed(0)
    truth = torch.from_numpy(procedural_volume(box))
    ctf = random_ctf_params(n, generator=g)
    sim = simulate_particles(truth, PIXEL_A, random_euler_deg(n, generator=g),
                             uniform_shifts_px(n, 1.0, generator=g) * PIXEL_A, ctf, -10.0, generator=g)
    radius = 0.4 * box
    real = normalize_background(sim.noisy, radius)
    priors = SimulationPriors(ctf=ctf, pixel_size_A=PIXEL_A, box=box,
                              noise=BackgroundNoise.from_particles(real, radius).to(device),
                              bg_radius_px=radius, shift_px=1.0)
    mask = soft_sphere_mask(box, radius, 2.0)
    voxels = VoxelVolume(box, init=gaussian_ball(box, radius / 2) * mask, mask=mask)
    amplitude = math.sqrt(estimate_signal_variance(real, radius) / clean_signal_variance(voxels(), priors))
    config = WganConfig(lr=2e-3, n_epochs=1e9, batch_size=batch_size, n_critic=n_critic)
    trainer = CryoGanTrainer(ScaledVolume(voxels, amplitude), priors, config, device, name="half1", seed_offset=1)
    return trainer, real.to(device)


def main() -> None:
    """Parse the options, time the steps, count the waits (CUDA), print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-critic", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    trainer, real = make_trainer(a.box, 2000, a.batch_size, a.n_critic, device)
    need = a.batch_size * a.n_critic
    g = torch.Generator().manual_seed(1)

    def step() -> None:
        """One training step on a random batch of real particles."""
        idx = torch.randint(0, real.shape[0], (need,), generator=g)
        trainer.train_step(real[idx.to(device)], 1.0, 0.1)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(a.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{a.threads} CPU thread(s)"
    print(f"torch {torch.__version__}, {where}: box {a.box}, batch {a.batch_size}, n_critic {a.n_critic}: "
          f"{1 / dt:.1f} steps/s ({dt * 1e3:.1f} ms per step, {need / dt:.0f} critic images/s)")
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            step()
            torch.cuda.set_sync_debug_mode("default")
        where_from: dict[str, int] = {}
        for w in caught:
            key = f"{Path(w.filename).name}:{w.lineno}"
            where_from[key] = where_from.get(key, 0) + 1
        print(f"operations that made the CPU wait for the GPU in one step: {len(caught)}")
        for key, count in sorted(where_from.items(), key=lambda kv: -kv[1]):
            print(f"  {count:4d}  {key}")


if __name__ == "__main__":
    main()
