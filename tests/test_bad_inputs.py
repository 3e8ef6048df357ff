"""Every row of the README's bad-input table: the input, and the clear error (or documented behaviour) a user gets."""

import math
import time

import numpy as np
import pytest
import torch

import steer
import tiny_pipelines as tp
from steer.rewards.base import Reward
from steer.search.base import RewardError
from steer.search.resampling import ess
from steer.search.tempering import MAX_CONTRAST, auto_lambda

PROMPTS = ["a photo of a red circle", "a photo of two squares"]


class Redness(Reward):
    name = "redness"
    differentiable = True

    def __init__(self, scale: float = 100.0):
        super().__init__()
        self.scale = scale

    def score(self, images, prompts):
        return self.scale * (images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3)))


class Returns(Reward):
    """A reward whose score() returns whatever ``make(images)`` builds."""

    name = "returns"

    def __init__(self, make):
        super().__init__()
        self.make = make

    def score(self, images, prompts):
        return self.make(images)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return tp.sd()


def call(pipe, method="smc", n=2, steps=4, reward=None, prompt=PROMPTS, **kw):
    sp = steer.wrap(pipe, method=method, reward=reward or Redness())
    kw.setdefault("output_type", "np")
    return sp(prompt, num_inference_steps=steps, num_particles=n, generator=torch.Generator().manual_seed(0), **kw)


# ------------------------------------------------------------------ step counts and sizes


@pytest.mark.parametrize("steps", [0, -3])
def test_step_count_below_one_is_refused(pipe, steps):
    with pytest.raises(ValueError, match=f"num_inference_steps must be an integer >= 1, got {steps}"):
        call(pipe, "best_of_n", steps=steps)


def test_fractional_step_count_is_refused(pipe):
    with pytest.raises(TypeError, match="num_inference_steps must be an integer, got 2.5"):
        call(pipe, "best_of_n", steps=2.5)


@pytest.mark.parametrize("name", ["height", "width"])
def test_size_not_divisible_by_the_vae_factor_is_refused(pipe, name):
    m = pipe.vae_scale_factor  # 2 for the tiny test VAE, 8 for Stable Diffusion
    size = 15 * m + 1
    with pytest.raises(ValueError, match=rf"{name}={size} is not divisible by {m} .*use {15 * m} or {16 * m}"):
        call(pipe, "best_of_n", **{name: size})


