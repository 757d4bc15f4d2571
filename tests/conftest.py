"""Shared pytest fixtures: the location of ../shared/data (real data, optional), the
loguru messages of a test, synthetic micrographs, tiny CryoGAN jobs shared by tests, and an
abort hook that fires at a given call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

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


class StopAtCall:
    """A ``should_stop`` hook that raises :class:`StopAtCall.Stop` at its ``n``-th call (an
    abort at a known point); ``calls`` counts the calls so far."""

    class Stop(Exception):
        """Raised by the hook, as RELION's abort file makes the job raise."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise StopAtCall.Stop


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test leaves torch's thread count as it found it: tests and the commands they run
    in-process (``set_threads``, RELION's ``--j``) may change it, and a change would carry
    over into every later test."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


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


#: The options of a tiny CryoGAN job: one epoch of 120 particles at box 16, no timed evaluation.
TINY_RECONSTRUCT = {"box_train": "16", "max_minutes": "0", "n_epochs": "1", "eval_minutes": "0", "log_seconds": "1000",
                    "symmetry": "C1", "particle_diameter_A": "160"}


@pytest.fixture(scope="session")
def tiny_reconstruct(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[dict[str, Any], str, Path]]:
    """Run (once per argument set, for the whole session) a tiny CryoGAN job on 120 simulated
    particles of the built-in volume (24 px at 8 Å/px, seed 5) at ``snr_db`` with origins
    uniform in ±``shift_px``, options ``TINY_RECONSTRUCT`` updated by ``options``.

    Returns a function ``(snr_db, shift_px, **options) -> (summary, log text, output folder)``;
    tests that need the same job share one run.
    """
    from cryogan_core.commands.options import options_from_mapping
    from cryogan_core.commands.reconstruct import run_reconstruct
    from cryogan_core.commands.reconstruct_options import ReconstructOptions
    from cryogan_core.commands.simulate import run_simulate

    runs: dict[tuple, tuple[dict[str, Any], str, Path]] = {}

    def run(snr_db: float, shift_px: float, **options: str) -> tuple[dict[str, Any], str, Path]:
        key = (snr_db, shift_px, tuple(sorted(options.items())))
        if key not in runs:
            root = tmp_path_factory.mktemp("tiny_reconstruct")
            run_simulate(root / "Simulate", n=120, snr_db=snr_db, shift_px=shift_px, seed=5, box=24, pixel_size_A=8.0,
                         project_dir=root)
            messages: list[str] = []
            sink = logger.add(lambda m: messages.append(str(m)), format="{message}")
            try:
                summary = run_reconstruct(root / "Simulate/particles.star", root / "out",
                                          options_from_mapping(ReconstructOptions, {**TINY_RECONSTRUCT, **options}), project_dir=root)
            finally:
                logger.remove(sink)
            runs[key] = (summary, "".join(messages), root / "out")
        return runs[key]

    return run


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
