"""Model adapters against the stock diffusers pipelines (tiny random-weight models, CPU)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

import tiny_pipelines as tp
from steer.models import (
    ADAPTERS, FluxAdapter, ModelAdapter, SD3Adapter, StableDiffusionAdapter, StableDiffusionXLAdapter, ddim_step,
    flow_step, get_adapter, register_adapter, to_x0_eps,
)

torch.set_num_threads(1)
H = W = tp.SIZE
PROMPTS = ["a red circle", "two blue squares", "a green triangle above a yellow circle"]

# name: (builder, adapter class, stock-call kwargs that are also encode kwargs)
FAMILIES = {
    "sd": (tp.sd, StableDiffusionAdapter, {"guidance_scale": 5.0}),
    "sd_v": (lambda: tp.sd("v_prediction"), StableDiffusionAdapter, {"guidance_scale": 5.0}),
    "sdxl": (tp.sdxl, StableDiffusionXLAdapter, {"guidance_scale": 5.0}),
    "sd3": (tp.sd3, SD3Adapter, {"guidance_scale": 5.0}),
    "sd3_t5": (lambda: tp.sd3(with_t5=True), SD3Adapter, {"guidance_scale": 5.0}),
    "flux": (tp.flux, FluxAdapter, {"guidance_scale": 3.5}),
}


@lru_cache(maxsize=None)
def pipeline(name: str):
    return FAMILIES[name][0]()


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def run(adapter, cond, x, generators, start=0, eta=None):
    for i in range(start, adapter.num_steps):
        x = adapter.step(x, i, cond, generators, eta=eta).prev_sample
    return x


def build(name, steps=3, eta=1.0, prompts=PROMPTS, **kwargs):
    adapter = get_adapter(pipeline(name), eta=eta, **kwargs)
    cond = adapter.encode(prompts, height=H, width=W, **FAMILIES[name][2])
    adapter.set_schedule(steps, height=H, width=W)
    return adapter, cond


def stock_latents(pipe, latents):
    """Stock ``output_type="latent"`` in the adapter's state layout (FLUX returns packed latents)."""
    return pipe._unpack_latents(latents, H, W, pipe.vae_scale_factor) if latents.dim() == 3 else latents


# ---------------------------------------------------------------- pure sampler functions
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_matches_ddim_scheduler(prediction_type):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, out, noise = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    for t in sched.timesteps:
        prev_t = int(t) - 100
        a_t = float(sched.alphas_cumprod[t])
        a_prev = float(sched.alphas_cumprod[prev_t]) if prev_t >= 0 else float(sched.final_alpha_cumprod)
        ref = sched.step(out, t, x, eta=0.7, variance_noise=noise)
        x0, eps = to_x0_eps(out, x, a_t, prediction_type)
        torch.testing.assert_close(x0, ref.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ddim_step(x, eps, x0, a_t, a_prev, 0.7, noise), ref.prev_sample, atol=1e-5, rtol=1e-5)


def test_flow_step():
    g = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    s, sn = 0.8, 0.55
    euler = x + (sn - s) * v
    assert torch.equal(flow_step(x, v, s, sn, 0.0, noise), euler)
    x0, eps = x - s * v, x + (1 - s) * v  # the general formula at rho = 0 is the same Euler step
    torch.testing.assert_close((1 - sn) * x0 + sn * eps, euler, atol=1e-6, rtol=0)
    full = (1 - sn) * x0 + sn * noise  # rho = 1: FlowMatchEulerDiscreteScheduler's stochastic_sampling
    torch.testing.assert_close(flow_step(x, v, s, sn, 1.0, noise), full)
    torch.testing.assert_close(flow_step(x, v, s, sn, 3.0, noise), full)  # eta clamps to 1
    mid = flow_step(x, v, s, sn, 0.5, noise)
    torch.testing.assert_close(mid, (1 - sn) * x0 + sn * (0.75**0.5 * eps + 0.5 * noise))


