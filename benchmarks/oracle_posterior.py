"""What the best possible reference-trained denoiser would score (run by hand; not a test).

The denoiser is trained to turn a particle into the CTF'd projection of the reference map
A at the particle's pose. For squared error, the best any such estimator can do is the
posterior mean of that projection given the image (Bayes): with the map, the particle's
CTF, white Gaussian noise of known σ and a uniform pose prior (rotation Haar-uniform,
shift uniform in ±2 px), ::

    E[CTF·P_A(R, t) | y] = Σ_j w_j · CTF·P_A(R_j, t_j) / Σ_j w_j,
    w_j = exp(-||y - CTF·P_A(R_j, t_j)||² / 2σ²) · prior(R_j, t_j) / q(R_j, t_j)

estimated by importance sampling around the true pose (a mixture of nested balls of
rotation vectors, 1-8°, and of shifts, 0.25-2 px, whose density q is known), plus a global
set of random poses that checks whether a distant pose competes (D2 copies give the same
image; if a distant pose competes, the local posterior is over-confident and its score an
upper bound).
The oracle knows the map, each particle's CTF and the noise level, so it bounds what the
cGAN (which learns all of this from 4,500 pairs) can reach; it is not a method we ship.

It also scores the same estimator on particles of map B = A + an extra domain (6 % of the
mass), with the posterior still under map A, and reports Su et al.'s recovery fraction r.
Because the posterior mean is a weighted average of map A's projections, a denoiser that
reaches it paints the reference: this measures how the CC target and the r target trade.

    python benchmarks/oracle_posterior.py --snr-db -10 --n 100 --out bench_out/oracle_m10
    python benchmarks/oracle_posterior.py --snr-db -20 --n 100 --out bench_out/oracle_m20

Writes ``<out>/oracle.json`` and prints one line per estimator.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.io.star import read_particles  # noqa: E402
from cryogan_core.metrics.bias import add_extra_domain, recovery_fraction  # noqa: E402
from cryogan_core.metrics.images import circular_mask  # noqa: E402
from cryogan_core.physics.ctf import CtfParams, compute_ctf  # noqa: E402
from cryogan_core.physics.euler import euler_to_matrix, random_euler_deg  # noqa: E402
from cryogan_core.physics.projection import Projector, shift_phase  # noqa: E402
from cryogan_core.physics.simulator import noise_sigma_for_snr  # noqa: E402
from cryogan_core.train.evaluate import image_scores  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from baselines import gaussian_lowpass  # noqa: E402
from betagal_data import BETAGAL_MAP, BETAGAL_PIXEL_A as PIXEL_A, BETAGAL_STAR  # noqa: E402


def images_at(proj: Projector, rot: torch.Tensor, shifts_px: torch.Tensor, ctf_rfft: torch.Tensor) -> torch.Tensor:
    """CTF'd, shifted projections: ``(n, D, D)``; ``ctf_rfft`` ``(D, D//2+1)`` or ``(n, ...)``."""
    d = proj.box
    ft = torch.fft.rfft2(proj(rot)) * shift_phase(d, d, shifts_px) * ctf_rfft
    return torch.fft.irfft2(ft, s=(d, d))


