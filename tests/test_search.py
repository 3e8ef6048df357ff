"""steer.wrap and the search methods on tiny random pipelines (every family) with a cheap reward."""

import math

import numpy as np
import pytest
import torch

import steer
import tiny_pipelines as tp
from steer.rewards.base import Reward
from steer.search import BudgetExceeded, get_method
from steer.search.fleming_viot import birth_death
from steer.search.resampling import RESAMPLERS, ess, normalize, residual, systematic
from steer.search.smc import potential_steps

PROMPTS = ["a photo of a red circle", "a photo of two squares"]


class Redness(Reward):
    """Mean red minus mean green/blue: cheap, differentiable, prompt-independent."""

    name = "redness"
    differentiable = True

    def score(self, images, prompts):
        return 100 * (images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3)))


class Broken(Redness):
    """Redness, but NaN for every other image."""

    def score(self, images, prompts):
        r = super().score(images, prompts)
        r[::2] = float("nan")
        return r


@pytest.fixture(scope="module")
def sd_pipe():
    torch.set_num_threads(1)
    return tp.sd()


def call(pipe, method="smc", n=4, steps=6, seed=0, reward=None, **kw):
    sp = steer.wrap(pipe, method=method, reward=reward or Redness())
    kw.setdefault("output_type", "np")
    return sp(PROMPTS, num_inference_steps=steps, num_particles=n, generator=torch.Generator().manual_seed(seed), **kw)


# ------------------------------------------------------------------ resampling


@pytest.mark.parametrize("name", list(RESAMPLERS))
def test_resamplers_respect_weights(name):
    g = torch.Generator().manual_seed(0)
    logw = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.0]))
    counts = torch.zeros(4)
    for _ in range(400):
        a = RESAMPLERS[name](logw, g)
        assert a.numel() == 4 and (a != 3).all()  # zero weight is never drawn
        counts += torch.bincount(a, minlength=4)
    assert torch.allclose(counts / counts.sum(), torch.tensor([0.5, 0.25, 0.25, 0.0]), atol=0.05)


def test_low_variance_resamplers_are_exact_on_integer_counts():
    logw = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.0]))
    assert sorted(systematic(logw, torch.Generator().manual_seed(1)).tolist()) == [0, 0, 1, 2]
    assert residual(logw, torch.Generator().manual_seed(1)).tolist() == [0, 0, 1, 2]


