"""Projections per second of the job's projector, with and without its threaded chunks (run by hand).

:meth:`cryogan_core.physics.projection.Projector.slices` samples central slices with
``torch_fourier_slice.extract_central_slices_rfft_3d``, whose trilinear sampler
(``torch.nn.functional.grid_sample`` on one volume) runs on ONE thread whatever
``torch.get_num_threads()`` says. Since stop 45 the projector splits the rotations into
chunks sampled on as many Python threads as torch has (torch releases the GIL), when it
runs on a CPU with nothing to differentiate. This script times whole projections
(``Projector(map)(rotations)``, padding 2 as RELION, random poses, a random map) both ways
at the same ``--threads``, and checks that both give the same values to the bit.

Measured (stop 45, a 2-core machine like CI's, ``--threads 2``, nothing else running; two
runs of the defaults, projections per second, one library call → threaded chunks; the
outputs identical to the bit):

=======  ==================  ==================
box      run 1               run 2
=======  ==================  ==================
64 px    424 → 518 (1.22×)   571 → 763 (1.34×)
128 px   79 → 135 (1.71×)    93 → 143 (1.54×)
256 px   21 → 39 (1.89×)     25 → 37 (1.47×)
=======  ==================  ==================

With ``--n 16`` (the chunks below ``MIN_SAMPLES_PER_THREAD`` at 64 px, so one call) 64 px
stays at 1.01×, 128 px gains 1.17×. Before that floor, 16 rotations at 64 px split in 4
chunks ran at 0.75×. In the denoiser's job (``--model`` on 5,000 simulated 256-px
particles at ``train_box 64``, denoising with the agreement scores, 2 threads) the pace went
from 73–81 to 97–108 particles/s, and its preparation of 7,000 training pairs of 128 px from
116 to 96 s; the written stacks and score columns are the same to the bit.

Usage::

    python benchmarks/bench_projection_speed.py [--threads 2] [--boxes 64 128 256] [--n 128]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from scipy.spatial.transform import Rotation

from cryogan_core.physics import projection
from cryogan_core.physics.projection import Projector


def _serial(fn: Callable[[torch.Tensor], torch.Tensor], rotations: torch.Tensor, n_threads: int, samples: int) -> torch.Tensor:
    """The projector's chunking turned off: ``fn`` on all rotations at once."""
    return fn(rotations)


def best_seconds(fn: Callable[[], torch.Tensor], best: float) -> tuple[float, torch.Tensor]:
    """``min(best, seconds of one fn() call)`` and the call's output."""
    t0 = time.perf_counter()
    out = fn()
    return min(best, time.perf_counter() - t0), out


def rates_per_s(projector: Projector, rotations: torch.Tensor, repeats: int) -> tuple[float, float, bool]:
    """Best-of-``repeats`` projections per second, serial and chunked (timed alternately, so
    both see the same machine load), and whether their outputs are identical."""
    chunked = projection._chunks_in_threads
    projector(rotations[:4])
    serial_s = chunked_s = float("inf")
    ref = out = torch.empty(0)
    for _ in range(repeats):
        projection._chunks_in_threads = _serial
        try:
            serial_s, ref = best_seconds(lambda: projector(rotations), serial_s)
        finally:
            projection._chunks_in_threads = chunked
        chunked_s, out = best_seconds(lambda: projector(rotations), chunked_s)
    n = rotations.shape[0]
    return n / serial_s, n / chunked_s, bool(torch.equal(ref, out))


def main() -> None:
    """Print one line per box: serial and threaded projections per second, and the speed-up."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--n", type=int, default=128, help="projections per call (the job's passes hold 16-512)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.n} random poses per call, padding 2")
    for box in args.boxes:
        n = args.n if box < 256 else max(16, args.n // 4)
        rotations = torch.tensor(Rotation.random(n, random_state=box).as_matrix(), dtype=torch.float32)
        projector = Projector(torch.randn(box, box, box, generator=gen))
        serial, threaded, same = rates_per_s(projector, rotations, args.repeats)
        print(f"box {box:4d} px: {serial:7.1f} -> {threaded:7.1f} projections/s ({threaded / serial:.2f}x), identical: {same}")

if __name__ == "__main__":
    main()
