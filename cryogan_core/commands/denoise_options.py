"""The denoiser's options, declared once for ``cryogan denoise``, the RELION job and the README,
and its inputs (:class:`DenoiseInputs`).

Each field is a click option (``--train_box 48`` or ``--train-box 48``) and a RELION
External-job param of the same name (``train_box`` = ``48`` in the Params tab); see
:mod:`cryogan_core.commands.options`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryogan_core.commands.options import (
    check_values,
    cs_project_dir_option,
    device_option,
    in_parts_passthrough_option,
    option,
    option_error,
)

SCALE_MODES = ("particle", "pooled")
# the generator's reconstruction term (train.pix2pix.RECON_LOSSES; not imported: no torch here)
RECON_LOSSES = ("l1", "l2")
# symmetry counts SymmetryAveraged accepts (models.symmetry_average.ALLOWED_COUNTS; not imported
# here so that this module, and ``cryogan --help``, load without torch)
SYMMETRY_COUNTS = (1, 2, 4, 8)


@dataclass
class DenoiseInputs:
    """Where the data are: particles, reference map, optional mask, output folder.

    Attributes:
        star_path: particle STAR (or cryoSPARC ``.cs``) with poses and CTF.
        output_dir: the job's output folder.
        map_path: the refined map (None only with ``--model`` and ``--no_scores``: then
            nothing is projected).
        mask_path: optional 3D mask.
        project_dir: the folder ``rlnImageName`` paths are relative to (default: the
            current directory, as RELION runs jobs).
    """

    star_path: Path
    output_dir: Path
    map_path: Path | None = None
    mask_path: Path | None = None
    project_dir: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class DenoiseOptions:
    """Every setting of the cGAN denoiser (pix2pix, Isola et al. 2017; Su et al. 2018).

    Units are in the names or the help (px = pixels of the input particles).

    Raises:
        InputError: on construction, naming the first option whose value is out of range.
    """

    model: str = option("", "A trained model (model.pt of an earlier run's output folder): skip training, only denoise.")
    train_box: int = option(0, "Box (px) the network trains and denoises at: Fourier-cropped from the particles' box for speed (0 = the particles' box).")
    n_steps: int = option(3000, "Training steps (batches).")
    batch_size: int = option(16, "Particles per training step.")
    validation_fraction: float = option(0.1, "Fraction of the training particles (half set 1) kept out of training to choose the weights: the generator is scored on them every validate_every steps and the best-scoring weights are used (0 = the last step's weights). Half set 2 stays unseen for the report.")
    validate_every: int = option(250, "Training steps between validation scores.")
    checkpoint_every: int = option(200, "Training steps between checkpoints (checkpoint.pt): an abort or a crash loses at most this many, and RELION's Continue! (or the same command again) resumes from the last one.")
    l1_weight: float = option(100.0, "Weight of the reconstruction loss, L1 or L2 as recon_loss says (pix2pix lambda).")
    recon_loss: str = option("l1", "The generator's reconstruction loss: 'l1' (pix2pix; its optimum is the per-pixel posterior median of the target) or 'l2' (squared error; its optimum is the posterior mean, which maximises the expected CC). Use l2 with gan_weight 0: the squared error is ~10x smaller than L1, so at the default gan_weight the adversarial term dominates (-20 dB CC 0.397 against 0.521 with gan_weight 0; README).")
    gan_weight: float = option(0.1, "Weight of the adversarial loss (pix2pix: 1; 0 = plain L1 U-Net). At 1 the held-out CC with the truth drops by ~0.09 (hallucinated texture), so the default is 0.1.")
    lr: float = option(1e-3, "Adam learning rate (pix2pix: 2e-4; 1e-3 converges within the CPU budget), decayed linearly to 0 over the second half of training.")
    beta1: float = option(0.5, "Adam beta1.")
    base_channels: int = option(16, "U-Net channels at full resolution.")
    depth: int = option(3, "U-Net down-sampling levels.")
    n_res_blocks: int = option(2, "Residual blocks in the U-Net bottleneck.")
    disc_channels: int = option(32, "PatchGAN discriminator channels in its first layer, doubled per layer up to 8x (pix2pix --ndf: 64). 16 trains ~55% more particles/s with the default U-Net (64 and 128 px, one CPU thread) and gave the same CC and FSC 40-10 Å on unseen particles at -10 dB, at -20 dB and on real β-gal, but recovered less of a domain the map lacks in all three (extra-domain r 0.63 / 0.10 / 0.38 against 0.65 / 0.23 / 0.47; one seed each; docs/denoiser_benchmarks.md), so 32 stays the default. Unused with gan_weight 0.")
    synthetic_pairs: int = option(0, "Extra training pairs made from the map at new poses (a training particle's viewing direction, a random in-plane angle) with another training particle's CTF and a third one's noise (its residual after the map's prediction): more pairs when the particle set is small. Only half set 1's training particles are used. On the real β-gal set (529 training particles) 20,000 left the unseen CC as it was (0.657 -> 0.652-0.657) and recovered more of a domain the map lacks (r +0.08 and +0.12, two seeds); 0 = none.")
    ctf_free: bool = option(False, "Train on CTF-free targets: denoise and correct the CTF at once.")
    ctf_aware: bool = option(True, "The network sees each particle phase-flipped with its CTF, and its output is multiplied by that CTF (from the particle's defocus in the STAR file), so the CTF's rings are not guessed from a noisy image. At -10 dB the unseen particles' mean FSC 40-10 Å rose 0.478 -> 0.518 (CC 0.770 both; extra-domain r 0.66 -> 0.62; README). Only with CTF'd targets (ignored with ctf_free).")
    scale_mode: str = option("particle", "Target scale by least squares: 'particle' (one per particle) or 'pooled'.")
    mask_radius_px: float = option(0.0, "Radius (px) of the circular mask for scale fits and scores (0 = from --in_mask, else 0.45 x box).")
    max_train_particles: int = option(20000, "Train on at most this many particles of half set 1 (random subset; 0 = all).")
    n_report: int = option(500, "Held-out particles (half set 2) used for the report and bias controls (random subset; 0 = all).")
    train_both_halves: bool = option(False, "After the held-out report, train further on both halves before denoising all particles.")
    average_symmetries: int = option(1, "Average each denoised particle over this many of the 8 flips and 90° rotations of the square (1, 2, 4 or 8), each mapped back: less of the network's own error, N times slower denoising. Used for the report, the bias controls and the written particles alike. With 8, the unseen particles' CC rose 0.631 -> 0.647 (real β-gal), 0.768 -> 0.773 (simulated, -10 dB) and 0.436 -> 0.482 (-20 dB); on a GPU the cost hardly shows.")
    float16: bool = option(False, "Write the denoised stacks as float16 (MRC mode 12; RELION 4.0+ reads them, RELION 3.1 cannot).")
    stack_size: int = option(10000, "Particles per denoised output stack.")
    no_scores: bool = option(False, "Skip the per-particle agreement columns (saves one projection per particle).")
    no_bias_controls: bool = option(False, "Skip the reference-bias controls.")
    in_parts_passthrough: str = in_parts_passthrough_option()
    cs_project_dir: str = cs_project_dir_option()
    seed: int = option(0, "Random seed (initialisation, batches, subsets).")
    device: str = device_option()

    def __post_init__(self) -> None:
        """Check the values that do not depend on the data.

        Raises:
            InputError: ``--name value: why`` for the first bad value.
        """
        check_values(
            self,
            positive=("n_steps", "batch_size", "validate_every", "checkpoint_every", "base_channels", "depth", "disc_channels", "stack_size", "lr"),
            non_negative=("train_box", "synthetic_pairs", "l1_weight", "gan_weight", "mask_radius_px", "max_train_particles", "n_report",
                          "n_res_blocks", "seed"),
            unit_interval=("beta1", "validation_fraction"),
            choices={"scale_mode": SCALE_MODES, "average_symmetries": SYMMETRY_COUNTS, "recon_loss": RECON_LOSSES},
        )
        if self.l1_weight == 0 and self.gan_weight == 0:
            raise option_error(self, "l1_weight", "and --gan_weight are both 0: nothing to train on")
        from cryogan_core.commands._common import select_device  # torch: not at import (cryogan --help stays fast)

        select_device(self.device)
