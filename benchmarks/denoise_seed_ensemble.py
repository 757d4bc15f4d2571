"""Averaging the outputs of denoisers trained with different seeds (run by hand; stop 32).

A seed ensemble: ``K`` networks trained on the same particles with the same options but
different training seeds (``bench_denoise.py ... --opt seed=S``) make errors that are partly
independent, so the mean of their outputs is a better estimate than any one of them
(Lakshminarayanan, Pritzel & Blundell, "Simple and scalable predictive uncertainty
estimation using deep ensembles", NeurIPS 2017). It costs ``K`` trainings and ``K`` times
the denoising. Not a feature of the job.

Each member is scored alone and the mean of the first 2, ..., K members is scored, all with
the job's own held-out report (:func:`cryogan_core.commands.denoise_scores.heldout_report`:
CC and FSC 40-10 Å on half set 2, and the three reference-bias controls), so each member's
CC and FSC reproduce its run's ``summary.json``; the controls' noise has seed 0 for every
line (the job draws it with the training seed), so the lines compare with each other::

    python benchmarks/bench_denoise.py --real --skip-bm3d --threads 1 --opt recon_loss=l2 \\
        --opt gan_weight=0 --opt average_symmetries=8 --opt seed=S --o bench_out/real_l2s8_ctl_sS
    python benchmarks/denoise_seed_ensemble.py --real bench_out/real_l2s8_ctl bench_out/real_l2s8_ctl_s1 \\
        bench_out/real_l2s8_ctl_s2 bench_out/real_l2s8_ctl_s3 --o bench_out/real_ensemble.json

Synthetic runs (``--snr-db``) each simulate their particles into their own folder; with the
same data seed the particles are the same, and the first run's are used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from betagal_data import BETAGAL_DIR, BETAGAL_MAP, BETAGAL_STAR  # noqa: E402

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.commands.denoise import load_model  # noqa: E402
from cryogan_core.commands.denoise_options import DenoiseOptions  # noqa: E402
from cryogan_core.commands.denoise_scores import heldout_report  # noqa: E402
from cryogan_core.io.images import ParticleImages  # noqa: E402
from cryogan_core.io.star import read_particles  # noqa: E402
from cryogan_core.models.symmetry_average import symmetry_averaged  # noqa: E402
from cryogan_core.train.pairs import PairSettings, build_pairs  # noqa: E402


class MeanOfNetworks(nn.Module):
    """Image-to-image networks whose outputs are averaged.

    ``forward(x) = 1/K Σ_k net_k(x)``; every member maps ``(B, C, H, W)`` float32 to the same
    shape. Linear in the outputs, so a CTF-aware model's output CTF (applied after the
    network by :func:`~cryogan_core.train.pix2pix.denoise_images`) commutes with the mean.

    Args:
        nets: the K members (K >= 1).
    """

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float32 -> the members' mean output, same shape."""
        return torch.stack([net(x) for net in self.nets]).mean(0)


def load_member(run: Path) -> tuple[nn.Module, PairSettings, int]:
    """The denoiser a ``bench_denoise.py`` run wrote (``run/job/model.pt``), wrapped with the
    square-symmetry averaging its job used, with its pair settings and training seed."""
    summary = json.loads((run / "job" / "summary.json").read_text())
    gen, settings, _ = load_model(run / "job" / "model.pt", torch.device("cpu"))
    return symmetry_averaged(gen, int(summary["options"]["average_symmetries"])), settings, int(summary["seed"])


def main() -> None:
    """Score each run's denoiser alone and the means of the first 2..K of them."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="bench_denoise.py output folders (same data and options)")
    ap.add_argument("--real", action="store_true", help="the runs used --real")
    ap.add_argument("--o", type=Path, required=True, help="JSON of the results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-symmetries", type=int, default=0,
                    help="square symmetries each member averages over, 1/2/4/8 (0: each run's own setting)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.real:
        star_path, map_path, project = BETAGAL_STAR, BETAGAL_MAP, BETAGAL_DIR
    else:
        star_path, map_path, project = a.runs[0] / "sim" / "particles.star", a.runs[0] / "sim" / "ground_truth_map.mrc", a.runs[0]
    members = [load_member(r) for r in a.runs]
    if a.n_symmetries:
        members = [(symmetry_averaged(getattr(m, "net", m), a.n_symmetries), s, seed) for m, s, seed in members]
    settings = members[0][1]
    if any(s != settings for _, s, _ in members):
        sys.exit("the runs' pair settings differ: an ensemble needs the same data and options")
    df = read_particles(star_path, require_poses=True, require_images=True).particles
    images = ParticleImages(df, project, star_path)
    rows = np.flatnonzero(df["rlnRandomSubset"].to_numpy() == 2)
    vols: dict[float, torch.Tensor] = {}

    def volume_for_pixel(p: float) -> torch.Tensor:
        """The map at pixel size ``p`` (Å) and the particles' box, cached."""
        return vols.setdefault(p, map_for_particles(map_path, p, images.box))

    held = build_pairs(images, df, rows, volume_for_pixel, settings)
    opts = DenoiseOptions()
    results = []
    candidates = [(f"seed {seed} alone", [m]) for m, _, seed in members]
    candidates += [(f"mean of {k} ({', '.join(str(s) for _, _, s in members[:k])})", [m for m, _, _ in members[:k]]) for k in range(2, len(members) + 1)]
    for label, nets in candidates:
        rep = heldout_report(MeanOfNetworks(nets), held, settings, df.iloc[rows], volume_for_pixel, opts, torch.device("cpu"))
        row = {"label": label, **rep["scores"], **{k: v for k, v in rep["bias"].items() if not isinstance(v, list)}}
        results.append(row)
        print(f"{label}: CC {row['cc_denoised']:.3f}, FSC 40-10 Å {row['fsc_40_10A_denoised']:.3f}, "
              f"r {row['bias_extra_domain_recovery_r']:.2f}, pure-noise outputs {row['bias_noise_max_cc_with_references']:.2f} "
              f"(real {row['bias_real_max_cc_with_references']:.2f}), painted 20-10 Å FRC {row['bias_highres_frc_lowpass_map']:.3f}", flush=True)
    a.o.parent.mkdir(parents=True, exist_ok=True)
    a.o.write_text(json.dumps({"runs": [str(r) for r in a.runs], "n_heldout": int(len(rows)), "results": results}, indent=2))


if __name__ == "__main__":
    main()