def test_flow_models_need_their_patch_multiple():
    torch.set_num_threads(1)
    sd3 = steer.wrap(tp.sd3(), method="best_of_n", reward=Redness())
    m = sd3.adapter.size_multiple
    assert m == sd3.pipe.vae_scale_factor * sd3.pipe.transformer.config.patch_size
    with pytest.raises(ValueError, match=f"height={m + m // 2} is not divisible by {m}"):
        sd3(PROMPTS[0], num_inference_steps=2, num_particles=1, height=m + m // 2, width=m, output_type="np")
    flux = steer.wrap(tp.flux(), method="best_of_n", reward=Redness())
    assert flux.adapter.size_multiple == flux.pipe.vae_scale_factor * 2


# ------------------------------------------------------------------ method options


@pytest.mark.parametrize("lam, err, match", [(-1.0, ValueError, "lam must be >= 0"), (float("nan"), ValueError, "lam must be a finite number"),
                                             ("hot", ValueError, "lam must be a number >= 0 or 'auto'"), (True, TypeError, "lam must be a number")])
@pytest.mark.parametrize("method", ["smc", "fleming_viot"])
def test_bad_lambda_is_refused(pipe, method, lam, err, match):
    with pytest.raises(err, match=match):
        call(pipe, method, lam=lam)


@pytest.mark.parametrize("method", ["smc", "fleming_viot"])
def test_interval_zero_is_refused_not_replaced(pipe, method):
    with pytest.raises(ValueError, match="interval must be an integer >= 1, got 0"):
        call(pipe, method, interval=0)
    with pytest.raises(TypeError, match="interval must be an integer"):
        call(pipe, method, interval=True)


def test_ess_options_out_of_range(pipe):
    with pytest.raises(ValueError, match="ess_threshold must be <= 1.0"):
        call(pipe, "smc", ess_threshold=1.5)
    with pytest.raises(ValueError, match="ess_target must be >= 0.0"):
        call(pipe, "fleming_viot", ess_target=-0.1)


# ------------------------------------------------------------------ engine options


def test_particle_counts_accept_integral_numbers_and_refuse_bools(pipe):
    out = call(pipe, "best_of_n", n=np.int64(2))
    assert out.trace.num_particles == 2
    with pytest.raises(TypeError, match="num_particles must be an integer, got True"):
        call(pipe, "best_of_n", n=True)
    with pytest.raises(TypeError, match="num_particles must be an integer, got 2.0"):
        call(pipe, "best_of_n", n=2.0)


@pytest.mark.parametrize("kw, err, match", [
    ({"eta": -1.0}, ValueError, "eta must be >= 0.0"),
    ({"eta": float("nan")}, ValueError, "eta must be a finite number"),
    ({"guidance_scale": float("inf")}, ValueError, "guidance_scale must be a finite number"),
    ({"max_nfe": 0}, ValueError, "max_nfe must be an integer >= 1"),
    ({"max_reward_calls": "100"}, TypeError, "max_reward_calls must be an integer"),
    ({"max_batch": 0}, ValueError, "max_batch must be an integer >= 1"),
    ({"reward_batch": 1.5}, TypeError, "reward_batch must be an integer"),
    ({"return_all": "yes"}, TypeError, "return_all must be True or False"),
])
def test_engine_options_are_validated(pipe, kw, err, match):
    with pytest.raises(err, match=match):
        call(pipe, "smc", **kw)


# ------------------------------------------------------------------ prompts


@pytest.mark.parametrize("prompt, match", [(123, "prompt must be a string or a non-empty list of strings"),
                                           (["a photo of a cat", 3], r"prompt\[1\] must be a string, got 3"),
                                           ([], "prompt must be a string or a non-empty list of strings")])
def test_non_string_prompts_are_refused_early(pipe, prompt, match):
    with pytest.raises(TypeError, match=match):
        call(pipe, "best_of_n", prompt=prompt)


def test_negative_prompts_must_match_the_prompts(pipe):
    with pytest.raises(ValueError, match="got 3 negative prompts for 2 prompts"):
        call(pipe, "best_of_n", negative_prompt=["a", "b", "c"])
    with pytest.raises(TypeError, match=r"negative_prompt\[0\] must be a string"):
        call(pipe, "best_of_n", negative_prompt=[None, "b"])


# ------------------------------------------------------------------ rewards


def test_reward_that_is_never_finite_is_an_error(pipe):
    nan = Returns(lambda im: torch.full((im.shape[0],), float("nan")))
    for method in ("best_of_n", "smc", "fleming_viot"):
        with pytest.raises(RewardError, match=r"NaN or ±inf for every particle of prompt 0 \('a photo of a red circle'\)"):
            call(pipe, method, reward=nan)


def test_partly_nonfinite_rewards_warn_and_are_counted(pipe):
    def half(im):
        r = im[:, 0].mean((1, 2))
        r[::2] = float("inf")
        return r

    with pytest.warns(RuntimeWarning, match="NaN or ±inf for 2 of 4 particles"):
        out = call(pipe, "best_of_n", reward=Returns(half))
    assert out.trace.nonfinite_rewards == 2 and all(math.isfinite(r) for r in out.rewards)


@pytest.mark.parametrize("make, match", [(lambda im: torch.zeros(im.shape[0], 2), r"scores of shape \(2, 2\) for 2 images; expected \(2,\)"),
                                         (lambda im: [0.0] * im.shape[0], "returned a list; a reward's score\\(\\) must return a tensor"),
                                         (lambda im: torch.zeros(im.shape[0] + 1), r"shape \(3,\) for 2 images")])
def test_reward_of_wrong_type_or_shape_is_named(pipe, make, match):
    with pytest.raises(RewardError, match=match):
        call(pipe, "best_of_n", reward=Returns(make), n=1)


def test_missing_weights_fail_fast_when_the_hub_is_unreachable(monkeypatch):
    from huggingface_hub import constants

    import steer.rewards.weights as w

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(w, "_hub_reachable", lambda endpoint: False)
    t0 = time.perf_counter()
    with pytest.raises(w.RewardWeightsNotFound, match=r"did not answer within .* s, so only the local cache was searched"):
        steer.rewards.get_reward("hf_clip", model_name_or_path="steer-test/no-such-clip-model")
    assert time.perf_counter() - t0 < 10
    assert constants.HF_HUB_OFFLINE is False  # restored after the load


def test_hf_hub_offline_is_honoured_and_named(monkeypatch):
    from huggingface_hub import constants

    import steer.rewards.weights as w

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(w, "_hub_reachable", lambda endpoint: pytest.fail("must not probe the hub when HF_HUB_OFFLINE is set"))
    with pytest.raises(w.RewardWeightsNotFound, match="HF_HUB_OFFLINE is set"):
        w.hub_file("steer-test/no-such-repo", "model.safetensors")


# ------------------------------------------------------------------ lam="auto"


def test_auto_lambda_reaches_the_target_ess():
    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 100.0):
        phi = torch.randn(16, generator=g, dtype=torch.float64) * scale
        lam, binding = auto_lambda(torch.zeros(16), phi, 8.0)
        assert binding and ess(lam * phi) == pytest.approx(8.0, rel=1e-4)
        assert lam * scale == pytest.approx(auto_lambda(torch.zeros(16), phi / scale, 8.0)[0], rel=1e-4)  # scale-free
    assert auto_lambda(torch.zeros(4), torch.ones(4), 2.0) == (0.0, False)  # equal rewards: nothing to weigh
    spread = torch.tensor([0.0, 1e-3, 1e-3, 1e-3], dtype=torch.float64)  # one laggard among 4: ESS stays >= 3 at any λ
    assert auto_lambda(torch.zeros(4), spread, 2.0) == (pytest.approx(MAX_CONTRAST / 1e-3), False)
    dead = torch.tensor([0.0, 1.0, float("-inf"), 2.0], dtype=torch.float64)
    lam, _ = auto_lambda(torch.zeros(4), dead, 2.0)
    assert ess(torch.where(torch.isfinite(dead), lam * dead, dead)) == pytest.approx(2.0, rel=1e-4)
    assert auto_lambda(torch.zeros(4), torch.tensor([0.0, -math.inf, -math.inf, -math.inf]), 2.0) == (0.0, False)


@pytest.mark.parametrize("method", ["smc", "fleming_viot"])
def test_auto_lambda_is_the_default_and_ignores_the_reward_scale(pipe, method):
    small = call(pipe, method, n=4, reward=Redness(1.0))
    big = call(pipe, method, n=4, reward=Redness(1000.0))
    assert small.trace.options["lam"] == "auto"
    for a, b in zip(small.trace.steps, big.trace.steps):
        assert a["ancestors"] == b["ancestors"]
        assert np.allclose(np.array(a["lam"]), np.array(b["lam"]) * 1000, rtol=1e-3)
    np.testing.assert_array_equal(small.images, big.images)
    if method == "smc":  # a step lands on the target ESS and resamples, or no λ reaches it (a hard selection, no resampling)
        for row in small.trace.steps:
            for resampled, e in zip(row["resampled"], row["ess"]):  # default ess_target 0.8 of 4 particles
                assert e == pytest.approx(3.2, rel=1e-3) if resampled else e >= 3.2
        assert any(any(row["resampled"]) for row in small.trace.steps)
