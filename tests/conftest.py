"""Shared pytest fixtures: the location of ../shared/data (real data, optional), and the
loguru messages of a test."""

from __future__ import annotations

from pathlib import Path

import pytest
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
