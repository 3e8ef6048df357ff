"""Resampling schemes on log-weights (k-diffusion style: small pure functions).

Each takes ``logw`` of shape ``(N,)`` (unnormalised, ``-inf`` allowed for dead particles)
and a ``torch.Generator``, and returns ``N`` ancestor indices.
"""

from __future__ import annotations

from typing import Callable

import torch


def normalize(logw: torch.Tensor) -> torch.Tensor:
    """Normalised weights from log-weights (logsumexp); uniform when every weight is zero."""
    logw = logw.double()
    if not torch.isfinite(logw).any():
        return torch.full_like(logw, 1.0 / logw.numel())
    return torch.softmax(logw, 0)


def ess(logw: torch.Tensor) -> float:
    """Effective sample size ``1 / Σ w²`` of normalised weights."""
    w = normalize(logw)
    return float(1.0 / (w**2).sum())


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u.clamp(max=1 - 1e-12), right=True).clamp(max=w.numel() - 1)


def multinomial(logw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    w = normalize(logw)
    return torch.multinomial(w, w.numel(), replacement=True, generator=generator)


def stratified(logw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    w = normalize(logw)
    n = w.numel()
    u = (torch.arange(n, dtype=w.dtype) + torch.rand(n, generator=generator, dtype=w.dtype)) / n
    return _inverse_cdf(w, u)


def systematic(logw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    w = normalize(logw)
    n = w.numel()
    u = (torch.arange(n, dtype=w.dtype) + torch.rand(1, generator=generator, dtype=w.dtype)) / n
    return _inverse_cdf(w, u)


def residual(logw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Deterministic copies ``floor(N w)``, the remainder drawn multinomially from the residual weights."""
    w = normalize(logw)
    n = w.numel()
    copies = torch.floor(n * w + 1e-9).long()  # tolerate round-off in exact multiples
    idx = torch.repeat_interleave(torch.arange(n), copies)
    rest = n - idx.numel()
    if rest > 0:
        r = (n * w - copies).clamp_min(0)
        extra = torch.multinomial(r / r.sum(), rest, replacement=True, generator=generator)
        idx = torch.cat([idx, extra])
    return idx.sort().values


RESAMPLERS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get_resampler(name: str):
    if name not in RESAMPLERS:
        raise ValueError(f"unknown resampler {name!r}; choose one of {', '.join(RESAMPLERS)}")
    return RESAMPLERS[name]