# ---------------------------------------------------------------- parity with the stock pipelines
PARITY = [(n, {}) for n in FAMILIES] + [
    ("flux", {"negative_prompt": ["a blue square", ""], "true_cfg_scale": 2.0}),  # FLUX true CFG
    ("sd", {"negative_prompt": ["a blue square", "a circle"]}),
    ("sdxl", {"negative_prompt": ["a blue square", "a circle"]}),
]


@pytest.mark.parametrize("name,extra", PARITY, ids=[f"{n}{'-neg' if e else ''}" for n, e in PARITY])
def test_parity_with_stock_pipeline(name, extra):
    """eta=0 adapter loop == stock call (latents and images), same generators per image."""
    pipe, steps, seeds, prompts = pipeline(name), 4, [3, 7], PROMPTS[:2]
    kw = {**FAMILIES[name][2], **extra}
    call = dict(prompt=prompts, num_inference_steps=steps, height=H, width=W, **kw)
    ref_lat = stock_latents(pipe, pipe(**call, generator=gens(seeds), output_type="latent").images)
    ref_img = pipe(**call, generator=gens(seeds), output_type="pt").images

    adapter = get_adapter(pipe, eta=0)
    cond = adapter.encode(prompts, height=H, width=W, **kw)
    adapter.set_schedule(steps, height=H, width=W)
    x = run(adapter, cond.select([0, 1]), adapter.initial_noise(gens(seeds), H, W), None)
    torch.testing.assert_close(x, ref_lat, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.decode(x), ref_img, atol=2e-5, rtol=1e-5)


