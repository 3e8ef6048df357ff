"""λ, the inverse temperature of reward-weighted resampling: a fixed value, or ``"auto"`` (adaptive tempering).

A fixed λ must suit the reward's scale: CLIPScore-like rewards span tens of units (λ ≈ 0.1),
z-scored rewards such as ImageReward a few (λ ≈ 1–10). ``lam="auto"`` needs no scale: at each
potential step and for each prompt it takes the largest λ whose reweighting keeps the effective
sample size at ``ess_target · N`` (default 0.8; the adaptive tempering of SMC samplers, Jasra et al.
2011), so the weights never collapse onto one particle, whatever the reward's units.
"""

from __future__ import annotations

import math

import torch

from .. import validate
from .resampling import ess

AUTO = "auto"
#: auto's ceiling, as λ times the spread of the potentials: a weight ratio of e^50 between the best
#: and the worst particle is already a hard selection (reached only when the target ESS is never hit)
MAX_CONTRAST = 50.0


def check_lam(lam) -> float | str:
    """``"auto"`` or a finite λ >= 0 (0: no reward weighting)."""
    if isinstance(lam, str):
        if lam != AUTO:
            raise ValueError(f"lam must be a number >= 0 or 'auto', got {lam!r}")
        return AUTO
    return validate.real("lam", lam, 0.0)


def auto_lambda(logw: torch.Tensor, phi: torch.Tensor, target_ess: float, iters: int = 50) -> tuple[float, bool]:
    """(λ, binding): the largest λ with ``ESS(logw + λ·phi) >= target_ess``, and whether the target set it.

    λ is searched (bisection on log λ) up to ``MAX_CONTRAST / spread(phi)``, so the result scales
    inversely with the potentials' units. Particles whose ``phi`` is not finite have zero weight at
    every λ. λ is 0 when the finite potentials are all equal or even λ = 0 misses the target.
    """
    logw, phi = logw.double(), phi.double()
    finite = torch.isfinite(phi)
    if not finite.any():
        return 0.0, False
    spread = float(phi[finite].max() - phi[finite].min())
    phi = torch.where(finite, phi - phi[finite].max(), torch.zeros_like(phi))
    base = torch.where(finite, logw, torch.full_like(logw, -math.inf))

    def ok(lam: float) -> bool:
        return ess(base + lam * phi) >= target_ess

    if spread <= 0 or not ok(0.0):
        return 0.0, False
    lam_max = MAX_CONTRAST / spread
    if ok(lam_max):
        return lam_max, False
    lo, hi = math.log(lam_max) - 40.0, math.log(lam_max)
    if not ok(math.exp(lo)):
        return 0.0, True
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(math.exp(mid)) else (lo, mid)
    return math.exp(lo), True
