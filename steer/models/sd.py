"""Adapters for the Stable Diffusion family (SD 1.x/2.x, SD-Turbo, SDXL): VP diffusion with a UNet.

Steps go through the pipeline's own scheduler (state in the scheduler's space, as the stock loop). The
fallback for noisy steps on a deterministic scheduler is DDIM(η) (:func:`~steer.models.sampling.ddim_step`)
on the VP latent, computed from the scheduler's ``alphas_cumprod`` on the timesteps its
``set_timesteps`` picks.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from .base import Conditioning, ModelAdapter, StepOutput
from .scheduler import SchedulerStepper
from .sampling import ddim_step, guided_predict, nest_kwargs, to_x0_eps


def _negatives(negative_prompt: str | Sequence[str] | None, n: int) -> list[str] | None:
    """One negative prompt per prompt; ``None`` stays ``None`` (pipelines' own default, e.g. SDXL's zeroed embeddings)."""
    if negative_prompt is None:
        return None
    if isinstance(negative_prompt, str):
        return [negative_prompt] * n
    if len(negative_prompt) != n:
        raise ValueError(f"got {len(negative_prompt)} negative prompts for {n} prompts")
    return list(negative_prompt)


def _own_config(sched, key: str, default):
    """A scheduler config value, ignoring keys the class does not take (configs carry other schedulers' keys)."""
    return sched.config.get(key, default) if key in inspect.signature(type(sched).__init__).parameters else default


class StableDiffusionAdapter(ModelAdapter):
    """``StableDiffusionPipeline`` and subclasses (epsilon / v-prediction / sample, CFG off when ``guidance_scale <= 1``)."""

    family = "sd"
    encode_options = ("clip_skip",)

    def __init__(self, pipe, *, eta: float = 1.0, max_batch: int | None = None):
        super().__init__(pipe, eta=eta, max_batch=max_batch)
        self._t: list[torch.Tensor] = []
        self._alpha: list[float] = []
        self._alpha_prev: list[float] = []

    @classmethod
    def matches(cls, pipe) -> bool:
        from diffusers import StableDiffusionPipeline

        return isinstance(pipe, StableDiffusionPipeline)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def prediction_type(self) -> str:
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    # ---------------------------------------------------------------- prompts
    def _default_hw(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return height or size, width or size

    def _do_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    @torch.no_grad()
    def encode(self, prompts, *, negative_prompt=None, guidance_scale: float = 5.0, height=None, width=None, **kwargs) -> Conditioning:
        """Prompt embeddings via ``pipe.encode_prompt`` (constant: computed without grad)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        cfg = self._do_cfg(guidance_scale)
        emb, neg = self.pipe.encode_prompt(
            prompts, self.device, 1, cfg, _negatives(negative_prompt, len(prompts)), clip_skip=kwargs.get("clip_skip")
        )
        uncond = {"encoder_hidden_states": neg} if cfg else None
        return Conditioning({"encoder_hidden_states": emb}, uncond, float(guidance_scale), prompts)

    # ---------------------------------------------------------------- schedule
    def set_schedule(self, num_inference_steps: int, *, height=None, width=None, **kwargs) -> None:
        """Timesteps from ``set_timesteps`` on this call's copy of the scheduler, as the pipeline calls it.

        Native steps use every timestep (second-order schedulers repeat them: two denoiser calls per
        step); the DDIM(η) fallback uses the distinct ones with ᾱ from ``alphas_cumprod`` (final ᾱ as
        ``DDIMScheduler``).
        """
        from diffusers import DDIMScheduler

        self._stepper = SchedulerStepper(self.pipe.scheduler, self.prediction_type)
        sched = self._stepper.scheduler
        sched.set_timesteps(num_inference_steps, device=self.device, **kwargs)
        self._stepper.schedule_done()
        if self.native:
            self._t = [t.to(self.device) for t in self._stepper.timesteps]
            return
        ts = torch.unique_consecutive(sched.timesteps.cpu())  # second-order schedulers repeat timesteps
        ac = sched.alphas_cumprod.double().cpu()
        final = float(getattr(sched, "final_alpha_cumprod", 1.0))  # DDIM/PNDM/LCM honour set_alpha_to_one; else clean
        sig = ((1 - ac) / ac).sqrt()

        def alpha(t: float) -> float:
            if t < 0:
                return final
            if float(t).is_integer():
                return float(ac[int(t)])
            lo = int(t)  # fractional timestep: interpolate σ as the k-diffusion schedulers do
            s = sig[lo] + (t - lo) * (sig[min(lo + 1, len(sig) - 1)] - sig[lo])
            return float(1 / (1 + s**2))

        tvals = [float(t) for t in ts]
        if isinstance(sched, DDIMScheduler):  # DDIM's own rule: prev = t - T // n
            prev = [t - sched.config.num_train_timesteps // sched.num_inference_steps for t in tvals]
        else:
            prev = tvals[1:] + [-1.0]
        device = self.device
        self._t = [t.to(device) for t in ts]
        self._alpha = [alpha(t) for t in tvals]
        self._alpha_prev = [alpha(p) for p in prev]

    @property
    def num_steps(self) -> int:
        return len(self._t)

    def noise_level(self, i: int) -> float:
        """``sqrt(1-ᾱ)`` at step ``i``'s timestep (0 at ``num_steps``)."""
        if self.native:
            return self._stepper.noise_level(i)
        return 0.0 if i >= self.num_steps else float((1 - self._alpha[i]) ** 0.5)

    # ---------------------------------------------------------------- sampling
    def latent_shape(self, height=None, width=None) -> tuple[int, ...]:
        h, w = self._default_hw(height, width)
        f = self.pipe.vae_scale_factor
        return (self.pipe.unet.config.in_channels, h // f, w // f)

    def scale_initial_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Identity for VP schedulers; for k-diffusion style ones (``init_noise_sigma > 1``) the VP image of the
        pipeline's ``noise·init_noise_sigma`` (trailing/linspace spacing uses σ_max, not sqrt(σ_max²+1))."""
        s = float(getattr(self.pipe.scheduler, "init_noise_sigma", 1.0))
        return noise if s <= 1.0 or not self._alpha else noise * (s * self._alpha[0] ** 0.5)

    def _extra_unet_kwargs(self, rows: int, cond: Conditioning) -> dict:
        proj = self.pipe.unet.config.time_cond_proj_dim
        if proj is None:
            return {}
        w = torch.tensor(cond.guidance_scale - 1).repeat(rows)
        return {"timestep_cond": self.pipe.get_guidance_scale_embedding(w, embedding_dim=proj).to(self.device, self.dtype)}

    def predict(self, x: torch.Tensor, i: int, cond: Conditioning) -> torch.Tensor:
        t = self._t[i]

        def denoise(xs, flat):
            kw = nest_kwargs(flat)
            kw.update(self._extra_unet_kwargs(xs.shape[0], cond))
            return self.pipe.unet(xs.to(self.dtype), t, return_dict=False, **kw)[0]

        out, rows = guided_predict(denoise, x, cond.cond, cond.uncond, cond.guidance_scale, self.max_batch)
        self.counters.denoiser_rows += rows
        return out

    def transition(self, x: torch.Tensor, i: int, model_output: torch.Tensor, noise: torch.Tensor | None, eta: float) -> StepOutput:
        a_t, a_prev = self._alpha[i], self._alpha_prev[i]
        model_output = model_output.to(x.dtype)
        x0, eps = to_x0_eps(model_output, x, a_t, self.prediction_type)
        if _own_config(self.pipe.scheduler, "clip_sample", False):
            r = _own_config(self.pipe.scheduler, "clip_sample_range", 1.0)
            x0 = x0.clamp(-r, r)
        return StepOutput(ddim_step(x, eps, x0, a_t, a_prev, eta, noise), x0)

    # ---------------------------------------------------------------- decoding
    def _unscale(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.pipe.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``vae.decode`` → ``(x/2+0.5).clamp(0,1)``, micro-batched by ``max_batch``; returns float32."""
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            vae.to(torch.float32)  # what the SDXL pipeline does (kept upcast: backward needs fp32 weights)
        images = []
        for sl in self._chunks(latents.shape[0]):
            z = self._unscale(latents[sl].to(vae.dtype))
            images.append(vae.decode(z, return_dict=False)[0])
        self.counters.decodes += latents.shape[0]
        return (torch.cat(images).float() / 2 + 0.5).clamp(0, 1)


class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """``StableDiffusionXLPipeline``: adds pooled text embeddings and ``add_time_ids`` as ``added_cond_kwargs``."""

    family = "sdxl"
    encode_options = ("clip_skip", "original_size", "crops_coords_top_left", "target_size")

    @classmethod
    def matches(cls, pipe) -> bool:
        from diffusers import StableDiffusionXLPipeline

        return isinstance(pipe, StableDiffusionXLPipeline)

    def _default_hw(self, height, width):
        size = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return height or size, width or size

    @torch.no_grad()
    def encode(self, prompts, *, negative_prompt=None, guidance_scale: float = 5.0, height=None, width=None, **kwargs) -> Conditioning:
        """``pipe.encode_prompt`` + ``pipe._get_add_time_ids`` (``original_size``/``crops_coords_top_left``/``target_size`` kwargs)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        pipe, cfg = self.pipe, self._do_cfg(guidance_scale)
        emb, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=_negatives(negative_prompt, len(prompts)), clip_skip=kwargs.get("clip_skip"),
        )
        hw = self._default_hw(height, width)
        proj = int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            tuple(kwargs.get("original_size") or hw), tuple(kwargs.get("crops_coords_top_left", (0, 0))),
            tuple(kwargs.get("target_size") or hw), dtype=emb.dtype, text_encoder_projection_dim=proj,
        ).to(self.device).repeat(len(prompts), 1)

        def pack(e, p):
            return {"encoder_hidden_states": e, "added_cond_kwargs.text_embeds": p, "added_cond_kwargs.time_ids": time_ids}

        return Conditioning(pack(emb, pooled), pack(neg, neg_pooled) if cfg else None, float(guidance_scale), prompts)

    def _unscale(self, latents):
        c = self.pipe.vae.config
        if c.get("latents_mean") is not None and c.get("latents_std") is not None:
            mean = torch.tensor(c.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(c.latents_std).view(1, -1, 1, 1).to(latents)
            return latents * std / c.scaling_factor + mean
        return latents / c.scaling_factor
