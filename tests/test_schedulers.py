"""Steered calls step with the pipeline's own scheduler: parity with the plain call, per-particle history, noise."""

import warnings

import diffusers
import numpy as np
import pytest
import torch

import steer
import tiny_pipelines as tp
from steer.models import get_adapter
from steer.rewards.base import Reward

PROMPT = "a photo of a red circle"
SD_SCHEDULERS = ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
                 "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "LCMScheduler", "TCDScheduler", "HeunDiscreteScheduler",
                 "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler", "DEISMultistepScheduler", "DDPMScheduler"]
CASES = ([("sd", s) for s in SD_SCHEDULERS] + [("sdxl", s) for s in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler")]
         + [("sd3", "FlowMatchEulerDiscreteScheduler"), ("sd3", "FlowMatchHeunDiscreteScheduler"), ("flux", "FlowMatchEulerDiscreteScheduler")])


class Redness(Reward):
    name = "redness"

    def score(self, images, prompts):
        return 100 * (images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3)))


_PIPES: dict = {}


def pipe_with(family: str, scheduler: str):
    torch.set_num_threads(1)
    if family not in _PIPES:
        _PIPES[family] = getattr(tp, family)()
    pipe = _PIPES[family]
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe


@pytest.mark.parametrize("family, scheduler", CASES)
def test_one_particle_equals_the_plain_call(family, scheduler):
    pipe = pipe_with(family, scheduler)
    kw = dict(num_inference_steps=5, guidance_scale=5.0, output_type="np")
    plain = pipe(PROMPT, generator=[torch.Generator().manual_seed(3)], **kw).images
    timesteps = pipe.scheduler.timesteps.clone()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is deterministic")  # no fallback: the scheduler's own step is used
        out = steer.wrap(pipe, method="best_of_n", reward=Redness())(PROMPT, num_particles=1, generator=[torch.Generator().manual_seed(3)], **kw)
    assert np.abs(plain - out.images).max() < 1e-5
    assert out.trace.sampler.startswith(f"{scheduler}.step")
    assert out.trace.nfe == len(timesteps)  # second-order schedulers: two denoiser calls per step, as the plain call
    assert torch.equal(pipe.scheduler.timesteps, timesteps)  # the call stepped its own copy, not the pipeline's scheduler


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "PNDMScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler",
                                       "DEISMultistepScheduler"])
def test_resampled_history_follows_the_ancestors(scheduler):
    """Resampling a history-keeping solver's particles mid-run equals running the chosen ancestors alone."""
    pipe = pipe_with("sd", scheduler)
    adapter = get_adapter(pipe, eta=0.0)
    cond = adapter.encode([PROMPT, "a photo of two squares"], guidance_scale=5.0)
    idx = torch.tensor([0, 1, 0, 1])
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731

    def run(seeds, prompt_index, switch=None):
        adapter.set_schedule(8)
        g = gens(seeds)
        x, pi = adapter.initial_noise(g), prompt_index
        for i in range(adapter.num_steps):
            if switch is not None and i == switch[0]:
                anc = switch[1]
                adapter.select_state(anc, x.shape[0])
                x, pi, g = x[anc], pi[anc], [g[k] for k in anc.tolist()]
            x = adapter.step(x, i, cond.select(pi), g).prev_sample
        return x

    anc = torch.tensor([2, 2, 3, 0])
    mid = run([5, 6, 7, 8], idx, switch=(3, anc))
    alone = run([7, 7, 8, 5], idx[anc])
    torch.testing.assert_close(mid, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheduler", ["EulerAncestralDiscreteScheduler", "LCMScheduler"])
def test_smc_on_a_noisy_scheduler_uses_its_noise_and_is_reproducible(scheduler):
    pipe = pipe_with("sd", scheduler)
    sp = steer.wrap(pipe, method="smc", reward=Redness())
    kw = dict(num_inference_steps=6, num_particles=4, output_type="np", lam="auto")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is deterministic")
        a = sp([PROMPT, "a photo of two squares"], generator=torch.Generator().manual_seed(1), **kw)
    b = sp([PROMPT, "a photo of two squares"], generator=torch.Generator().manual_seed(1), **kw)
    c = sp([PROMPT, "a photo of two squares"], generator=torch.Generator().manual_seed(2), **kw)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.trace.steps == b.trace.steps
    assert not np.allclose(a.images, c.images)
    assert a.trace.sampler.startswith(f"{scheduler}.step") and any(any(r["resampled"]) for r in a.trace.steps)


def test_deterministic_scheduler_falls_back_with_one_warning_and_says_so():
    pipe = pipe_with("sd", "EulerDiscreteScheduler")
    sp = steer.wrap(pipe, method="smc", reward=Redness())
    with pytest.warns(UserWarning, match="EulerDiscreteScheduler is deterministic.*DDIM\\(eta=1\\)"):
        out = sp(PROMPT, num_inference_steps=4, num_particles=2, output_type="np")
    assert out.trace.sampler.startswith("fallback: EulerDiscreteScheduler is deterministic")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is deterministic")  # said once per adapter and scheduler
        sp(PROMPT, num_inference_steps=4, num_particles=2, output_type="np")
    best = steer.wrap(pipe, method="best_of_n", reward=Redness())(PROMPT, num_inference_steps=4, num_particles=2, output_type="np")
    assert best.trace.sampler == "EulerDiscreteScheduler.step"


def test_ddim_with_eta_keeps_the_scheduler_and_its_noise():
    pipe = pipe_with("sd", "DDIMScheduler")
    out = steer.wrap(pipe, method="smc", reward=Redness())(PROMPT, num_inference_steps=4, num_particles=2, output_type="np")
    assert out.trace.sampler == "DDIMScheduler.step (eta=1)"
