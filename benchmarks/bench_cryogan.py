"""CryoGAN reconstruction benchmark on β-galactosidase (run by hand; never a timed test).

Synthetic (default): ``cryogan simulate`` from
``../shared/data/betagal-relion-tutorial/betagal_5a1a_sim_relionframe_3.54A_box64.mrc``
(64 px, 3.54 Å/px) with the CTFs of the real particle STAR, shifts of ±2 px and uniform
poses, at the requested SNR; then ``cryogan reconstruct`` within a time budget. Reports the
FSC with the truth at 0.5 after alignment (rotation over both hands, then translation), the
half-map FSC at 0.143, and the resolution against training time (from the evaluations made
during training), in ``<out>/bench_result.json`` and on stdout.

Real (``--real``): the 1,211 real β-gal particles of the RELION tutorial
(``betagal_particles_posed.star``; their poses are ignored), reconstructed and compared with
the known map after alignment; the montage of real versus simulated particles is
``<out>/rec/particles_real_vs_simulated.png``.

Examples (2 CPU cores)::

    python benchmarks/bench_cryogan.py --n 10000 --snr-db -10 --minutes 60 --out bench_out/m10
    python benchmarks/bench_cryogan.py --n 5000 --snr-db -20 --minutes 60 --out bench_out/m20
    python benchmarks/bench_cryogan.py --real --minutes 30 --out bench_out/real
    python benchmarks/bench_cryogan.py --n 2000 --minutes 3 --out /tmp/smoke      # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from betagal_data import BETAGAL_DIR as DATA, BETAGAL_MAP as MAP, BETAGAL_STAR as STAR  # noqa: E402

from cryogan_core.cli import configure_logging  # noqa: E402
from cryogan_core.commands._common import set_threads  # noqa: E402
from cryogan_core.commands.options import options_from_mapping  # noqa: E402
from cryogan_core.commands.reconstruct import run_reconstruct  # noqa: E402
from cryogan_core.commands.reconstruct_options import ReconstructOptions  # noqa: E402
from cryogan_core.commands.simulate import run_simulate  # noqa: E402


def plot_resolution_vs_time(result: dict, path: Path) -> None:
    """PNG of the half-map FSC = 0.143 and the FSC-with-the-truth = 0.5 resolutions (Å)
    against training time (minutes), from a ``bench_result.json`` dict."""
    import numpy as np

    from cryogan_core.report.plots import curves_figure, save_figure

    rows = result["resolution_vs_time"]
    symmetry = result.get("options", {}).get("symmetry", "C1")
    t = np.array([r["minutes"] for r in rows], dtype=float)
    curves = {"half maps, FSC 0.143": np.array([r["half_map_fsc_0.143_A"] for r in rows], dtype=float)}
    if any(r["vs_truth_fsc_0.5_A"] is not None for r in rows):
        curves["vs truth (aligned), FSC 0.5"] = np.array(
            [np.nan if r["vs_truth_fsc_0.5_A"] is None else r["vs_truth_fsc_0.5_A"] for r in rows], dtype=float)
    threads = int(result.get("threads", 2))
    save_figure(curves_figure(t, curves, f"training time (min, {threads} CPU thread{'s' if threads != 1 else ''})", "resolution (Å)",
                              title=f"CryoGAN, {result['dataset']}, {symmetry} symmetry"), path)


def main() -> None:
    """Parse the options, simulate (or take the real particles), reconstruct, report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/cryogan"), help="output folder")
    ap.add_argument("--n", type=int, default=10000, help="synthetic particles")
    ap.add_argument("--snr-db", type=float, default=-10.0, help="synthetic SNR (dB)")
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget (minutes)")
    ap.add_argument("--real", action="store_true", help="the 1,211 real beta-gal particles instead of a simulation")
    ap.add_argument("--star", type=Path, default=None,
                    help="any particle STAR of the beta-gal (image names relative to its folder), compared with the known map")
    ap.add_argument("--poses-from-real", action="store_true",
                    help="simulate at the real particles' RELION poses (their non-uniform distribution) instead of uniform ones")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot-only", type=Path, default=None, metavar="BENCH_RESULT_JSON",
                    help="only redraw resolution_vs_time.png next to an earlier bench_result.json")
    ap.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE",
                    help="extra reconstruct options, e.g. box_train=32 symmetry=D2 lr=5e-3 eval_minutes=5")
    args = ap.parse_args()
    if args.plot_only is not None:
        plot_resolution_vs_time(json.loads(args.plot_only.read_text()), args.plot_only.parent / "resolution_vs_time.png")
        return
    configure_logging()
    set_threads(args.threads)
    if not MAP.exists():
        sys.exit(f"data not found: {MAP}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    if args.real:
        star, project = STAR, DATA
        label = "real beta-gal, 1211 particles"
    elif args.star is not None:
        star, project = args.star.resolve(), args.star.resolve().parent
        label = f"{star.parent.name} ({star})"
    else:
        sim = out / "sim"
        if not (sim / "particles.star").exists():
            run_simulate(sim, n=args.n, snr_db=args.snr_db, map_path=MAP, ctf_from=STAR, shift_px=2.0,
                         poses_from=STAR if args.poses_from_real else None, seed=args.seed, project_dir=out)
        star, project = sim / "particles.star", out
        poses = ", at the real particles' poses" if args.poses_from_real else ""
        label = f"synthetic, {args.n} particles at {args.snr_db:g} dB{poses}"

    values = {"box_train": "32", "max_minutes": str(args.minutes), "eval_minutes": str(max(1.0, args.minutes / 12)),
              "seed": str(args.seed)}
    for item in args.set:
        key, _, value = item.partition("=")
        values[key] = value
    opts = options_from_mapping(ReconstructOptions, values)
    t0 = time.monotonic()
    summary = run_reconstruct(star, out / "rec", opts, ref_path=MAP, project_dir=project, resume=False)
    wall = time.monotonic() - t0
    result = {
        "dataset": label,
        "options": values,
        "threads": args.threads,
        "training_minutes": summary["training_time_s"] / 60.0,
        "wall_minutes": wall / 60.0,
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "fsc_0.5_vs_truth_A": summary["resolution_A_vs_reference_fsc_0.5"],
        "fsc_0.143_vs_truth_A": summary["resolution_A_vs_reference_fsc_0.143"],
        "half_map_fsc_0.143_A": summary["resolution_A_fsc_0.143"],
        "half_map_fsc_0.5_A": summary["resolution_A_fsc_0.5"],
        "nyquist_train_A": summary["nyquist_train_A"],
        "resolution_vs_time": [
            {"minutes": e["elapsed_s"] / 60.0, "half_map_fsc_0.143_A": e["resolution_A_fsc_0.143"],
             "vs_truth_fsc_0.5_A": e.get("resolution_A_vs_reference_fsc_0.5")}
            for e in summary["history"]
        ],
    }
    (out / "bench_result.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_resolution_vs_time(result, out / "resolution_vs_time.png")
    print(f"\n{label}: {result['training_minutes']:.1f} min of training, {result['steps']} steps")
    print(f"  FSC with the truth (aligned) at 0.5: {result['fsc_0.5_vs_truth_A']:.1f} Å")
    print(f"  half-map FSC at 0.143:              {result['half_map_fsc_0.143_A']:.1f} Å "
          f"(training Nyquist {result['nyquist_train_A']:.1f} Å)")
    print("  minutes  half-map 0.143 (Å)  vs truth 0.5 (Å)")
    for row in result["resolution_vs_time"]:
        vt = row["vs_truth_fsc_0.5_A"]
        print(f"  {row['minutes']:7.1f}  {row['half_map_fsc_0.143_A']:18.1f}  {vt if vt is None else round(vt, 1)!s:>16}")


if __name__ == "__main__":
    main()
