"""Tree search (DTS / DTS*) and initial-noise optimisation (ReNO, DOODL) on tiny random pipelines."""

import math

import pytest
import torch

import steer
import tiny_pipelines as tp
from steer.search import BudgetExceeded, get_method
from steer.search.doodl import EDICTChain, EDICTRunner, saved_tensor_peak
from steer.search.dts import backup_value, select_child
from steer.search.reno import noise_norm_log_density
from test_search import PROMPTS, Redness


class NotDifferentiable(Redness):
    name = "rank_like"
    differentiable = False


@pytest.fixture(scope="module")
def sd_pipe():
    torch.set_num_threads(1)
    return tp.sd()


@pytest.fixture(scope="module")
def sd3_pipe():
    torch.set_num_threads(1)
    return tp.sd3()


def call(pipe, method, steps=6, seed=0, reward=None, **kw):
    sp = steer.wrap(pipe, method=method, reward=reward or Redness())
    kw.setdefault("output_type", "np")
    return sp(PROMPTS, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)


# ------------------------------------------------------------------ DTS backups


def test_backup_matches_hand_computed_tree():
    # root ─ a ─ {leaf 1, leaf 3}
    #      └ b ─ {leaf 2}
    lam = 0.5
    v_a = backup_value([1.0, 3.0], lam)
    assert v_a == pytest.approx(math.log((math.exp(0.5) + math.exp(1.5)) / 2) / 0.5)
    v_b = backup_value([2.0], lam)
    assert v_b == pytest.approx(2.0)
    v_root = backup_value([v_a, v_b], lam)
    assert v_root == pytest.approx(math.log((math.exp(lam * v_a) + math.exp(lam * v_b)) / 2) / lam)
    # DTS*: max backups
    assert backup_value([backup_value([1.0, 3.0], lam, greedy=True), 2.0], lam, greedy=True) == 3.0
    # soft value lies between mean and max, tends to max as λ grows
    assert 2.0 < v_a < 3.0 and backup_value([1.0, 3.0], 200.0) == pytest.approx(3.0, abs=0.01)
    assert backup_value([-math.inf, 1.0], 1.0) == pytest.approx(1.0 - math.log(2))


def test_selection_is_boltzmann_or_greedy():
    g = torch.Generator().manual_seed(0)
    assert select_child([0.0, 5.0, 1.0], 1.0, True, g) == 1
    draws = torch.tensor([select_child([0.0, math.log(3.0)], 1.0, False, g) for _ in range(2000)])
    assert draws.float().mean().item() == pytest.approx(0.75, abs=0.04)


def test_tree_search_respects_budget_and_reuses_prefixes(sd_pipe):
    for method in ("dts", "dts_star"):
        out = call(sd_pipe, method, num_particles=2, max_nfe=60, children=2, roots=2, interval=2)
        tr = out.trace
        assert tr.nfe <= 60
        summary = tr.steps[-1]
        leaves = sum(summary["leaves"])
        assert tr.reward_calls == leaves
        assert leaves > 2 * 60 // (2 * 6)  # more leaves than full trajectories: shared prefixes counted once
        assert sum(summary["nfe_per_prompt"]) == tr.nfe
        # returned rows are each prompt's best leaves, best first
        final = torch.tensor(tr.final_rewards)
        assert (final[:, 0] >= final[:, 1]).all() and tr.selected == [0, 0]
        assert out.rewards[0] == pytest.approx(max(r for row in tr.steps[:-1] for p, r in row["rewards"].items() if p == 0))


def test_dts_star_deterministic(sd3_pipe):
    a = call(sd3_pipe, "dts_star", num_particles=1, max_nfe=40, seed=3)
    b = call(sd3_pipe, "dts_star", num_particles=1, max_nfe=40, seed=3)
    assert a.rewards == b.rewards and a.trace.nfe == b.trace.nfe <= 40


def test_dts_errors(sd_pipe):
    with pytest.raises(ValueError, match="lam must be > 0"):
        get_method("dts", lam=0.0)
    with pytest.raises(ValueError, match="deterministic"):
        call(sd_pipe, "dts", num_particles=1, eta=0.0)
    with pytest.raises(BudgetExceeded, match="one trajectory"):
        call(sd_pipe, "dts", num_particles=1, nfe=5)
    with pytest.raises(BudgetExceeded, match="one trajectory"):
        call(sd_pipe, "dts", num_particles=1, max_nfe=10)


# ------------------------------------------------------------------ ReNO


@pytest.mark.parametrize("pipe_name", ["sd_pipe", "sd3_pipe"])
def test_reno_returns_an_iterate_at_least_as_good_as_its_start(pipe_name, request):
    pipe = request.getfixturevalue(pipe_name)
    out = call(pipe, "reno", num_particles=1, steps=4, iters=3)
    tr = out.trace
    start = torch.tensor(tr.steps[0]["rewards"])[:, 0]
    assert (torch.tensor(out.rewards) >= start - 1e-6).all()
    assert max(out.rewards) > start.max()  # the optimisation moved the reward up on this easy reward
    S, rows, iters = 4, 2, 3
    assert tr.backward_nfe == rows * iters * 2 * S  # a backward pass through the denoiser counts as 2 NFE
    assert tr.nfe == rows * ((iters + 1) * S + iters * S) + tr.backward_nfe  # forwards + checkpoint recomputation + backward
    assert tr.reward_grad_calls == rows * iters and tr.reward_calls == rows


