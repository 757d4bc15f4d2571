"""Why the real β-gal particles score lower than a simulation at their SNR (run by hand).

A denoiser trained on the real particles (``bench_denoise.py --real``) is scored on three
sets made from the same unseen particles (half set 2):

1. ``real``: the particles themselves, against the map's CTF'd projection at their RELION
   pose (the benchmark's real-data score);
2. ``map + real noise``: the map at new poses (:mod:`cryogan_core.train.synthetic_pairs`)
   with the CTFs and the noise residuals of those particles: the signal is exactly the
   map's, the noise is the real one (spectrum, ice, detector), so the truth is known;
3. ``map + white noise``: the same images with white Gaussian noise of the same variance
   instead of the residuals;
4. ``map + real-spectrum Gaussian noise``: the residuals with their phases randomised
   (each keeps its Fourier amplitudes): the real noise's colour without its structure
   (neighbouring particles, ice and carbon edges).

If (2) scores like (1), the gap to a simulation is in the noise, not in how far the real
particles are from the map's predictions (pose and CTF errors, the map itself,
heterogeneity); (3) and (4) then split the noise's effect into its spectrum and its
structure::

    python benchmarks/bench_real_gap.py --model bench_out/real_l2s8_ctl/job/model.pt --average-symmetries 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from betagal_data import BETAGAL_DIR, BETAGAL_MAP, BETAGAL_STAR  # noqa: E402

from cryogan_core.commands._common import map_for_particles  # noqa: E402
from cryogan_core.commands.denoise import load_model  # noqa: E402
from cryogan_core.io.images import ParticleImages  # noqa: E402
from cryogan_core.io.star import read_particles  # noqa: E402
from cryogan_core.models.symmetry_average import symmetry_averaged  # noqa: E402
from cryogan_core.train.evaluate import image_scores  # noqa: E402
from cryogan_core.train.pairs import build_pairs, input_transform, predictions, train_box_ctf  # noqa: E402
from cryogan_core.train.pix2pix import denoise_images  # noqa: E402
from cryogan_core.train.synthetic_pairs import synthetic_pairs  # noqa: E402


BANDS_A = ((float("inf"), 80.0), (80.0, 40.0), (40.0, 20.0), (20.0, 10.0), (10.0, 0.0))


def noise_spectrum_by_band(noise: torch.Tensor, signal: torch.Tensor, pixel_size_A: float) -> list[dict[str, float]]:
    """Where the noise's power is: per resolution band, its mean power over its mean over all
    frequencies (1 everywhere for white noise), and the signal's power over the noise's.

    Args:
        noise: ``(n, D, D)`` residuals (particle minus its scaled prediction).
        signal: ``(n, D, D)`` scaled predictions.
        pixel_size_A: Å per pixel.

    Returns:
        One dict per band of :data:`BANDS_A` (Å, low to high resolution; 0 = Nyquist):
        ``low_A``, ``high_A``, ``noise_power_rel``, ``snr``.
    """
    d = noise.shape[-1]
    f = torch.fft.fftfreq(d) / pixel_size_A
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    pn = (torch.fft.fft2(noise).abs() ** 2).mean(0)
    ps = (torch.fft.fft2(signal).abs() ** 2).mean(0)
    out = []
    for low, high in BANDS_A:
        sel = (radius >= 1.0 / low) & (radius < (1.0 / high if high > 0 else float("inf")))
        out.append({"low_A": low, "high_A": high, "noise_power_rel": float(pn[sel].mean() / pn.mean()),
                    "snr": float(ps[sel].mean() / pn[sel].mean())})
    return out


def main() -> None:
    """Score the model on the real unseen particles and on the two simulations made from them."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model.pt of a bench_denoise.py --real run")
    ap.add_argument("--average-symmetries", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--o", type=Path, default=None, help="JSON output (default: beside the model)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not BETAGAL_STAR.exists():
        sys.exit(f"real data not found: {BETAGAL_STAR}")
    gen, settings, pix_train = load_model(a.model, torch.device("cpu"))
    if settings.train_box != settings.box:
        sys.exit("this check expects a model trained at the particles' box (no --train_box)")
    gen = symmetry_averaged(gen, a.average_symmetries)
    df = read_particles(BETAGAL_STAR, require_poses=True, require_images=True).particles.reset_index(drop=True)
    rows = np.flatnonzero(df["rlnRandomSubset"].to_numpy() == 2)
    images = ParticleImages(df, BETAGAL_DIR, BETAGAL_STAR)
    vols: dict[float, torch.Tensor] = {}

    def volume_for_pixel(p: float) -> torch.Tensor:
        """The map ``(box, box, box)`` resampled to pixel size ``p`` (Å), cached."""
        return vols.setdefault(p, map_for_particles(BETAGAL_MAP, p, images.box))

    mask = settings.train_mask()

    def scores(x: torch.Tensor, truth: torch.Tensor, ctf: torch.Tensor | None) -> dict[str, float]:
        """Denoise ``x`` ``(n, D, D)`` (normalised particles; ``ctf`` ``(n, D, D//2+1)`` for a
        CTF-aware model) and give the mean masked CC and FSC 40–10 Å of the raw and the
        denoised images with ``truth`` ``(n, D, D)`` (:func:`image_scores`)."""
        out = denoise_images(gen, x, ctf=ctf if settings.ctf_aware else None)
        raw, den = image_scores(x, truth, mask, pix_train), image_scores(out, truth, mask, pix_train)
        return {"cc_raw": float(raw["cc"].mean()), "cc_denoised": float(den["cc"].mean()),
                "fsc_40_10A_raw": float(raw["fsc_band"].mean()), "fsc_40_10A_denoised": float(den["fsc_band"].mean())}

    result: dict[str, dict[str, float]] = {}
    held = build_pairs(images, df, rows, volume_for_pixel, settings)
    spectrum = noise_spectrum_by_band(held["inputs"] - held["reference_ctf"], held["reference_ctf"], pix_train)
    result["real"] = scores(held["inputs"], held["reference_ctf"], train_box_ctf(df.iloc[rows], settings))

    slope = float(held["slope"].median())
    pairs, table = synthetic_pairs(images, df, rows, volume_for_pixel, settings, len(rows), slope, a.seed)
    clean = slope * predictions(table, volume_for_pixel)
    ctf = train_box_ctf(table, settings)
    result["map + real noise"] = scores(pairs["inputs"], clean, ctf)

    # the same signal with white noise of each synthetic particle's residual variance
    residual_var = (pairs["inputs"] - pairs["targets"]).var(dim=(-2, -1))
    g = torch.Generator().manual_seed(a.seed)
    noisy = clean + residual_var.sqrt()[:, None, None] * torch.randn(clean.shape, generator=g)
    result["map + white noise"] = scores(input_transform(noisy, settings)(noisy), clean, ctf)

    # the same signal with Gaussian noise of each residual's own power spectrum (its Fourier
    # amplitudes, random phases): the real noise's colour without its structure
    residual = pairs["inputs"] - pairs["targets"]
    phases = torch.angle(torch.fft.rfft2(torch.randn(residual.shape, generator=g)))
    coloured = torch.fft.irfft2(torch.fft.rfft2(residual).abs() * torch.exp(1j * phases), s=residual.shape[-2:])
    noisy = clean + coloured
    result["map + real-spectrum Gaussian noise"] = scores(input_transform(noisy, settings)(noisy), clean, ctf)

    out_path = a.o or a.model.parent.parent / "real_gap.json"
    out_path.write_text(json.dumps({"model": str(a.model), "n": int(len(rows)), "average_symmetries": a.average_symmetries,
                                    "mask_radius_px": settings.mask_radius_px,
                                    "sets": result, "noise_spectrum": spectrum}, indent=2))
    print(f"{len(rows)} unseen particles (half set 2), model {a.model}, {a.average_symmetries} symmetries")
    print("| set | raw CC | denoised CC | raw FSC 40–10 Å | denoised FSC 40–10 Å |\n|---|---|---|---|---|")
    for name, s in result.items():
        print(f"| {name} | {s['cc_raw']:.3f} | {s['cc_denoised']:.3f} | {s['fsc_40_10A_raw']:.3f} | {s['fsc_40_10A_denoised']:.3f} |")
    print("\n| band (Å) | noise power / its mean | signal / noise power |\n|---|---|---|")
    for b in spectrum:
        print(f"| {b['low_A']:g}–{b['high_A'] or 'Nyquist'} | {b['noise_power_rel']:.2f} | {b['snr']:.3f} |")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
