"""Adapters for rectified-flow pipelines (SD3, FLUX).

The state is ``x_σ = (1-σ)·x0 + σ·ε`` on the sigmas of the pipeline's ``FlowMatchEulerDiscreteScheduler``
(shift / dynamic shifting as the pipeline applies them); transitions are
:func:`~steer.models.sampling.flow_step` (``eta=0``: the scheduler's Euler step).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from .attention import CollapsedPaddingJointAttnProcessor
from .base import Conditioning, ModelAdapter, StepOutput
from .scheduler import SchedulerStepper
from .sampling import flow_step, flow_x0_eps, guided_predict
from .sd import _negatives


class _FlowAdapter(ModelAdapter):
    """Shared schedule, transition and decoding of flow-matching pipelines."""

    stochastic_eta = 0.5  # ρ: the fraction of fresh noise in each step's noise component

    def __init__(self, pipe, *, eta: float = 1.0, max_batch: int | None = None):
        super().__init__(pipe, eta=eta, max_batch=max_batch)
        self._t: torch.Tensor = torch.empty(0)
        self._sigmas: list[float] = []

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def _default_hw(self, height, width) -> tuple[int, int]:
        size = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return height or size, width or size

    @property
    def size_multiple(self) -> int:
        """The VAE factor times the transformer's patch size (2×2 packing for FLUX)."""
        return int(self.pipe.vae_scale_factor) * int(getattr(self.pipe.transformer.config, "patch_size", 2) or 2)

    def _retrieve(self, module, n: int, **kwargs) -> None:
        """``retrieve_timesteps`` on this call's copy of the scheduler; native steps take every timestep."""
        if self.pipe.scheduler.config.get("invert_sigmas", False):
            raise ValueError("schedulers with invert_sigmas=True are not supported")
        self._stepper = SchedulerStepper(self.pipe.scheduler, flow=True)
        sched = self._stepper.scheduler
        module.retrieve_timesteps(sched, n, self.device, **kwargs)
        self._stepper.schedule_done()
        self._t = sched.timesteps
        self._sigmas = [float(s) for s in sched.sigmas]

    @property
    def num_steps(self) -> int:
        return len(self._t)

    def noise_level(self, i: int) -> float:
        """σ before step ``i`` (σ of the final state is 0)."""
        if self.native:
            return self._stepper.noise_level(i)
        return self._sigmas[i] if i < self.num_steps else 0.0

    def transition(self, x: torch.Tensor, i: int, model_output: torch.Tensor, noise: torch.Tensor | None, eta: float) -> StepOutput:
        v, sigma = model_output.to(x.dtype), self._sigmas[i]
        x0, _ = flow_x0_eps(x, v, sigma)
        return StepOutput(flow_step(x, v, sigma, self._sigmas[i + 1], eta, noise), x0)

    def _to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        c = self.pipe.vae.config
        return latents / c.scaling_factor + (c.get("shift_factor") or 0.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``vae.decode(x / scaling_factor + shift_factor)`` → [0, 1], micro-batched by ``max_batch``; float32."""
        vae = self.pipe.vae
        images = [vae.decode(self._to_vae(latents[sl].to(vae.dtype)), return_dict=False)[0] for sl in self._chunks(latents.shape[0])]
        self.counters.decodes += latents.shape[0]
        return (torch.cat(images).float() / 2 + 0.5).clamp(0, 1)


class SD3Adapter(_FlowAdapter):
    """``StableDiffusion3Pipeline``.

    ``collapse_padding``: without ``text_encoder_3`` the pipeline appends ``max_sequence_length``
    identical zero context tokens; keep one and run the transformer with
    :class:`~steer.models.attention.CollapsedPaddingJointAttnProcessor` (same result, much cheaper).
    """

    family = "sd3"
    encode_options = ("clip_skip", "max_sequence_length")

    def __init__(self, pipe, *, eta: float = 1.0, max_batch: int | None = None, collapse_padding: bool = True):
        super().__init__(pipe, eta=eta, max_batch=max_batch)
        self.collapse_padding = collapse_padding

    @classmethod
    def matches(cls, pipe) -> bool:
        from diffusers import StableDiffusion3Pipeline

        return isinstance(pipe, StableDiffusion3Pipeline)

    @torch.no_grad()
    def encode(self, prompts, *, negative_prompt=None, guidance_scale: float = 5.0, height=None, width=None, **kwargs) -> Conditioning:
        """``pipe.encode_prompt`` (kwargs: ``max_sequence_length`` = 256, ``clip_skip``); CFG when ``guidance_scale > 1``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        cfg, length = guidance_scale > 1, int(kwargs.get("max_sequence_length", 256))
        emb, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, negative_prompt=_negatives(negative_prompt, len(prompts)) if cfg else None,
            do_classifier_free_guidance=cfg, device=self.device, num_images_per_prompt=1, max_sequence_length=length,
            clip_skip=kwargs.get("clip_skip"),
        )
        extra = {}
        pad = [e[:, -length:] for e in ([emb, neg] if cfg else [emb])]
        if self.collapse_padding and self.pipe.text_encoder_3 is None and length > 1 and all(not p.any() for p in pad):
            emb, neg = emb[:, : emb.shape[1] - length + 1], (neg[:, : neg.shape[1] - length + 1] if cfg else None)
            extra["padding_count"] = length
        uncond = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled} if cfg else None
        return Conditioning({"encoder_hidden_states": emb, "pooled_projections": pooled}, uncond, float(guidance_scale), prompts, extra)

    def set_schedule(self, num_inference_steps: int, *, height=None, width=None, **kwargs) -> None:
        """``retrieve_timesteps`` as the pipeline calls it (``mu`` from the image size under dynamic shifting; kwargs ``sigmas``, ``mu``)."""
        from diffusers.pipelines.stable_diffusion_3 import pipeline_stable_diffusion_3 as module

        cfg, sched_kwargs = self.pipe.scheduler.config, {}
        mu = kwargs.get("mu")
        if cfg.get("use_dynamic_shifting", None) and mu is None:
            _, h, w = self.latent_shape(height, width)
            p = self.pipe.transformer.config.patch_size
            mu = module.calculate_shift(
                (h // p) * (w // p), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16),
            )
        if mu is not None:
            sched_kwargs["mu"] = mu
        self._retrieve(module, num_inference_steps, sigmas=kwargs.get("sigmas"), **sched_kwargs)

    def latent_shape(self, height=None, width=None) -> tuple[int, ...]:
        h, w = self._default_hw(height, width)
        f = self.pipe.vae_scale_factor
        return (self.pipe.transformer.config.in_channels, int(h) // f, int(w) // f)

    @contextmanager
    def _processors(self, count: int | None):
        tr = self.pipe.transformer
        if count is None:
            yield
            return
        saved = tr.attn_processors
        tr.set_attn_processor(CollapsedPaddingJointAttnProcessor(count))
        try:
            yield
        finally:
            tr.set_attn_processor(saved)

    def predict(self, x: torch.Tensor, i: int, cond: Conditioning) -> torch.Tensor:
        t = self._t[i]

        def denoise(xs, kw):
            return self.pipe.transformer(hidden_states=xs.to(self.dtype), timestep=t.expand(xs.shape[0]), return_dict=False, **kw)[0]

        with self._processors(cond.extra.get("padding_count")):
            out, rows = guided_predict(denoise, x, cond.cond, cond.uncond, cond.guidance_scale, self.max_batch)
        self.counters.denoiser_rows += rows
        return out


class FluxAdapter(_FlowAdapter):
    """``FluxPipeline``. The state is the *unpacked* latent ``(C, H, W)`` (packed only for the transformer),
    so initial noise equals the stock pipeline's for the same generators and decoding needs no image size.

    ``guidance_scale`` feeds the guidance embedding (guidance-distilled models); true CFG runs when
    ``negative_prompt`` is given and ``true_cfg_scale > 1`` (kwargs of :meth:`encode`).
    """

    family = "flux"
    encode_options = ("max_sequence_length", "true_cfg_scale")

    @classmethod
    def matches(cls, pipe) -> bool:
        from diffusers import FluxPipeline

        return isinstance(pipe, FluxPipeline)

    @property
    def size_multiple(self) -> int:
        """FLUX packs 2×2 latent patches: the VAE factor times 2 (the stock pipeline's rule)."""
        return int(self.pipe.vae_scale_factor) * 2

    @torch.no_grad()
    def encode(self, prompts, *, negative_prompt=None, guidance_scale: float = 3.5, height=None, width=None, **kwargs) -> Conditioning:
        """``pipe.encode_prompt`` (kwargs: ``max_sequence_length`` = 512, ``true_cfg_scale`` = 1)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length, true_cfg = int(kwargs.get("max_sequence_length", 512)), float(kwargs.get("true_cfg_scale", 1.0))
        enc = dict(device=self.device, num_images_per_prompt=1, max_sequence_length=length)
        emb, pooled, text_ids = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, **enc)
        uncond = None
        if true_cfg > 1 and negative_prompt is not None:
            neg, neg_pooled, _ = self.pipe.encode_prompt(prompt=_negatives(negative_prompt, len(prompts)), prompt_2=None, **enc)
            uncond = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled}
        guidance = float(guidance_scale) if self.pipe.transformer.config.guidance_embeds else None
        extra = {"txt_ids": text_ids, "guidance": guidance, "true_cfg_scale": true_cfg}
        return Conditioning({"encoder_hidden_states": emb, "pooled_projections": pooled}, uncond, float(guidance_scale), prompts, extra)

    def set_schedule(self, num_inference_steps: int, *, height=None, width=None, **kwargs) -> None:
        """Sigmas ``linspace(1, 1/n, n)`` shifted with ``mu = calculate_shift(image_seq_len)``, as ``FluxPipeline``."""
        from diffusers.pipelines.flux import pipeline_flux as module

        n, cfg = num_inference_steps, self.pipe.scheduler.config
        sigmas = kwargs.get("sigmas")
        sigmas = np.linspace(1.0, 1 / n, n) if sigmas is None else sigmas
        if cfg.get("use_flow_sigmas", False):
            sigmas = None
        _, h, w = self.latent_shape(height, width)
        mu = kwargs.get("mu")
        if mu is None:
            mu = module.calculate_shift(
                (h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15),
            )
        self._retrieve(module, n, sigmas=sigmas, mu=mu)

    def latent_shape(self, height=None, width=None) -> tuple[int, ...]:
        h, w = self._default_hw(height, width)
        f = self.pipe.vae_scale_factor * 2
        return (self.pipe.transformer.config.in_channels // 4, 2 * (int(h) // f), 2 * (int(w) // f))

    def predict(self, x: torch.Tensor, i: int, cond: Conditioning) -> torch.Tensor:
        pipe, t = self.pipe, self._t[i]
        _, c, h, w = x.shape
        img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)
        g = cond.extra.get("guidance")

        def denoise(xs, kw):
            b = xs.shape[0]
            out = pipe.transformer(
                hidden_states=pipe._pack_latents(xs.to(self.dtype), b, c, h, w),
                timestep=t.expand(b).to(self.dtype) / 1000,
                guidance=None if g is None else torch.full([b], g, device=self.device, dtype=torch.float32),
                txt_ids=cond.extra["txt_ids"], img_ids=img_ids, return_dict=False, **kw,
            )[0]
            return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)

        out, rows = guided_predict(denoise, x, cond.cond, cond.uncond, cond.extra.get("true_cfg_scale", 1.0), self.max_batch)
        self.counters.denoiser_rows += rows
        return out
