"""Score the volumes dumped by ``cryogan_path_experiments.py --ema-decays ... --dump-dir DIR``.

Run by hand after such a run. For every step at which both half volumes were dumped, and
for the raw volumes and each moving average alike, it does what the job's in-training
evaluation does (``commands/reconstruct.py``, ``evaluate``), with the same function
(:func:`cryogan_core.metrics.align.align_half_maps`): align half 2 to half 1 (rotation over
both hands, then translation), average, align the average to the true map Fourier-cropped
to the training box, and read the FSC with the truth at 0.5. The last step
is also scored as the job scores its final map: both halves Fourier-padded to the
particles' box (64 px) first.

    python benchmarks/score_volume_dumps.py bench_out/m10d2_ema/dumps [--out scores.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from betagal_data import BETAGAL_MAP, BETAGAL_PIXEL_A  # noqa: E402

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.metrics.align import align_half_maps  # noqa: E402
from cryogan_core.physics.resample import fourier_crop_or_pad_map  # noqa: E402

#: The particles' box of the benchmark (px), at which the job writes and scores its final map.
BOX = 64


def score_pair(v1: torch.Tensor, v2: torch.Tensor, truth: torch.Tensor, pixel_A: float) -> float:
    """FSC-0.5 resolution (Å) of the average of two half volumes against the truth.

    Args:
        v1, v2: ``(D, D, D)`` half volumes (any float dtype), in any frame and hand.
        truth: ``(D, D, D)`` true map at the same box and pixel size.
        pixel_A: voxel size (Å).

    Returns:
        The resolution (Å) where the FSC of the aligned average with the truth first falls
        below 0.5 (:meth:`cryogan_core.metrics.align.MapAlignment.resolution_A`).
    """
    return align_half_maps(v1, v2, pixel_A, truth).to_reference.resolution_A(0.5)


def main() -> None:
    """Read the dumps, score every step and kind, print a table (and write ``--out`` JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    by_step: dict[int, dict[str, dict]] = defaultdict(dict)
    for f in sorted(args.dump_dir.glob("half*_step*.pt")):
        d = torch.load(f, weights_only=True)
        by_step[int(d["step"])][f.name.split("_")[0]] = d
    steps = sorted(s for s, h in by_step.items() if {"half1", "half2"} <= h.keys())
    if not steps:
        sys.exit(f"no step with both half volumes in {args.dump_dir}")
    truth_full = map_for_particles(BETAGAL_MAP, BETAGAL_PIXEL_A, BOX).cpu().double()
    rows = []
    for s in steps:
        h1, h2 = by_step[s]["half1"], by_step[s]["half2"]
        d = int(h1["box"])
        pixel_t = BETAGAL_PIXEL_A * BOX / d
        truth = fourier_crop_or_pad_map(truth_full, d)
        kinds = {"raw": (h1["raw"], h2["raw"])}
        kinds.update({f"ema {b:g}": (h1["ema"][b], h2["ema"][b]) for b in h1["ema"]})
        row = {"step": s, **{k: score_pair(a, b, truth, pixel_t) for k, (a, b) in kinds.items()}}
        rows.append(row)
        print("  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    last = by_step[steps[-1]]
    final = {k: score_pair(fourier_crop_or_pad_map(a.double(), BOX), fourier_crop_or_pad_map(b.double(), BOX), truth_full,
                           BETAGAL_PIXEL_A)
             for k, (a, b) in {"raw": (last["half1"]["raw"], last["half2"]["raw"]),
                               **{f"ema {b:g}": (last["half1"]["ema"][b], last["half2"]["ema"][b])
                                  for b in last["half1"]["ema"]}}.items()}
    print(f"final (step {steps[-1]}, at box {BOX}): " + "  ".join(f"{k} {v:.1f} Å" for k, v in final.items()))
    if args.out is not None:
        args.out.write_text(json.dumps({"steps": rows, "final_box64": final}, indent=2) + "\n")


if __name__ == "__main__":
    main()