def test_parity_turbo_style_euler_ancestral_one_step():
    """SD-Turbo style: EulerAncestral (trailing), one step, guidance 0 (no CFG)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    base = pipeline("sd")
    sched = EulerAncestralDiscreteScheduler.from_config(base.scheduler.config, timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(**{**base.components, "scheduler": sched})
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPTS[:2], num_inference_steps=1, guidance_scale=0.0, height=H, width=W, generator=gens([1, 2]), output_type="latent").images
    adapter = get_adapter(pipe, eta=1.0)
    cond = adapter.encode(PROMPTS[:2], guidance_scale=0.0)
    assert not cond.do_cfg
    adapter.set_schedule(1)
    x = run(adapter, cond, adapter.initial_noise(gens([1, 2]), H, W), gens([1, 2]))
    torch.testing.assert_close(x, ref, atol=2e-5, rtol=1e-5)
    assert adapter.counters.denoiser_rows == 2 and adapter.noise_level(0) > 0.99


# ---------------------------------------------------------------- stochastic transitions
@pytest.mark.parametrize("name", list(FAMILIES))
def test_determinism_and_divergence(name):
    adapter, cond = build(name, eta=1.0)
    pc = cond.select([0, 1])

    def sample(seeds):
        g = gens(seeds)
        return adapter.decode(run(adapter, pc, adapter.initial_noise(g, H, W), g))

    a, b, c = sample([0, 1]), sample([0, 1]), sample([0, 2])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[0], c[0], atol=1e-5, rtol=0)  # particle 0 untouched by particle 1's seed
    assert not torch.allclose(a[1], c[1], atol=1e-3)

    x = adapter.initial_noise(gens([5]), H, W).repeat(2, 1, 1, 1)  # same state, different generators
    out = adapter.step(x, 0, cond.select([0, 0]), gens([8, 9]))
    torch.testing.assert_close(out.pred_original_sample[0], out.pred_original_sample[1])
    assert not torch.allclose(out.prev_sample[0], out.prev_sample[1], atol=1e-3)
    det = adapter.step(x, 0, cond.select([0, 0]), gens([8, 9]), eta=0.0).prev_sample
    torch.testing.assert_close(det[0], det[1])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_select_shrink_and_resume(name):
    adapter, cond = build(name, steps=4, eta=1.0)
    idx, seeds, keep = [0, 1, 2, 1, 0], [10, 11, 12, 13, 14], [1, 3, 4]
    g = gens(seeds)
    x = adapter.initial_noise(g, H, W)
    x = adapter.step(x, 0, cond.select(idx), g).prev_sample
    x, g = x[keep], [g[k] for k in keep]  # prune to 3 particles of mixed prompts
    sub = [idx[k] for k in keep]
    x = adapter.step(x, 1, cond.select(sub), g).prev_sample
    saved = (x.clone(), 2, [gg.get_state() for gg in g])
    final = run(adapter, cond.select(sub), x, g, start=2)

    x2, i2, states = saved  # resume from the stored state
    g2 = [torch.Generator() for _ in states]
    for gg, s in zip(g2, states):
        gg.set_state(s)
    assert torch.equal(run(adapter, cond.select(sub), x2, g2, start=i2), final)

    for row, k in enumerate(keep):  # each kept particle equals its solo run (own prompt, own generator)
        gs = gens([seeds[k]])
        solo = run(adapter, cond.select([idx[k]]), adapter.initial_noise(gs, H, W), gs)
        torch.testing.assert_close(solo[0], final[row], atol=1e-4, rtol=1e-4)
    gs = gens([seeds[1]])
    wrong = run(adapter, cond.select([2]), adapter.initial_noise(gs, H, W), gs)  # prompts matter
    assert not torch.allclose(wrong[0], final[0], atol=1e-3)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_gradients_reach_initial_noise(name):
    adapter, cond = build(name, eta=1.0)
    g = gens([0, 1])
    x = adapter.initial_noise(g, H, W).requires_grad_(True)
    out = adapter.step(x, 0, cond.select([0, 2]), g)
    out = adapter.step(out.prev_sample, 1, cond.select([0, 2]), g)
    adapter.decode(out.pred_original_sample).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- compute accounting and batching
@pytest.mark.parametrize("name,guidance,rows", [("sd", 5.0, 2), ("sd", 1.0, 1), ("sdxl", 5.0, 2), ("sd3", 1.0, 1), ("sd3", 4.0, 2)])
def test_counters_and_micro_batching(name, guidance, rows):
    adapter = get_adapter(pipeline(name), eta=1.0)
    cond = adapter.encode(PROMPTS, guidance_scale=guidance, height=H, width=W)
    assert cond.do_cfg == (rows == 2)
    adapter.set_schedule(3, height=H, width=W)
    g = gens(range(5))
    ref = run(adapter, cond.select([0, 1, 2, 0, 1]), adapter.initial_noise(g, H, W), g)
    assert (adapter.counters.nfe, adapter.counters.denoiser_rows) == (15, 15 * rows)
    adapter.decode(ref[:4])
    assert adapter.counters.decodes == 4

    small = get_adapter(pipeline(name), eta=1.0, max_batch=2)  # one particle (CFG) or two per call
    small.set_schedule(3, height=H, width=W)
    g = gens(range(5))
    out = run(small, cond.select([0, 1, 2, 0, 1]), small.initial_noise(g, H, W), g)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert small.counters.denoiser_rows == 15 * rows
    torch.testing.assert_close(small.decode(out), adapter.decode(ref), atol=1e-4, rtol=1e-4)
    adapter.counters.reset()
    assert adapter.counters.nfe == adapter.counters.denoiser_rows == adapter.counters.decodes == 0


def test_flux_counters_true_cfg():
    adapter = get_adapter(pipeline("flux"), eta=0)
    plain = adapter.encode(PROMPTS[:2], guidance_scale=3.5)
    cfg = adapter.encode(PROMPTS[:2], guidance_scale=3.5, negative_prompt="", true_cfg_scale=2.0)
    assert not plain.do_cfg and cfg.do_cfg
    adapter.set_schedule(2, height=H, width=W)
    x = adapter.initial_noise(gens([0, 1]), H, W)
    adapter.step(x, 0, plain, None)
    adapter.step(x, 0, cfg, None)
    assert (adapter.counters.nfe, adapter.counters.denoiser_rows) == (4, 6)


def test_noise_levels():
    for name in ["sd", "sd3", "flux"]:
        adapter, _ = build(name, steps=4)
        levels = [adapter.noise_level(i) for i in range(5)]
        assert levels[0] > 0.9 and levels[-1] == 0.0
        assert all(a > b for a, b in zip(levels, levels[1:]))
    torch.testing.assert_close(torch.tensor(levels), adapter.pipe.scheduler.sigmas)  # flow: σ_i


# ---------------------------------------------------------------- SD3 collapsed T5 padding
def test_sd3_collapsed_padding_is_exact():
    pipe = pipeline("sd3")
    before = pipe.transformer.attn_processors
    a_col, a_full = SD3Adapter(pipe, eta=1.0), SD3Adapter(pipe, eta=1.0, collapse_padding=False)
    c_col, c_full = (a.encode(PROMPTS, guidance_scale=4.0) for a in (a_col, a_full))
    assert c_full.cond["encoder_hidden_states"].shape[1] == c_col.cond["encoder_hidden_states"].shape[1] + 255
    assert c_col.extra["padding_count"] == 256 and "padding_count" not in c_full.extra
    for a in (a_col, a_full):
        a.set_schedule(3, height=H, width=W)
    g1, g2 = gens([0, 1, 2]), gens([0, 1, 2])
    x1 = run(a_col, c_col.select([0, 1, 2]), a_col.initial_noise(g1, H, W), g1)
    x2 = run(a_full, c_full.select([0, 1, 2]), a_full.initial_noise(g2, H, W), g2)
    torch.testing.assert_close(x1, x2, atol=1e-5, rtol=1e-5)
    after = pipe.transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert "padding_count" not in SD3Adapter(pipeline("sd3_t5")).encode(PROMPTS[:1], guidance_scale=4.0).extra


# ---------------------------------------------------------------- discovery
def test_get_adapter_picks_family_and_rejects_unknown():
    for name, (_, cls, _) in FAMILIES.items():
        adapter = get_adapter(pipeline(name), eta=0)
        assert type(adapter) is cls and adapter.eta == 0 and not adapter.stochastic

    class NotAPipeline:
        pass

    with pytest.raises(ValueError, match="NotAPipeline") as err:
        get_adapter(NotAPipeline())
    assert "register_adapter" in str(err.value) and "sdxl" in str(err.value) and "flux" in str(err.value)
    with pytest.raises(ValueError):
        get_adapter(pipeline("sd"), eta=-1)

    class Custom(StableDiffusionAdapter):
        family = "custom"

        @classmethod
        def matches(cls, pipe):
            return isinstance(pipe, NotAPipeline)

    register_adapter(Custom)
    try:
        assert type(get_adapter(NotAPipeline())) is Custom and ADAPTERS[0] is Custom
    finally:
        ADAPTERS.remove(Custom)
    with pytest.raises(TypeError):
        register_adapter(int)
    assert issubclass(Custom, ModelAdapter)


# ---------------------------------------------------------------- shipped shapes models
WEIGHTS = Path(__file__).resolve().parent.parent / "steer" / "shapes" / "weights"


@pytest.mark.parametrize("kind", ["sd", "flow"])
def test_shapes_models_parity(kind):
    if not (WEIGHTS / kind).is_dir():
        pytest.skip(f"shapes weights {WEIGHTS / kind} not present yet (trained separately)")
    from steer.shapes import IMAGE_SIZE, load_flow_pipeline, load_pipeline, load_prompts

    pipe = load_pipeline() if kind == "sd" else load_flow_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = [r["prompt"] for r in load_prompts()[-2:]]
    call = dict(num_inference_steps=3, guidance_scale=4.0, height=IMAGE_SIZE, width=IMAGE_SIZE)
    ref = pipe(prompts, **call, generator=gens([0, 1]), output_type="pt").images
    adapter = get_adapter(pipe, eta=0)
    cond = adapter.encode(prompts, guidance_scale=4.0, height=IMAGE_SIZE, width=IMAGE_SIZE)
    adapter.set_schedule(3, height=IMAGE_SIZE, width=IMAGE_SIZE)
    x = run(adapter, cond.select([0, 1]), adapter.initial_noise(gens([0, 1]), IMAGE_SIZE, IMAGE_SIZE), None)
    torch.testing.assert_close(adapter.decode(x), ref, atol=1e-4, rtol=1e-4)
