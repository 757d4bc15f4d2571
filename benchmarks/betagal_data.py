"""Where the benchmarks find the RELION tutorial's β-galactosidase data (never copied here).

``../shared/data/betagal-relion-tutorial/`` next to the repository (see its ``SOURCES.md``):
the map simulated from PDB 5a1a (64 px, 3.54 Å/px, RELION's frame) and the 1,211 real
particles with their RELION poses and CTFs.
"""

from __future__ import annotations

from pathlib import Path

BETAGAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "betagal-relion-tutorial"
BETAGAL_MAP = BETAGAL_DIR / "betagal_5a1a_sim_relionframe_3.54A_box64.mrc"
BETAGAL_STAR = BETAGAL_DIR / "betagal_particles_posed.star"
BETAGAL_PIXEL_A = 3.54
