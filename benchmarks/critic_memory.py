"""How much a trained CryoGAN critic remembers its own real particles (run by hand, stop 36).

A WGAN critic trained for many epochs on a few thousand noisy particles can learn those
particular images (their noise) and not only their distribution; the Wasserstein estimate
it reports, and the gradient it gives the volume, then partly measure that memory
(Arora, Ge, Liang, Ma & Zhang 2017, ICML, "Generalization and equilibrium in GANs";
Karras et al. 2020, NeurIPS, "Training GANs with limited data"). CryoGAN's gold standard
gives every half set's critic a clean test set: the other half set's particles, the same
distribution, never seen by it.

For a finished ``bench_cryogan.py`` / ``cryogan_path_experiments.py`` run folder
(``bench_result.json``, ``rec/checkpoint.pt``, the particles it trained on, found by
the path the checkpoint records), the job is
resumed from a copy of the checkpoint (nothing in the run folder is written) up to the
start of training, and each half's final critic scores, at blur ``--sigma-px`` (0, the end
of every run), with no gradient:

* ``own``: its own half set's particles (trained on; with ``--held-out-frac F``, as for
  runs made with ``--overfit-probe``, the fraction held out of training is left out of
  ``own`` and reported as ``held``);
* ``other``: the other half set's particles;
* ``fake``: as many particles simulated from its final volume.

and prints mean differences with their standard errors (``sqrt(var_a/n_a + var_b/n_b)``
over particles): ``memory`` = D(own) − D(other) (0 for a critic that knows only the
distribution), ``held_out`` = D(other) − D(fake), what it tells about the map on particles
it never saw, ``total`` = D(own) − D(fake) (their sum), what its running Wasserstein
estimate measures. A null check splits ``own`` at random in two: its difference must be 0
within its error. The job makes the same check on 2,000 particles per side at the end of
every run (:mod:`cryogan_core.train.critic_check`, ``summary.json`` ``critic_check``); this
script scores every particle of a finished run, and the held-out part of a probe run.

    python benchmarks/critic_memory.py bench_out/m10d2_ctl32
    python benchmarks/critic_memory.py bench_out/m10d2_aug --held-out-frac 0.1

Results go to stdout and ``<run>/critic_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

import cryogan_core.commands.reconstruct as reconstruct
from cryogan_core.commands.options import options_from_mapping
from cryogan_core.commands.reconstruct_options import ReconstructOptions
from cryogan_core.train.critic_check import critic_check

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from betagal_data import BETAGAL_DIR, BETAGAL_STAR  # noqa: E402


class _Scored(Exception):
    """Raised by the patched ``train_cryogan`` once the critics are scored (stops the job)."""


def score_trainers(trainers: list, real_sets: list[torch.Tensor], sigma_px: float, held_out_frac: float,
                   seed: int = 0) -> list[dict]:
    """Score each half's critic on its own, the other half's and simulated particles.

    Every particle of each side is scored (the job's own check,
    :func:`cryogan_core.train.critic_check.critic_check`, which this calls, takes 2,000).

    Args:
        trainers: the job's two :class:`~cryogan_core.train.wgan.CryoGanTrainer` (half 1 first),
            with their final critic and volume.
        real_sets: each half's ``(n_h, D, D)`` normalised real particles, as trained on.
        sigma_px: blur of the critic inputs (training px).
        held_out_frac: fraction of each half that ``--overfit-probe`` held out of training
            (split as it does), or 0.
        seed: seed of the simulated particles and of the null split.

    Returns:
        One dict per half: ``check`` (:meth:`CriticCheck.to_dict`: ``memory`` own − other,
        ``held_out`` other − simulated, ``total`` own − simulated, with standard errors),
        ``null`` (the check with own split at random in two: its ``memory`` must be 0) and,
        with a held-out part, ``held`` (the check with the held-out part as "own": its
        ``memory``, held-out − other, must be 0 too).
    """
    results = []
    for i, t in enumerate(trainers):
        own, other = real_sets[i], real_sets[1 - i]
        held = None
        if held_out_frac > 0:
            perm = torch.randperm(own.shape[0], generator=torch.Generator().manual_seed(4242 + t.seed_offset))
            n_held = max(1, round(held_out_frac * own.shape[0]))
            held, own = own[perm[:n_held].to(own.device)], own[perm[n_held:].to(own.device)]
        vol = t.volume().detach()

        def check(a: torch.Tensor, b: torch.Tensor) -> dict:
            """:func:`critic_check` of this half with ``a`` as own and ``b`` as other particles."""
            return critic_check(t.critic, vol, t.priors, a, b, sigma_px, n_max=10**9,
                                seed=seed * 7 + t.seed_offset).to_dict()

        split = torch.randperm(own.shape[0], generator=torch.Generator().manual_seed(seed + 11)).to(own.device)
        half_n = own.shape[0] // 2
        r = {"half": t.name, "check": check(own, other), "null": check(own[split[:half_n]], own[split[half_n:]])}
        if held is not None:
            r["held"] = check(held, other)
        results.append(r)
    return results


def main() -> None:
    """Resume the run's job from a copy of its checkpoint, score its critics, print and save."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a bench_cryogan.py output folder")
    ap.add_argument("--sigma-px", type=float, default=0.0, help="blur of the critic inputs (training px)")
    ap.add_argument("--held-out-frac", type=float, default=0.0, help="the --overfit-probe fraction of the run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = args.run.resolve()
    bench = json.loads((run / "bench_result.json").read_text())
    star = Path(torch.load(run / "rec/checkpoint.pt", weights_only=True)["meta"]["star"])
    if not star.exists():
        sys.exit(f"{run}: the particles it trained on, {star}, are gone")
    # bench_cryogan.py's project folders: the run for its simulations, the data folder for
    # the real particles, the STAR's folder for --star
    project = run if star.is_relative_to(run) else BETAGAL_DIR if star == BETAGAL_STAR else star.parent
    opts = options_from_mapping(ReconstructOptions, bench["options"])
    found: list[list[dict]] = []

    def patched_train(trainers, real_sets, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        """Score the resumed trainers' critics, then stop the job."""
        found.append(score_trainers(trainers, real_sets, args.sigma_px, args.held_out_frac))
        raise _Scored

    reconstruct.train_cryogan = patched_train
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rec").mkdir()
        shutil.copy(run / "rec/checkpoint.pt", Path(tmp) / "rec/checkpoint.pt")
        try:
            reconstruct.run_reconstruct(star, Path(tmp) / "rec", opts, project_dir=project, resume=True)
        except _Scored:
            pass
    if not found:
        sys.exit("the job did not reach training")
    out = {"run": str(run), "fsc_0.5_vs_truth_A": bench.get("fsc_0.5_vs_truth_A"), "steps": bench.get("steps"),
           "sigma_px": args.sigma_px, "halves": found[0]}
    (run / "critic_memory.json").write_text(json.dumps(out, indent=1))
    print(f"{run.name}: {bench.get('steps')} steps, {bench.get('fsc_0.5_vs_truth_A', float('nan')):.1f} Å vs truth")
    for r in found[0]:
        c = r["check"]
        line = "  ".join(f"{k} {c[k]:+.3f}±{c[k + '_se']:.3f}" for k in ("memory", "held_out", "total"))
        line += f"  null {r['null']['memory']:+.3f}±{r['null']['memory_se']:.3f}"
        if "held" in r:
            line += f"  held-out part − other {r['held']['memory']:+.3f}±{r['held']['memory_se']:.3f}"
        print(f"  {r['half']} ({c['n_particles']} particles): {line}")


if __name__ == "__main__":
    main()
