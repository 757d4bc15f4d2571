"""Shared pytest fixtures: the location of ../shared/data (real data, optional)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
