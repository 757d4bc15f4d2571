"""Training loops: pix2pix (denoiser) and WGAN-GP (CryoGAN)."""
