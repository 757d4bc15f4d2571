"""Shared pytest fixtures: the location of ../shared/data (real data, optional), the
loguru messages of a test, and synthetic micrographs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from loguru import logger

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Return a path under ../shared/data, skipping the calling test when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


@pytest.fixture
def betagal_dir() -> Path:
    """The real beta-gal folder (../shared/data/betagal-relion-tutorial); skips when absent."""
    return shared_path("betagal-relion-tutorial")


@pytest.fixture
def log_messages():
    """The loguru messages logged during the test (list of str, one per message)."""
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), format="{message}")
    yield messages
    logger.remove(sink)


#: Micrograph side (px), and where the bright blobs (stand-ins for particles) sit.
MIC_PX = 256
PICKS_XY = [(64.0, 64.0), (192.0, 192.0), (64.0, 192.0)]


def write_micrographs(
    tmp: Path,
    mic_pixel_A: float | None = 2.0,
    n_mics: int = 2,
    side: int = MIC_PX,
    picks_xy: Sequence[tuple[float, float]] = PICKS_XY,
) -> tuple[Path, pd.DataFrame]:
    """Micrographs ``tmp/Mics/mic<i>.mrc`` of white noise (std 1) with a bright disc (value 50,
    radius 5 px) at each pick, and ``tmp/micrographs.star`` (names relative to ``tmp``;
    ``rlnMicrographPixelSize`` in the optics table unless ``mic_pixel_A`` is None).

    Returns the micrograph STAR path and the particle table with ``rlnMicrographName`` and
    ``rlnCoordinateX/Y`` of the picks (empty for ``picks_xy=()``).
    """
    rng = np.random.default_rng(0)
    (tmp / "Mics").mkdir(exist_ok=True)
    yy, xx = np.mgrid[:side, :side]
    names, parts = [], []
    for i in range(n_mics):
        img = rng.normal(size=(side, side)).astype(np.float32)
        for x, y in picks_xy:
            img[np.hypot(xx - x, yy - y) <= 5] = 50.0
            parts.append({"rlnMicrographName": f"Mics/mic{i}.mrc", "rlnCoordinateX": x, "rlnCoordinateY": y})
        with mrcfile.new(tmp / "Mics" / f"mic{i}.mrc") as m:
            m.set_data(img)
        names.append(f"Mics/mic{i}.mrc")
    mics = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1})
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1]})
    if mic_pixel_A is not None:
        optics["rlnMicrographPixelSize"] = mic_pixel_A
    star = tmp / "micrographs.star"
    starfile.write({"optics": optics, "micrographs": mics}, star)
    return star, pd.DataFrame(parts)