def test_ess_and_normalize_in_log_space():
    assert ess(torch.zeros(8)) == pytest.approx(8)
    assert ess(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1)
    w = normalize(torch.tensor([1000.0, 1000.0]))  # no overflow
    assert torch.allclose(w, torch.tensor([0.5, 0.5], dtype=w.dtype))
    assert torch.allclose(normalize(torch.full((3,), -math.inf)), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_birth_death_keeps_survivors_in_place():
    out = birth_death(torch.tensor([0, 0, 2, 2, 2]))
    assert out[0] == 0 and out[2] == 2
    assert sorted(out.tolist()) == [0, 0, 2, 2, 2]


def test_potential_steps_window_and_interval():
    assert potential_steps(25, 5, (0.0, 1.0)) == [5, 10, 15, 20]
    assert potential_steps(25, 5, (0.3, 0.7)) == [10, 15]
    with pytest.raises(ValueError, match="window"):
        potential_steps(10, 2, (0.8, 0.2))


# ------------------------------------------------------------------ methods


@pytest.mark.parametrize("method", ["best_of_n", "smc", "fleming_viot"])
def test_same_seed_same_images_and_accounting(sd_pipe, method):
    a = call(sd_pipe, method)
    b = call(sd_pipe, method)
    c = call(sd_pipe, method, seed=1)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    t = a.trace
    assert a.images.shape[0] == len(PROMPTS) and len(a.rewards) == len(PROMPTS)
    assert t.nfe == len(PROMPTS) * 4 * 6
    assert t.denoiser_rows == 2 * t.nfe  # classifier-free guidance
    rounds = 0 if method == "best_of_n" else len(t.steps)
    assert t.reward_calls == len(PROMPTS) * 4 * (rounds + 1)
    assert t.decodes >= t.reward_calls and t.seconds > 0 and t.peak_memory_bytes > 0
    # the returned image is the selected particle, and its reward is the best final reward
    assert a.rewards == [max(r) for r in t.final_rewards]


def test_smc_resamples_within_each_prompt(sd_pipe):
    out = call(sd_pipe, "smc", n=6, lam=50.0, ess_threshold=1.0)
    rows = out.trace.steps
    assert rows and all(all(r["resampled"]) for r in rows)
    for r in rows:
        for anc in r["ancestors"]:
            assert len(anc) == 6 and all(0 <= a < 6 for a in anc)
    assert any(len(set(anc)) < 6 for r in rows for anc in r["ancestors"])  # some particle died


def test_smc_raises_reward_over_best_of_n_on_average(sd_pipe):
    """With a strong potential, SMC's particles end redder on average than independent ones (same NFE)."""
    bon = [np.mean(call(sd_pipe, "best_of_n", n=6, seed=s, eta=1.0).trace.final_rewards) for s in range(3)]
    smc = [np.mean(call(sd_pipe, "smc", n=6, seed=s, lam=50.0, potential="immediate", ess_threshold=1.0).trace.final_rewards) for s in range(3)]
    assert np.mean(smc) > np.mean(bon)


@pytest.mark.parametrize("potential", ["immediate", "diff", "max", "sum"])
def test_every_potential_runs_and_select_sample(sd_pipe, potential):
    out = call(sd_pipe, "smc", potential=potential, lam=5.0, select="sample", resampler="residual")
    assert len(out.trace.selected) == 2 and all(0 <= k < 4 for k in out.trace.selected)


def test_return_all_and_output_types(sd_pipe):
    out = call(sd_pipe, "best_of_n", return_all=True)
    assert out.images.shape[0] == 8 and len(out.rewards) == 8
    sp = steer.wrap(sd_pipe, method="best_of_n", reward=Redness(), num_particles=2)
    pil = sp(PROMPTS[0], num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (16, 16)
    pt = sp(PROMPTS[0], num_inference_steps=3, output_type="pt").images
    assert pt.shape == (1, 3, 16, 16) and 0 <= pt.min() and pt.max() <= 1


def test_best_of_one_matches_plain_pipeline(sd_pipe):
    """One deterministic particle with the user's generator is exactly the plain pipeline call."""
    g = [torch.Generator().manual_seed(11)]
    plain = sd_pipe(PROMPTS[0], num_inference_steps=5, guidance_scale=5.0, generator=g, output_type="np").images
    sp = steer.wrap(sd_pipe, method="best_of_n", reward=Redness())
    steered = sp(PROMPTS[0], num_inference_steps=5, guidance_scale=5.0, num_particles=1, generator=[torch.Generator().manual_seed(11)], output_type="np").images
    assert np.abs(plain - steered).max() < 1e-5


@pytest.mark.parametrize("build", [tp.sdxl, tp.sd3, tp.flux])
def test_methods_run_on_every_family(build):
    pipe = build()
    for method in ("best_of_n", "smc", "fleming_viot"):
        kw = {} if method == "best_of_n" else {"lam": 20.0}
        a, b = (call(pipe, method, n=3, steps=4, **kw) for _ in range(2))
        assert np.array_equal(a.images, b.images)
        assert a.trace.nfe == 2 * 3 * 4
    with pytest.raises(ValueError, match="deterministic"):  # plain Euler (flow) / DDIM eta=0 cannot diversify resampled copies
        call(pipe, "fleming_viot", n=2, steps=2, eta=0.0)


def test_wrap_a_class_gives_from_pretrained(sd_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline

    sd_pipe.save_pretrained(tmp_path)
    Steered = steer.wrap(StableDiffusionPipeline, method="best_of_n", reward=Redness(), num_particles=2)
    assert Steered.__name__ == "SteeredStableDiffusionPipeline"
    pipe = Steered.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)  # falls through to the pipeline
    out = pipe(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 16, 16, 3) and out.trace.num_particles == 2


# ------------------------------------------------------------------ budgets and errors


def test_budget_sets_particles_and_caps_cost(sd_pipe):
    out = call(sd_pipe, "best_of_n", n=None, max_nfe=2 * 6 * 3)
    assert out.trace.num_particles == 3 and out.trace.nfe <= 36
    with pytest.raises(BudgetExceeded, match="smaller than one trajectory"):
        call(sd_pipe, "smc", n=None, max_nfe=5)
    with pytest.raises(BudgetExceeded, match="needs 48 NFE"):
        call(sd_pipe, "smc", n=4, max_nfe=40)
    with pytest.raises(BudgetExceeded, match="reward calls"):
        call(sd_pipe, "smc", n=4, max_reward_calls=10)


def test_nonfinite_rewards_get_zero_weight(sd_pipe):
    with pytest.warns(RuntimeWarning, match="NaN or ±inf for 4 of 8 particles"):
        out = call(sd_pipe, "smc", n=4, reward=Broken(), lam=5.0, ess_threshold=1.0)
    t = out.trace
    assert t.nonfinite_rewards > 0
    for row in t.steps:
        for anc in row["ancestors"]:
            assert all(a % 2 == 1 for a in anc)  # NaN particles (even slots) never reproduce
    assert all(k % 2 == 1 for k in t.selected)


def test_clear_errors(sd_pipe):
    with pytest.raises(ValueError, match="unknown method 'beam'"):
        steer.wrap(sd_pipe, method="beam", reward=Redness())
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        steer.wrap(sd_pipe, method="smc", reward="nope")
    with pytest.raises(ValueError, match="needs a reward"):
        steer.wrap(sd_pipe, method="smc")
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        call(sd_pipe, "smc", n=0)
    with pytest.raises(ValueError, match="deterministic"):
        call(sd_pipe, "smc", eta=0.0)
    with pytest.raises(ValueError, match="unknown potential"):
        get_method("smc", potential="min")
    with pytest.raises(ValueError, match="bad option"):
        get_method("smc", temperature=3)
    with pytest.raises(ValueError, match="no model adapter for pipeline object"):
        steer.wrap(object(), method="smc", reward=Redness())
    with pytest.raises(ValueError, match="output_type"):
        steer.wrap(sd_pipe, method="best_of_n", reward=Redness())(PROMPTS[0], num_inference_steps=2, output_type="jpeg")


def test_unknown_call_options_are_rejected_not_ignored(sd_pipe):
    steered = steer.wrap(sd_pipe, method="smc", reward=Redness())
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'temprature'.*Method options: .*lam"):
        steered(PROMPTS[0], num_inference_steps=2, temprature=3)
    with pytest.raises(ValueError, match=r"'latents': StableDiffusionPipeline takes this argument but steered calls do not support it"):
        steered(PROMPTS[0], num_inference_steps=2, latents=torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'lamda'"):
        steer.wrap(sd_pipe, method="smc", reward=Redness(), lamda=2.0)  # caught at wrap time
    out = steered(PROMPTS[0], num_inference_steps=2, num_particles=2, lam=0.5, output_type="np")  # a method option
    assert len(out.images) == 1 and out.trace.options["lam"] == 0.5
