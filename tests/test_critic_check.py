"""The end-of-training check of what each half's critic knows: its own particles (memory) or
their distribution (its estimate on the other half set's particles, never seen by it)."""

from __future__ import annotations

import math

import pytest
import torch
from test_simulator_check import matched_data

from cryogan_core.commands.reconstruct_outputs import log_critic_checks
from cryogan_core.report.reconstruct_report import summary_lines
from cryogan_core.train.critic_check import critic_check


class TemplateCritic(torch.nn.Module):
    """D(x) = ⟨x, T⟩: a linear critic whose scores have a closed form."""

    def __init__(self, template: torch.Tensor) -> None:
        super().__init__()
        self.template = torch.nn.Parameter(template.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] * self.template).sum(dim=(-2, -1))


@pytest.mark.parametrize("box", [24, 25])
def test_memory_of_own_particles_is_separated_from_what_the_critic_knows_of_the_map(box: int) -> None:
    vol, priors, real = matched_data(box, n=1200)
    own, other = real[:600], real[600:]
    template = torch.randn(box, box, generator=torch.Generator().manual_seed(3))
    # A critic that "remembers" its own particles: they all carry a pattern P it responds to,
    # which neither the other half set nor the simulated particles have.
    pattern = 0.05 * template
    c = critic_check(TemplateCritic(template), vol, priors, own + pattern, other, n_max=600, seed=1)
    assert c.n_particles == 600 and c.sigma_px == 0.0
    expected_memory = float((pattern * template).sum())  # ⟨P, T⟩ exactly, the noise's share averages out
    assert abs(c.memory - expected_memory) < 4 * c.memory_se
    assert c.memory > 6 * c.memory_se  # and it is resolved
    # the other half and the simulated particles come from the same process: no held-out difference
    assert abs(c.held_out) < 4 * c.held_out_se
    assert c.total == pytest.approx(c.memory + c.held_out, abs=1e-9)
    # the standard error of a mean difference of ⟨x, T⟩ over 600 + 600 independent images
    var_own = float(((own + pattern) * template).sum(dim=(-2, -1)).var())
    var_other = float((other * template).sum(dim=(-2, -1)).var())
    assert c.memory_se == pytest.approx(math.sqrt(var_own / 600 + var_other / 600), rel=1e-6)


def test_a_critic_that_tells_the_map_s_particles_apart_reads_it_on_unseen_particles() -> None:
    vol, priors, real = matched_data(24, n=1200)
    # 3 x the volume: the simulated particles carry 3 x the signal; a critic that responds to
    # the real particles' mean image sees that on the other half set's particles too
    mean_img = real.mean(0)
    critic = TemplateCritic(mean_img)
    c = critic_check(critic, 3.0 * vol, priors, real[:600], real[600:], n_max=600, seed=1)
    assert abs(c.memory) < 4 * c.memory_se  # the same distribution on both real sides
    assert abs(c.held_out) > 4 * c.held_out_se


def test_bad_stacks_are_refused_and_the_log_line_says_what_each_number_is(log_messages) -> None:
    vol, priors, real = matched_data(24, n=40)
    critic = TemplateCritic(torch.ones(24, 24))
    with pytest.raises(ValueError, match=r"other particles must be a non-empty \(n, 24, 24\)"):
        critic_check(critic, vol, priors, real, real[:, :20, :20])
    with pytest.raises(ValueError, match="own particles must be a non-empty"):
        critic_check(critic, vol, priors, real[:0], real)
    c = critic_check(critic, vol, priors, real[:20], real[20:], seed=2)
    log_critic_checks({"half 1": c})
    text = "".join(log_messages)
    assert f"Critic, half 1: Wasserstein estimate {c.total:.2f}" in text
    assert "on the other half set's (never seen by it)" in text and "memory of its own particles" in text


def test_the_pdf_s_first_page_gives_half_1_s_estimates_and_memory() -> None:
    vol, priors, real = matched_data(24, n=40)
    c = critic_check(TemplateCritic(torch.ones(24, 24)), vol, priors, real[:20], real[20:], seed=2)
    summary = {"options": {"symmetry": "C1", "seed": 0}, "n_particles": 40, "n_half1": 20, "n_half2": 20,
               "estimated_snr_db": -5.0, "box": 24, "pixel_size_A": 6.0, "box_train": 24, "nyquist_train_A": 12.0,
               "steps": 1, "epochs": 1.0, "training_time_s": 1.0, "stopped_by": "epochs", "resolution_A_fsc_0.143": 20.0,
               "critic_check": {"half 1": c.to_dict(), "half 2": c.to_dict()}}
    line = next(s for s in summary_lines(summary, -15.0) if s.startswith("critic estimate, own / unseen"))
    assert line.endswith(f"{c.total:.2f} / {c.held_out:.2f} (memory {c.memory:.2f} ± {c.memory_se:.2f})")
    del summary["critic_check"]  # optional in a summary, as the spectra are
    assert not any(s.startswith("critic estimate") for s in summary_lines(summary, -15.0))
