"""The denoiser's options, declared once for the ``cryogan denoise`` command and the RELION job.

Each option is a click option (``--train-box``) and a RELION External-job param with the
same name in underscores (``--train_box 48`` in the Params tab).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """One option: name (underscores), type (int, float, str or bool flag), default, help."""

    name: str
    type: type
    default: Any
    help: str


DENOISE_PARAMS: tuple[Param, ...] = (
    Param("model", str, "", "A trained model (model.pt of an earlier run's output folder): skip training, only denoise."),
    Param("train_box", int, 0, "Box (px) the network trains and denoises at: Fourier-cropped from the particles' box for speed (0 = the particles' box)."),
    Param("n_steps", int, 3000, "Training steps (batches)."),
    Param("batch_size", int, 16, "Particles per training step."),
    Param("l1_weight", float, 100.0, "Weight of the L1 loss (pix2pix lambda)."),
    Param("gan_weight", float, 0.1, "Weight of the adversarial loss (pix2pix: 1; 0 = plain L1 U-Net). At 1 the held-out CC with the truth drops by ~0.09 (hallucinated texture), so the default is 0.1."),
    Param("lr", float, 1e-3, "Adam learning rate (pix2pix: 2e-4; 1e-3 converges within the CPU budget), decayed linearly to 0 over the second half of training."),
    Param("beta1", float, 0.5, "Adam beta1."),
    Param("base_channels", int, 16, "U-Net channels at full resolution."),
    Param("depth", int, 3, "U-Net down-sampling levels."),
    Param("n_res_blocks", int, 2, "Residual blocks in the U-Net bottleneck."),
    Param("ctf_free", bool, False, "Train on CTF-free targets: denoise and correct the CTF at once."),
    Param("scale_mode", str, "particle", "Target scale by least squares: 'particle' (one per particle) or 'pooled'."),
    Param("mask_radius_px", float, 0.0, "Radius (px) of the circular mask for scale fits and scores (0 = from --in_mask, else 0.45 x box)."),
    Param("max_train_particles", int, 20000, "Train on at most this many particles of half set 1 (random subset)."),
    Param("n_report", int, 500, "Held-out particles (half set 2) used for the report and bias controls."),
    Param("train_both_halves", bool, False, "After the held-out report, train further on both halves before denoising all particles."),
    Param("float16", bool, False, "Write the denoised stacks as float16 (MRC mode 12; RELION 4.0+ reads them, RELION 3.1 cannot)."),
    Param("stack_size", int, 10000, "Particles per denoised output stack."),
    Param("no_scores", bool, False, "Skip the per-particle agreement columns (saves one projection per particle)."),
    Param("no_bias_controls", bool, False, "Skip the reference-bias controls."),
    Param("in_parts_passthrough", str, "", "cryoSPARC input only: passthrough .cs file(s) for the particles .cs, comma-separated (default: found beside it)."),
    Param("cs_project_dir", str, "", "cryoSPARC input only: the cryoSPARC project directory that blob paths are relative to (default: the .cs folder and its parents)."),
    Param("seed", int, 0, "Random seed (initialisation, batches, subsets)."),
    Param("device", str, "auto", "torch device: auto (CUDA if present), cpu, cuda, cuda:1 ..."),
)


def param_defaults() -> dict[str, Any]:
    """Name -> default of every denoiser option."""
    return {p.name: p.default for p in DENOISE_PARAMS}
