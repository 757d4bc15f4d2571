"""The cryo-EM forward model in torch: Euler angles, CTF, projection, reconstruction, simulator."""
