"""The denoiser with its input whitened by the particles' power spectrum (run by hand; stop 31).

``bench_denoise.py`` with one change: the U-Net's input is filtered by the fixed radial
filter ``W(k) = sqrt(mean P / P(k))``, ``P(k)`` the radially averaged power spectrum of the
training inputs (``|rfft2|²`` averaged over the particles and over each Fourier shell of
the training box), measured once when training starts. The filter is a first layer of
the network: targets, outputs, scores and the CTF-aware mode's output CTF are unchanged.
The real particles' noise is coloured (2–3× its mean power at 80–20 Å, where β-gal's
signal is; docs/denoiser_benchmarks.md, stop 28); whitening changes no information, so a
Bayes-optimal network gains nothing, but a small network trained for minutes might. Not a
feature of the job.

    python benchmarks/denoise_whitened_input.py --real --skip-bm3d --threads 1 \\
        --opt recon_loss=l2 --opt gan_weight=0 --opt average_symmetries=8 --o bench_out/real_white

Every argument goes to ``bench_denoise.py``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from baselines import radial_whitening_filter  # noqa: E402

from cryogan_core.commands import denoise  # noqa: E402
from cryogan_core.models import unet  # noqa: E402

#: The filter ``(H, H//2+1)`` float32 in ``rfft2`` layout, set when training starts.
FILTER: dict[int, torch.Tensor] = {}


def use_whitened_input() -> None:
    """Estimate the filter from the training inputs; apply it at the start of every U-Net forward."""
    train, forward = denoise.train_pix2pix, unet.UNetGenerator.forward

    def patched_train(trainer, inputs, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        """``train_pix2pix`` (same arguments), after measuring the filter on ``inputs``."""
        if inputs.shape[-1] not in FILTER:
            FILTER[inputs.shape[-1]] = radial_whitening_filter(inputs.cpu())
            w = FILTER[inputs.shape[-1]]
            print(f"[whitened input] filter from {inputs.shape[0]} training inputs: {float(w.min()):.2f} to {float(w.max()):.2f}",
                  flush=True)
        return train(trainer, inputs, *a, **k)

    def patched_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``UNetGenerator.forward`` of ``(n, 1, H, H)`` inputs filtered by the whitening filter."""
        w = FILTER.get(x.shape[-1])
        if w is not None:
            x = torch.fft.irfft2(torch.fft.rfft2(x) * w.to(x.device), s=x.shape[-2:])
        return forward(self, x)

    denoise.train_pix2pix = patched_train
    unet.UNetGenerator.forward = patched_forward


def main() -> None:
    """Install the change and run ``bench_denoise.py`` with our arguments."""
    use_whitened_input()
    sys.argv = [str(HERE / "bench_denoise.py"), *sys.argv[1:]]
    runpy.run_path(str(HERE / "bench_denoise.py"), run_name="__main__")


if __name__ == "__main__":
    main()
