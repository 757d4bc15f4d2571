"""``cryogan reconstruct`` warns when the input's own origins (rlnOriginXAngst/YAngst) put the
particles further off-centre than its shift prior simulates them (docs/cryogan_benchmarks.md,
stop 35: on the real β-gal particles ``shift_prior star`` gave 46 Å against 52 Å)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from cryogan_core.commands.reconstruct_inputs import origins_outside_prior
from cryogan_core.io.star import read_particles


def _origins(px: list[tuple[float, float]], pixel_A: float = 2.0) -> pd.DataFrame:
    """A particle table with only origins, given in pixels of ``pixel_A`` Å."""
    a = np.asarray(px, dtype=float) * pixel_A
    return pd.DataFrame({"rlnOriginXAngst": a[:, 0], "rlnOriginYAngst": a[:, 1]})


def test_fraction_outside_each_prior_is_counted_per_particle():
    df = _origins([(0, 0), (1.5, -1.5), (2.5, 0), (0, -3), (4, 4)])
    frac, sigma = origins_outside_prior(df, 2.0, "uniform", 2.0)
    assert frac == pytest.approx(3 / 5)  # (2.5, 0), (0, -3), (4, 4): one axis outside is enough
    assert sigma == pytest.approx(np.std([0, 0, 1.5, -1.5, 2.5, 0, 0, -3, 4, 4]))
    assert origins_outside_prior(df, 2.0, "gaussian", 1.0)[0] == pytest.approx(3 / 5)  # outside ±2σ
    assert origins_outside_prior(df, 2.0, "gaussian", 1.9)[0] == pytest.approx(1 / 5)  # only (4, 4) beyond ±3.8
    assert origins_outside_prior(df, 2.0, "none", 2.0)[0] == pytest.approx(4 / 5)  # all but the centred one
    # on the edge of the prior is inside it
    assert origins_outside_prior(_origins([(2, -2), (0, 0)]), 2.0, "uniform", 2.0)[0] == 0.0


def test_nothing_to_check_without_origins_all_zero_or_with_the_star_prior():
    assert origins_outside_prior(_origins([(3, 3)]), 2.0, "star", 2.0) is None
    assert origins_outside_prior(_origins([(0, 0), (0, 0)]), 2.0, "uniform", 2.0) is None
    assert origins_outside_prior(pd.DataFrame({"rlnOriginXAngst": [9.0]}), 2.0, "uniform", 2.0) is None
    with pytest.raises(ValueError, match="pixel size"):
        origins_outside_prior(_origins([(3, 3)]), 0.0, "uniform", 2.0)


def test_the_real_betagal_particles_sit_beyond_the_default_prior(betagal_dir):
    df = read_particles(betagal_dir / "betagal_particles_posed.star", require_poses=True).particles
    frac, sigma = origins_outside_prior(df, 3.54, "uniform", 2.0)
    # their refined origins: σ 3.3 / 3.5 px on x / y; 54 % beyond ±2 px on x alone, 79 % on either
    assert 0.75 < frac < 0.83 and 3.3 < sigma < 3.6


@pytest.mark.parametrize("sim_shift_px, warned", [(1.0, False), (4.0, True)])
def test_the_job_warns_when_particles_are_more_off_centre_than_the_prior(tiny_reconstruct, sim_shift_px, warned):
    summary, text, out = tiny_reconstruct(0.0, sim_shift_px)
    assert ("off-centre beyond the shift prior (uniform, --shift_px 2)" in text) is warned
    check = json.loads((out / "summary.json").read_text())["origins_outside_shift_prior"]
    assert check == summary["origins_outside_shift_prior"] and check["warned"] is warned
    if warned:  # ±4 px uniform: 1 - (2/4)² = 75 % expected beyond ±2 px, σ 4/√3 = 2.3 px (120 particles)
        found = re.search(r"(\d+) % of the particles are off-centre.*\(σ ([\d.]+) px\)", text)
        assert found is not None
        assert 55 <= int(found.group(1)) <= 90 and 2.0 <= float(found.group(2)) <= 2.6
        # summary.json records what the warning says
        assert round(100 * check["fraction_outside"]) == int(found.group(1))
        assert round(check["sigma_px"], 1) == float(found.group(2))
    else:  # ±1 px: every particle inside the ±2 px prior
        assert check["fraction_outside"] == 0.0 and 0.4 < check["sigma_px"] < 0.75


def test_no_warning_when_the_prior_is_the_inputs_own_origins(tiny_reconstruct):
    summary, text, _ = tiny_reconstruct(0.0, 4.0, shift_prior="star")
    assert "off-centre beyond the shift prior" not in text
    assert summary["origins_outside_shift_prior"] is None  # nothing checked with the input's own origins
