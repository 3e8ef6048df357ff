"""Sampler arithmetic shared by the adapters: pure functions on tensors (no pipeline objects).

Conventions: variance-preserving diffusion ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε`` (SD family) and
rectified flow ``x_σ = (1-σ)·x0 + σ·ε`` with velocity ``v = ε - x0`` (SD3, FLUX). Schedule scalars
are Python floats; ``noise`` is standard normal noise shaped like ``x`` (``None``: deterministic).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def to_x0_eps(model_output: torch.Tensor, x: torch.Tensor, alpha_t: float, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a VP denoiser output to ``(x0, eps)`` for ``epsilon``, ``v_prediction`` or ``sample``."""
    a, s = math.sqrt(alpha_t), math.sqrt(1.0 - alpha_t)
    if prediction_type == "epsilon":
        return (x - s * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * x - s * model_output, a * model_output + s * x
    if prediction_type == "sample":
        return model_output, (x - a * model_output) / s
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def ddim_sigma(alpha_t: float, alpha_prev: float, eta: float) -> float:
    """DDIM noise scale ``σ_t = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev)``."""
    if eta <= 0:
        return 0.0
    return eta * math.sqrt(max((1 - alpha_prev) / (1 - alpha_t), 0.0)) * math.sqrt(max(1 - alpha_t / alpha_prev, 0.0))


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, alpha_t: float, alpha_prev: float, eta: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """DDIM(η) update ``x_prev = sqrt(ᾱ_prev)·x0 + sqrt(1-ᾱ_prev-σ²)·eps + σ·noise`` (η=1: ancestral/DDPM-like).

    ``x`` is unused by the formula; it is kept for a uniform signature. ``noise=None`` means σ = 0.
    """
    sigma = ddim_sigma(alpha_t, alpha_prev, eta) if noise is not None else 0.0
    prev = math.sqrt(alpha_prev) * x0 + math.sqrt(max(1 - alpha_prev - sigma**2, 0.0)) * eps
    return prev + sigma * noise if sigma > 0 else prev


def flow_x0_eps(x: torch.Tensor, velocity: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow: ``x0 = x - σ·v`` and ``ε̂ = x + (1-σ)·v``."""
    return x - sigma * velocity, x + (1 - sigma) * velocity


def flow_step(
    x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float, eta: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """Stochastic rectified-flow transition with tunable noise.

    ``next = (1-σ')·x0 + σ'·(sqrt(1-ρ²)·ε̂ + ρ·noise)`` with ``ρ = clamp(eta, 0, 1)``: the predicted
    noise ``ε̂`` is partly replaced by fresh noise, so the marginal at ``σ'`` is kept while particles
    that share a state (after resampling) diverge. ``ρ = 0`` (or ``noise=None``) is exactly the Euler
    step ``x + (σ'-σ)·v`` of ``FlowMatchEulerDiscreteScheduler``; ``ρ = 1`` is its ``stochastic_sampling``.
    """
    rho = min(max(float(eta), 0.0), 1.0)
    if noise is None or rho == 0.0:
        return x + (sigma_next - sigma) * velocity
    x0, eps = flow_x0_eps(x, velocity, sigma)
    return (1 - sigma_next) * x0 + sigma_next * (math.sqrt(1 - rho**2) * eps + rho * noise)


def guided_predict(
    denoise: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
    x: torch.Tensor,
    cond: Mapping[str, torch.Tensor],
    uncond: Mapping[str, torch.Tensor] | None,
    scale: float,
    max_rows: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Run ``denoise(x_rows, kwargs_rows)`` in micro-batches of at most ``max_rows`` denoiser rows.

    With ``uncond`` each particle takes two rows (uncond then cond, concatenated) and the result is
    ``u + scale·(c - u)``. Returns the guided output and the number of denoiser rows run.
    """
    n = x.shape[0]
    per = 2 if uncond is not None else 1
    size = max(1, (max_rows or n * per) // per)
    outs, rows = [], 0
    for s in range(0, n, size):
        sl = slice(s, min(n, s + size))
        xs = x[sl]
        if uncond is None:
            outs.append(denoise(xs, {k: v[sl] for k, v in cond.items()}))
        else:
            kw = {k: torch.cat([uncond[k][sl], v[sl]]) for k, v in cond.items()}
            u, c = denoise(torch.cat([xs, xs]), kw).chunk(2)
            outs.append(u + scale * (c - u))
        rows += xs.shape[0] * per
    return (outs[0] if len(outs) == 1 else torch.cat(outs)), rows


def nest_kwargs(flat: Mapping[str, torch.Tensor]) -> dict:
    """``{"added_cond_kwargs.text_embeds": t}`` → ``{"added_cond_kwargs": {"text_embeds": t}}``."""
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
    return out
