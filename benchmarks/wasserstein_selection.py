"""Can a fresh critic tell a better CryoGAN map from a worse one without the truth? (run by hand; stop 32)

At −20 dB the training seed alone moves CryoGAN's map from 30 to 49 Å (docs/cryogan_benchmarks.md),
and the half-map FSC does not say which seed did well (both halves start alike). Several
short runs and a choice among them, as cryoSPARC's ab-initio keeps the best of several
classes, would need a pose-free score that ranks maps as their FSC with the truth does.
CryoGAN's own objective is one: the Wasserstein distance between the particles and the
map's simulated particles, which its critic estimates (Gupta et al. 2021; Arjovsky et al. 2017; the truth
is a stable point of it, stop 22). Here each candidate map is frozen and a new critic is
trained against it with the job itself: ``cryogan reconstruct`` with the candidate as
``initial_model`` (no low-pass: ``initial_lowpass_A`` below the training Nyquist), a volume
learning rate of 1e-9 (the map does not move), the critic at the default 2e-3, no blur,
every candidate with the same seed, particles and number of steps. The log's Wasserstein
estimates of both half sets over the last half of the progress lines are averaged; a good score ranks the maps
by their FSC with the truth (``--ref``, scored by the job at the end, never trained on).

    python benchmarks/wasserstein_selection.py --star bench_out/m20d2_ema/sim/particles.star \\
        --ref bench_out/m20d2_ema/sim/ground_truth_map.mrc --epochs 10 --threads 1 \\
        --map truth=bench_out/m20d2_ema/sim/ground_truth_map.mrc --map s0=bench_out/m20d2_gb4_s0/rec/run_class001.mrc \\
        --out bench_out/wsel

Results: ``<out>/selection.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from loguru import logger

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryogan_core.commands.reconstruct import run_reconstruct  # noqa: E402

#: One progress line's Wasserstein estimates of the two half sets.
_W_LINE = re.compile(r"Wasserstein (-?[\d.]+)/(-?[\d.]+) ")


def frozen_map_score(star: Path, map_path: Path, ref: Path, out: Path, epochs: float, extra: dict[str, str]) -> dict:
    """Train a new critic against ``map_path`` held fixed for ``epochs``; return its Wasserstein estimates.

    Returns:
        ``w_half1``, ``w_half2``: mean estimates over the last half of the progress lines;
        ``w_mean`` their mean; ``n_lines`` the progress lines averaged;
        ``fsc_0.5_vs_ref_A``: the job's FSC-0.5 resolution of the (unchanged) map against ``ref``.
    """
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    options = {"initial_model": str(map_path), "initial_lowpass_A": "1", "lr": "1e-9", "lr_critic": "2e-3",
               "blur_sigma_px": "0", "max_minutes": "0", "n_epochs": str(epochs), "log_seconds": "10",
               "eval_minutes": "100000", "box_train": "32", "symmetry": "D2", "seed": "0", **extra}
    try:
        summary = run_reconstruct(star, out, options, ref_path=ref, project_dir=star.parent.parent, resume=False)
    finally:
        logger.remove(sink)
    records = [(float(m.group(1)), float(m.group(2))) for m in map(_W_LINE.search, lines) if m]
    late = np.array(records[len(records) // 2:]).reshape(-1, 2)
    if len(late) == 0:
        sys.exit(f"{map_path}: no progress lines in the log")
    return {"w_half1": float(late[:, 0].mean()), "w_half2": float(late[:, 1].mean()), "w_mean": float(late.mean()),
            "n_lines": int(len(late)), "fsc_0.5_vs_ref_A": float(summary["resolution_A_vs_reference_fsc_0.5"])}


def main() -> None:
    """Score every ``--map`` and print them ranked by the critic's estimate."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--star", type=Path, required=True, help="the particles (a bench_cryogan.py sim/particles.star)")
    ap.add_argument("--ref", type=Path, required=True, help="the true map, only to score the candidates")
    ap.add_argument("--map", action="append", required=True, help="NAME=PATH of a candidate map")
    ap.add_argument("--epochs", type=float, default=10.0, help="critic training per map (epochs of the job: 10 = 781 steps for 2,500 particles per half set)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="other job options KEY=VALUE")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    extra = dict(kv.split("=", 1) for kv in a.set)
    rows = []
    for item in a.map:
        name, path = item.split("=", 1)
        r = {"name": name, "map": path, **frozen_map_score(a.star.resolve(), Path(path).resolve(), a.ref.resolve(),
                                                           a.out / name, a.epochs, extra)}
        rows.append(r)
        print(f"{name}: Wasserstein {r['w_half1']:.3f} / {r['w_half2']:.3f} (mean {r['w_mean']:.3f}, {r['n_lines']} lines); "
              f"FSC 0.5 with the truth {r['fsc_0.5_vs_ref_A']:.1f} Å", flush=True)
    order = sorted(rows, key=lambda r: r["w_mean"])
    print("\n| map | Wasserstein estimate (half 1 / half 2) | FSC 0.5 with the truth |\n|---|---|---|")
    for r in order:
        print(f"| {r['name']} | {r['w_half1']:.3f} / {r['w_half2']:.3f} | {r['fsc_0.5_vs_ref_A']:.1f} Å |")
    res = np.array([r["fsc_0.5_vs_ref_A"] for r in rows])
    w = np.array([r["w_mean"] for r in rows])
    if len(rows) > 2:
        from scipy.stats import spearmanr
        rho = float(spearmanr(w, res).statistic)
        print(f"\nSpearman rank correlation of the estimate with the resolution (Å): {rho:.2f} (1 = ranks them as the truth does)")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "selection.json").write_text(json.dumps({"star": str(a.star), "epochs": a.epochs, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
