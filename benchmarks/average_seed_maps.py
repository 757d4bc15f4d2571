"""Average the CryoGAN maps of runs that differ only in their training seed; score each and the average.

Run by hand after two or more ``bench_cryogan.py`` runs on the same simulated particles
(same ``--n``, ``--snr-db`` and simulation ``--seed``; training seeds set with ``--set
seed=N``). Each run's ``rec/run_class001.mrc`` is aligned to the first run's map (rotation
over both hands, then translation: :func:`cryogan_core.metrics.align.align_maps`) without
the truth, the aligned maps are averaged, and every map and the average are scored by the
FSC with the truth at 0.5 after alignment, as ``bench_cryogan.py`` scores a run.

``bench_cryogan.py`` writes its maps in the truth's frame, so aligning them to each other
would be trivial; each map after the first is therefore rotated by a fixed arbitrary
rotation (ZYZ 37°, 71°, −115°) first, and the alignment has to find it.

    python benchmarks/average_seed_maps.py bench_out/m20d2_st2_s0 bench_out/m20d2_st2_s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from betagal_data import BETAGAL_MAP, BETAGAL_PIXEL_A  # noqa: E402

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.io.mrc import read_map, write_map  # noqa: E402
from cryogan_core.metrics.align import align_maps, rotate_shift_volumes  # noqa: E402

#: The fixed rotation (RELION ZYZ Euler angles, degrees) applied to every map after the first.
SCRAMBLE_DEG = (37.0, 71.0, -115.0)


def main() -> None:
    """Parse the run folders, align, average, score and print (and write ``--out`` JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="bench_cryogan.py output folders (the first is the alignment target)")
    ap.add_argument("--out", type=Path, default=None, help="write the scores as JSON here, and the average as <out>.mrc")
    args = ap.parse_args()
    if len(args.runs) < 2:
        sys.exit("give at least two run folders")
    torch.set_num_threads(1)
    maps = [torch.from_numpy(read_map(run / "rec" / "run_class001.mrc")[0]).double() for run in args.runs]
    box = maps[0].shape[-1]
    truth = map_for_particles(BETAGAL_MAP, BETAGAL_PIXEL_A, box).cpu().double()
    scores = {str(run): align_maps(m, truth, BETAGAL_PIXEL_A).resolution_A(0.5) for run, m in zip(args.runs, maps)}
    rotation = torch.tensor(Rotation.from_euler("ZYZ", SCRAMBLE_DEG, degrees=True).as_matrix())
    total = maps[0].clone()
    ccs = []
    for m in maps[1:]:
        scrambled = rotate_shift_volumes(m, rotation[None])[0]
        al = align_maps(scrambled, maps[0], BETAGAL_PIXEL_A)
        ccs.append(al.cc)
        total += al.aligned
    average = total / len(maps)
    avg_res = align_maps(average, truth, BETAGAL_PIXEL_A).resolution_A(0.5)
    for run, res in scores.items():
        print(f"{run}: FSC 0.5 with the truth at {res:.1f} Å")
    print(f"alignment CC with the first map: {', '.join(f'{c:.3f}' for c in ccs)}")
    print(f"average of {len(maps)}: FSC 0.5 with the truth at {avg_res:.1f} Å")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": scores, "alignment_cc": ccs, "average_fsc_0.5_vs_truth_A": avg_res}, indent=2))
        write_map(args.out.with_suffix(".mrc"), average.numpy().astype(np.float32), BETAGAL_PIXEL_A)


if __name__ == "__main__":
    main()
