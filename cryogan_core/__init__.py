"""cryogan_core: the science of reference-guided denoising and CryoGAN reconstruction.

Layers (data flows one way): ``io`` (STAR/MRC in and out) -> ``physics`` (Euler angles,
CTF, projection, reconstruction, simulator) -> ``models``/``train`` -> ``metrics`` and
``report``. Nothing in here knows about RELION jobs; see ``relion_external`` for that.
"""

__version__ = "0.1.0"
