"""RELION's ``--j`` becomes torch's thread count, at most the CPUs available to the job."""

from __future__ import annotations

import os

import pytest
import torch

import cryogan_core.commands._common as common


@pytest.fixture
def restore_threads():
    """Put torch's thread count back after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("asked, cpus, used, logged", [(8, 2, 2, True), (2, 2, 2, False), (1, 4, 1, False), (0, 4, 1, False)])
def test_threads_are_capped_at_the_available_cpus(monkeypatch, restore_threads, log_messages, asked, cpus, used, logged):
    monkeypatch.setattr(common, "available_cpus", lambda: cpus)
    assert common.set_threads(asked) == used
    assert torch.get_num_threads() == used
    assert any(f"--j {asked}: {cpus} CPU(s) available to this job; using {used} thread(s)" in m for m in log_messages) is logged


def test_available_cpus_follows_the_affinity_mask():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert common.available_cpus() == expected >= 1
