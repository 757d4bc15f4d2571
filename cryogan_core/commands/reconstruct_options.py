"""The CryoGAN reconstruction's options, declared once for ``cryogan reconstruct``, the RELION
job and the README.

Each field is a click option (``--box_train 32`` or ``--box-train 32``) and a RELION
External-job param of the same name (``box_train`` = ``32`` in the Params tab); see
:mod:`cryogan_core.commands.options`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryogan_core.commands.options import (
    check_values,
    cs_project_dir_option,
    device_option,
    in_parts_passthrough_option,
    option,
    option_error,
)
from cryogan_core.errors import InputError

__all__ = ["MIN_BOX", "NOISE_SOURCES", "POSE_PRIORS", "ReconstructOptions"]

POSE_PRIORS = ("uniform", "star")
NOISE_SOURCES = ("auto", "patches", "white", "micrographs")
MIN_BOX = 16


@dataclass(frozen=True)
class ReconstructOptions:
    """Every setting of the CryoGAN reconstruction (Gupta et al. 2021).

    Units are in the names (px = pixels of the input particles unless said otherwise).

    Raises:
        InputError: on construction, naming the first option whose value is out of range.
    """

    box_train: int = option(0, "Training box (px): particles and volume are Fourier-cropped to it for speed (0 = auto: the even box whose Nyquist is nearest 14 Å, at most the particles' box; give the particles' box to train at full resolution). Final maps are written at the particles' box.")
    box_final: int = option(0, "Coarse to fine: from box_final_at of the run on, train at this larger box (px; volumes Fourier-padded, new critics; 0 = box_train throughout).")
    box_final_at: float = option(0.5, "Fraction of the run (time or epochs) after which training moves to box_final.")
    critic_warmup: int = option(100, "Rounds of n_critic critic updates that train the new critics at box_final before the volumes move again.")
    particle_diameter_A: float = option(0.0, "Particle diameter (Å): background radius for normalisation and noise patches, and the spherical volume mask (0 = 0.8 × box × pixel size).")
    symmetry: str = option("C1", "Point group imposed on the volume (C1, Cn, Dn, T, O, I). Set the particle's known symmetry (β-gal: D2): it helps more than any other setting.")
    positivity: bool = option(True, "Constrain the density to be >= 0 (yes/no).")
    initial_model: str = option("", "Start both half maps from this map (MRC, e.g. from RELION InitialModel or cryoSPARC ab-initio; resampled to the particles, low-passed at initial_lowpass_A, masked) instead of a Gaussian ball. Its orientation and hand are kept. Empty = the Gaussian ball.")
    initial_lowpass_A: float = option(40.0, "Resolution (Å) beyond which the initial model is zeroed before training (a hard low-pass, as RELION's initial low-pass filter), so finer detail comes from the particles.")
    max_minutes: float = option(60.0, "Training-time budget in minutes, earlier runs of a continued job included (0 = no limit).")
    n_epochs: float = option(200.0, "Epochs (each real particle seen once by the critic per epoch); training ends at n_epochs or max_minutes.")
    lr: float = option(2e-3, "Adam learning rate of the volume (and of the critic unless lr_critic is set). 2e-3 (it was 5e-3): in 60-minute runs at -10 dB the map reached 21.7 Å against the truth in C1 and 20.2 Å in D2 (5e-3: 51.1 and 32.4 Å).")
    lr_critic: float = option(0.0, "Adam learning rate of the critic (0 = lr).")
    lr_gamma: float = option(0.99, "Learning-rate decay per epoch (lr · gamma^epoch).")
    n_critic: int = option(4, "Critic updates per volume update.")
    critic_width: int = option(16, "Channels of the critic's first conv + pool block; each of its 4 blocks doubles them (16: 16, 32, 64, 128). Wider costs time: 32 halves the steps per second on a CPU.")
    gp_lambda: float = option(1.0, "Weight of the WGAN-GP gradient penalty.")
    beta1: float = option(0.5, "Adam beta1.")
    beta2: float = option(0.9, "Adam beta2.")
    batch_size: int = option(8, "Particles per critic / volume step.")
    blur_sigma_px: float = option(2.0, "Gaussian blur sigma (training px) of the critic inputs at the start; it shrinks to 0.")
    blur_end: float = option(0.8, "Fraction of the run at which the blur reaches 0.")
    march: bool = option(False, "Frequency marching (yes/no): after every volume update, keep only the Fourier shells the critic's current blur passes (0.34 × box / blur sigma, at least 4), so the map grows from low to high resolution with the blur. Off by default: at -20 dB (5,000 particles, three training seeds, paired runs) it ended 2 and 7.5 Å better and 13.5 Å worse than without; at -10 dB the same 20 Å.")
    pose_prior: str = option("uniform", "Pose prior: uniform (SO(3)) or star (the input's rlnAngleRot/Tilt/Psi distribution).")
    shift_prior: str = option("uniform", "Shift prior: uniform (±shift_px), gaussian (sigma shift_px), star (the input's origins) or none.")
    shift_px: float = option(2.0, "Half-width (uniform) or sigma (gaussian) of the shift prior, in pixels of the input particles.")
    noise: str = option("auto", "Noise source: auto (micrographs with --in_mics, else background patches), patches, white or micrographs.")
    pad_factor: float = option(1.5, "Padding of the Fourier-slice projector during training (1 = fastest, 2 = RELION's).")
    eval_minutes: float = option(5.0, "Minutes between half-map FSC evaluations and snapshots during training (0 = only at the end).")
    log_seconds: float = option(30.0, "Seconds between progress lines.")
    max_particles: int = option(0, "Use at most this many particles (random subset; 0 = all). CryoGAN holds them all at the training box: a set that would take more than a quarter of the memory is subsampled to what fits, with a warning.")
    in_parts_passthrough: str = in_parts_passthrough_option()
    cs_project_dir: str = cs_project_dir_option()
    seed: int = option(0, "Random seed (half sets when absent, initialisation, every random draw).")
    device: str = device_option()

    def __post_init__(self) -> None:
        """Check the values that do not depend on the data.

        Raises:
            InputError: ``--name value: why`` for the first bad value.
        """
        # torch-using modules are imported here, not at import (cryogan --help stays fast)
        from cryogan_core.commands._common import select_device
        from cryogan_core.models.volume import symmetry_matrices
        from cryogan_core.train.cryogan_simulator import SHIFT_PRIORS

        check_values(
            self,
            positive=("lr", "batch_size", "n_critic", "critic_width", "pad_factor", "log_seconds", "n_epochs", "initial_lowpass_A"),
            non_negative=("box_train", "box_final", "critic_warmup", "particle_diameter_A", "max_minutes", "lr_critic", "gp_lambda", "blur_sigma_px",
                          "shift_px", "eval_minutes", "max_particles", "blur_end", "seed"),
            unit_interval=("beta1", "beta2"),
            choices={"pose_prior": POSE_PRIORS, "shift_prior": SHIFT_PRIORS, "noise": NOISE_SOURCES},
        )
        if not 0 < self.lr_gamma <= 1:
            raise option_error(self, "lr_gamma", "must be in (0, 1]")
        if self.pad_factor < 1:
            raise option_error(self, "pad_factor", "must be >= 1")
        if not 0 < self.box_final_at < 1:
            raise option_error(self, "box_final_at", "must be in (0, 1)")
        if 0 < self.box_train < MIN_BOX:
            raise option_error(self, "box_train", f"must be >= {MIN_BOX} px (the critic pools 4 times)")
        try:
            symmetry_matrices(self.symmetry)
        except ValueError as exc:
            raise InputError(f"--symmetry {self.symmetry}: {exc}") from None
        select_device(self.device)
