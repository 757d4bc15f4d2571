"""Neural networks: U-Net generator, PatchGAN discriminator, CryoGAN critic, volume generators."""