def test_reno_truncation_and_budget(sd_pipe):
    out = call(sd_pipe, "reno", num_particles=1, steps=6, iters=10, backprop_steps=2, max_nfe=2 * (6 + 2 * (6 + 2 + 4)))
    tr = out.trace
    assert tr.nfe <= 2 * (6 + 2 * (6 + 2 + 4)) and len(tr.steps) == 3  # two iterations fit, plus the final evaluation
    assert tr.backward_nfe == 2 * 2 * 2 * 2


def test_noise_norm_regulariser_peaks_at_typical_norm():
    d = 64
    norms = torch.tensor([4.0, math.sqrt(d - 1), 12.0])
    k = noise_norm_log_density(torch.stack([torch.full((d,), n / math.sqrt(d)) for n in norms]))
    assert k[1] > k[0] and k[1] > k[2]


def test_noise_optimisation_errors(sd_pipe):
    for method in ("reno", "doodl"):
        with pytest.raises(ValueError, match="not differentiable.*shapes_clip"):
            call(sd_pipe, method, num_particles=1, iters=1, reward=NotDifferentiable())
        with pytest.raises(BudgetExceeded, match="below one trajectory"):
            call(sd_pipe, method, num_particles=1, iters=1, max_nfe=3)


def test_doodl_refuses_a_scheduler_without_invertible_chain():
    from diffusers import DPMSolverMultistepScheduler

    pipe = tp.sd()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="invertible.*DPMSolverMultistepScheduler.*DDIMScheduler"):
        call(pipe, "doodl", num_particles=1, iters=1)
    out = call(pipe, "reno", num_particles=1, steps=3, iters=1)  # ReNO steps with the stateless DDIM fallback instead
    assert "fallback" in out.trace.sampler


# ------------------------------------------------------------------ DOODL


def _runner(pipe, steps):
    ad = steer.wrap(pipe, method="doodl", reward=Redness()).adapter
    ad.eta = 0.0
    ad.prepare(warn=False)
    ad.native = False
    cond = ad.encode(PROMPTS[:1], guidance_scale=5.0)
    ad.set_schedule(steps)
    return ad, EDICTRunner(ad, cond, 0.93)


@pytest.mark.parametrize("pipe_name", ["sd_pipe", "sd3_pipe"])
def test_edict_inversion_reconstructs_initial_noise(pipe_name, request):
    ad, runner = _runner(request.getfixturevalue(pipe_name), 10)
    x_T = torch.randn(1, *ad.latent_shape(), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, y = runner.run(x_T)
        xr, yr = runner.reconstruct(x, y)
    tol = 1e-3  # float32, 10 steps; EDICT's (1-p)/p mixing amplifies rounding
    assert (xr - x_T).abs().max() < tol and (yr - x_T).abs().max() < tol
    assert (x - x_T).abs().max() > 0.1  # the chain did move


def test_edict_gradient_matches_plain_backprop(sd_pipe):
    ad, runner = _runner(sd_pipe, 4)
    x_T = torch.randn(1, *ad.latent_shape(), generator=torch.Generator().manual_seed(1))
    w = torch.randn_like(x_T)
    a = x_T.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad((EDICTChain.apply(a, runner) * w).sum(), a)
    b = x_T.clone().requires_grad_(True)
    with torch.enable_grad():
        x, y = b, b
        for i in range(4):
            x, y = runner.step(x, y, i)
        (gb,) = torch.autograd.grad((x * w).sum(), b)
    assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-4)


def test_doodl_memory_does_not_grow_with_steps(sd_pipe):
    peaks = {}
    for steps in (5, 25):
        ad, runner = _runner(sd_pipe, steps)
        x_T = torch.randn(1, *ad.latent_shape(), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        with saved_tensor_peak(sd_pipe.unet) as m:
            (EDICTChain.apply(x_T, runner) ** 2).sum().backward()
        peaks[steps] = m.peak
    assert peaks[25] <= 1.1 * peaks[5]  # stated ratio: within 10 % (one step's activations at a time)
    # plain backprop through the same chain stores every step: it grows about 5×
    ad, runner = _runner(sd_pipe, 5)
    x_T = torch.randn(1, *ad.latent_shape()).requires_grad_(True)
    with saved_tensor_peak(sd_pipe.unet) as m:
        x, y = x_T, x_T
        for i in range(5):
            x, y = runner.step(x, y, i)
        (x**2).sum().backward()
    assert m.peak > 3 * peaks[5]


def test_doodl_end_to_end(sd3_pipe):
    out = call(sd3_pipe, "doodl", num_particles=1, steps=4, iters=2)
    tr = out.trace
    start = torch.tensor(tr.steps[0]["rewards"])[:, 0]
    assert (torch.tensor(out.rewards) >= start - 1e-6).all()
    rows, S = 2, 4
    assert tr.backward_nfe == rows * 2 * 4 * S and tr.nfe == rows * (3 * 2 * S + 2 * 4 * S) + tr.backward_nfe
    assert tr.sampler.startswith("EDICT")