def uniform_ball(n: int, dim: int, radius: float, g: torch.Generator) -> torch.Tensor:
    """``(n, dim)`` points uniform in a ``dim``-ball of the given radius."""
    x = torch.randn(n, dim, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    return x * radius * torch.rand(n, 1, generator=g) ** (1.0 / dim)


def ball_volume(dim: int, radius: float) -> float:
    """Lebesgue volume of a ``dim``-ball."""
    return math.pi ** (dim / 2) / math.gamma(dim / 2 + 1) * radius**dim


def posterior_mean(
    y: torch.Tensor, rot_true: torch.Tensor, shift_true: torch.Tensor, ctf_rfft: torch.Tensor, proj: Projector,
    sigma: float, max_shift_px: float, g: torch.Generator, n_per_scale: int, n_global: int,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Posterior mean and MAP image of one particle; see the module docstring.

    Args:
        y: ``(D, D)`` noisy particle.
        rot_true: ``(3, 3)`` its true rotation; ``shift_true``: ``(2,)`` true shift (px,
            the argument of ``shift_phase``).
        ctf_rfft: ``(D, D//2+1)`` its CTF.
        proj: projector of the map the posterior is under.
        sigma: noise standard deviation; ``max_shift_px``: the shift prior's half-width.
        g: random generator; ``n_per_scale``: samples in each of the 4 nested balls;
        ``n_global``: random poses over SO(3) x shift prior, for the competition check.

    Returns:
        ``(posterior mean (D, D), MAP image (D, D), diagnostics)``: the effective sample
        size and the best global log-likelihood minus the best local one (nats).
    """
    rot_radii = [math.radians(a) for a in (1.0, 2.0, 4.0, 8.0)]
    shift_radii = [0.25, 0.5, 1.0, 2.0]
    rots, shifts = [], []
    for rr, sr in zip(rot_radii, shift_radii):
        rotvecs = uniform_ball(n_per_scale, 3, rr, g).double().numpy()
        rots.append(torch.from_numpy(Rotation.from_rotvec(rotvecs).as_matrix()).float() @ rot_true)
        shifts.append(shift_true + uniform_ball(n_per_scale, 2, sr, g))
    rots_t, shifts_t = torch.cat(rots), torch.cat(shifts)
    # proposal density of the mixture (rotation-vector x shift coordinates; Haar ~ flat for < 8°)
    ang = torch.from_numpy(Rotation.from_matrix((rots_t @ rot_true.T).double().numpy()).magnitude())
    dsh = (shifts_t - shift_true).norm(dim=1)
    q = torch.zeros(len(rots_t), dtype=torch.float64)
    for rr, sr in zip(rot_radii, shift_radii):
        inside = (ang <= rr + 1e-6) & (dsh <= sr + 1e-6)
        q += inside.double() / (ball_volume(3, rr) * ball_volume(2, sr))
    in_prior = (shifts_t.abs() <= max_shift_px).all(dim=1)

    def images_and_loglik(rots: torch.Tensor, shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted images ``(m, D, D)`` and their Gaussian log-likelihoods ``(m,)`` float64."""
        images = torch.cat([images_at(proj, rots[i : i + 1000], shifts[i : i + 1000], ctf_rfft) for i in range(0, len(rots), 1000)])
        return images, -((y - images) ** 2).sum(dim=(-2, -1)).double() / (2 * sigma**2)

    images_t, ll = images_and_loglik(rots_t, shifts_t)
    logw = ll - q.log()
    logw[~in_prior] = -math.inf
    w = torch.softmax(logw, 0)
    mean = (w.float()[:, None, None] * images_t).sum(0)
    best = images_t[int(ll.masked_fill(~in_prior, -math.inf).argmax())]
    ess = float(1.0 / (w**2).sum())
    gr = euler_to_matrix(random_euler_deg(n_global, generator=g))
    gs = (torch.rand(n_global, 2, generator=g) * 2 - 1) * max_shift_px
    gap = float(images_and_loglik(gr, gs)[1].max() - ll[in_prior].max())
    return mean, best, {"ess": ess, "global_minus_local_nats": gap}


def main() -> None:
    """Simulate particles of maps A and B, run the oracle, print and write the scores."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snr-db", type=float, default=-10.0)
    ap.add_argument("--n", type=int, default=100, help="particles of each map")
    ap.add_argument("--n-per-scale", type=int, default=1000)
    ap.add_argument("--n-global", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if not (BETAGAL_MAP.exists() and BETAGAL_STAR.exists()):
        sys.exit(f"needs {BETAGAL_MAP} and {BETAGAL_STAR}")
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(a.seed)
    vol_a = map_for_particles(BETAGAL_MAP, PIXEL_A, 64)
    vol_b = add_extra_domain(vol_a, 0.06, seed=a.seed)
    d = vol_a.shape[-1]
    df = read_particles(BETAGAL_STAR, require_poses=True).particles
    rows = torch.randint(0, len(df), (a.n,), generator=g).numpy()
    ctf = CtfParams.from_particles(df.iloc[rows].reset_index(drop=True))
    ctf_rfft = compute_ctf(ctf, d, PIXEL_A, rfft=True)
    rot = euler_to_matrix(random_euler_deg(a.n, generator=g))
    shift = (torch.rand(a.n, 2, generator=g) * 2 - 1) * 2.0
    pa, pb = Projector(vol_a), Projector(vol_b)
    clean_a = images_at(pa, rot, shift, ctf_rfft)
    clean_b = images_at(pb, rot, shift, ctf_rfft)
    sigma = noise_sigma_for_snr(clean_a, a.snr_db)
    noisy_a = clean_a + sigma * torch.randn(clean_a.shape, generator=g)
    noisy_b = clean_b + sigma * torch.randn(clean_b.shape, generator=g)
    mask = circular_mask(d, 0.45 * d)
    out = {k: torch.zeros_like(clean_a) for k in ("pm_a", "map_a", "pm_b", "map_b")}
    diags: list[dict] = []
    t0 = time.time()
    for i in range(a.n):
        for tag, y in (("a", noisy_a[i]), ("b", noisy_b[i])):
            m, b, dg = posterior_mean(y, rot[i], shift[i], ctf_rfft[i], pa, sigma, 2.0, g, a.n_per_scale, a.n_global)
            out[f"pm_{tag}"][i], out[f"map_{tag}"][i] = m, b
            diags.append({"particle": i, "map": tag, **dg})
        if (i + 1) % 10 == 0:
            print(f"{i + 1}/{a.n} particles, {time.time() - t0:.0f} s", flush=True)
    result: dict = {"snr_db": a.snr_db, "n": a.n, "sigma": sigma, "n_per_scale": a.n_per_scale, "n_global": a.n_global}
    for name, est_a, est_b in (("raw", noisy_a, noisy_b), ("posterior mean (MMSE oracle)", out["pm_a"], out["pm_b"]),
                               ("best pose (MAP oracle)", out["map_a"], out["map_b"])):
        s = image_scores(est_a, clean_a, mask, PIXEL_A)
        r = recovery_fraction(est_b, clean_a, clean_b, mask)
        result[name] = {"cc": float(s["cc"].mean()), "fsc_40_10A": float(s["fsc_band"].mean()), "r_extra_domain": r}
        print(f"{name}: CC {s['cc'].mean():.3f}  FSC(40-10 Å) {s['fsc_band'].mean():.3f}  r {r:.2f}")
    # the trade-off: add back a fraction of the 20 Å low-passed residual (data minus oracle)
    for alpha in (0.25, 0.5, 0.75, 1.0):
        lp = {t: torch.from_numpy(gaussian_lowpass((y - out[f"pm_{t}"]).numpy(), PIXEL_A, 20.0))
              for t, y in (("a", noisy_a), ("b", noisy_b))}
        est_a, est_b = out["pm_a"] + alpha * lp["a"], out["pm_b"] + alpha * lp["b"]
        s = image_scores(est_a, clean_a, mask, PIXEL_A)
        r = recovery_fraction(est_b, clean_a, clean_b, mask)
        name = f"posterior mean + {alpha:g} x residual low-passed at 20 Å"
        result[name] = {"cc": float(s["cc"].mean()), "fsc_40_10A": float(s["fsc_band"].mean()), "r_extra_domain": r}
        print(f"{name}: CC {s['cc'].mean():.3f}  FSC(40-10 Å) {s['fsc_band'].mean():.3f}  r {r:.2f}")
    ess = np.array([x["ess"] for x in diags])
    gap = np.array([x["global_minus_local_nats"] for x in diags])
    result["ess_median"] = float(np.median(ess))
    result["ess_min"] = float(ess.min())
    result["global_minus_local_nats_max"] = float(gap.max())
    result["fraction_global_within_10_nats"] = float((gap > -10).mean())
    print(f"ESS median {np.median(ess):.0f} (min {ess.min():.1f}); best random global pose vs best local: max {gap.max():.0f} nats, "
          f"{(gap > -10).mean() * 100:.0f} % within 10 nats")
    (a.out / "oracle.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
