"""DOODL-style noise optimisation (after Wallace et al. 2023) through an exactly invertible EDICT chain.

The sampler is EDICT's coupled pair of sequences ``(x, y)``, both starting at x_T. With ``T_i(z, m)`` the
deterministic step ``i`` (DDIM, η = 0, or the flow Euler step: affine in ``z``, ``T_i(z, m) = α_i·z + T_i(0, m)``)
and ``m_i(·)`` the guided denoiser output, one step is::

    x' = T_i(x, m_i(y));  y' = T_i(y, m_i(x'))
    x⁺ = p·x' + (1−p)·y';  y⁺ = p·y' + (1−p)·x⁺          (mixing p, 0.93 by default)

and each line inverts exactly: ``y' = (y⁺ − (1−p)·x⁺)/p``, ``x' = (x⁺ − (1−p)·y')/p``,
``y = (y' − T_i(0, m_i(x')))/α_i``, ``x = (x' − T_i(0, m_i(y)))/α_i``.

Gradients of the reward of ``decode(x₀)`` with respect to x_T use a custom backward (:class:`EDICTChain`)
that keeps no activations of the forward chain: it reconstructs each step's input states from its outputs
by the inversion, recomputes that one step with grad, and backpropagates through it; so memory does not grow
with the number of steps (:func:`saved_tensor_peak` measures it as bytes of tensors saved for backward).

Update (DOODL): the gradient is normalised per particle, ``ε ← ε + lr·‖ε‖·g/‖g‖``, then ε is rescaled to
its starting norm. The best iterate (by the reward) is returned.

Compute per particle: a forward chain is 2S NFE (two denoiser calls per step); each iteration's backward
reconstructs (2S NFE), recomputes (2S NFE) and backpropagates through 2S denoiser calls (**2 NFE each**,
4S): ``trace.nfe`` includes all, ``trace.backward_nfe`` the backward part; reward evaluations with a
gradient are ``trace.reward_grad_calls``.

The chain needs a first-order deterministic step: schedulers in :data:`INVERTIBLE_SCHEDULERS` (DDIM, Euler,
flow Euler; the chain runs the adapter's DDIM / flow-Euler transition on their timesteps). Others (multistep
solvers, consistency / LCM, ancestral-only samplers) raise ``ValueError``.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch

from .. import validate
from .base import Problem
from .dts import stateless_steps
from .reno import NoiseOptimization

INVERTIBLE_SCHEDULERS = ("DDIMScheduler", "DDIMParallelScheduler", "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler")


class EDICTRunner:
    """EDICT steps and their inverses on an adapter's deterministic transitions (NFE counted on the adapter)."""

    def __init__(self, adapter, cond, mix: float = 0.93):
        self.ad, self.cond, self.p = adapter, cond, float(mix)
        self._alpha: dict[int, float] = {}

    @property
    def num_steps(self) -> int:
        return self.ad.num_steps

    def _m(self, z: torch.Tensor, i: int) -> torch.Tensor:
        self.ad.counters.nfe += z.shape[0]
        return self.ad.predict(z, i, self.cond)

    def _t(self, z: torch.Tensor, i: int, m: torch.Tensor) -> torch.Tensor:
        return self.ad.transition(z, i, m, None, 0.0).prev_sample

    def alpha(self, i: int, like: torch.Tensor) -> float:
        if i not in self._alpha:
            one, zero = torch.ones_like(like[:1]), torch.zeros_like(like[:1])
            self._alpha[i] = float((self._t(one, i, zero) - self._t(zero, i, zero)).mean())
        return self._alpha[i]

    def step(self, x: torch.Tensor, y: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.p
        xi = self._t(x, i, self._m(y, i))
        yi = self._t(y, i, self._m(xi, i))
        xn = p * xi + (1 - p) * yi
        yn = p * yi + (1 - p) * xn
        return xn, yn

    def invert(self, xn: torch.Tensor, yn: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, a = self.p, self.alpha(i, xn)
        yi = (yn - (1 - p) * xn) / p
        xi = (xn - (1 - p) * yi) / p
        zero = torch.zeros_like(xi)
        y = (yi - self._t(zero, i, self._m(xi, i))) / a
        x = (xi - self._t(zero, i, self._m(y, i))) / a
        return x, y

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x
        for i in range(self.num_steps):
            x, y = self.step(x, y, i)
        return x, y

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The initial pair from the final one (inverting every step)."""
        for i in reversed(range(self.num_steps)):
            x, y = self.invert(x, y, i)
        return x, y


class EDICTChain(torch.autograd.Function):
    """x_T → x₀ through the EDICT chain; backward reconstructs states by inversion (memory constant in the steps)."""

    @staticmethod
    def forward(ctx, x_T: torch.Tensor, runner: EDICTRunner) -> torch.Tensor:
        with torch.no_grad():
            x, y = runner.run(x_T)
        ctx.runner = runner
        ctx.save_for_backward(x, y)
        return x

    @staticmethod
    def backward(ctx, gx: torch.Tensor):
        runner = ctx.runner
        x, y = ctx.saved_tensors
        gy = torch.zeros_like(gx)
        for i in reversed(range(runner.num_steps)):
            with torch.no_grad():
                x, y = runner.invert(x, y, i)
            with torch.enable_grad():
                xi, yi = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
                xo, yo = runner.step(xi, yi, i)
                gx, gy = torch.autograd.grad((xo, yo), (xi, yi), (gx, gy))
        return gx + gy, None


class _Packed:
    def __init__(self, t: torch.Tensor, meter: "SavedTensorMeter"):
        self.t = t
        key = meter.add(t)
        if key is not None:
            weakref.finalize(self, meter.remove, key)


class SavedTensorMeter:
    """Live and peak bytes of the storages autograd saves for backward: each storage counted once while any save
    holds it; storages in ``exclude`` (model weights, already resident) are not counted."""

    def __init__(self, exclude: set[int] = frozenset()):
        self.exclude = exclude
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [saves holding it, bytes]

    def add(self, t: torch.Tensor) -> int | None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.exclude or key == 0:
            return None
        ref = self._refs.setdefault(key, [0, storage.nbytes()])
        if ref[0] == 0:
            self.live += ref[1]
            self.peak = max(self.peak, self.live)
        ref[0] += 1
        return key

    def remove(self, key: int) -> None:
        ref = self._refs[key]
        ref[0] -= 1
        if ref[0] == 0:
            self.live -= ref[1]
            del self._refs[key]


@contextmanager
def saved_tensor_peak(*modules: torch.nn.Module):
    """``with saved_tensor_peak(unet, vae) as m: ...`` then ``m.peak``: peak bytes of the storages autograd saves for
    backward inside the block (the modules' parameters and buffers excluded: they are resident anyway)."""
    exclude = {t.untyped_storage().data_ptr() for mod in modules for t in (*mod.parameters(), *mod.buffers())}
    meter = SavedTensorMeter(exclude)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: _Packed(t, meter), lambda p: p.t):
        yield meter


def check_invertible(problem: Problem) -> None:
    """Raise ``ValueError`` unless the pipeline's scheduler has an invertible first-order chain."""
    sched = getattr(problem.adapter.pipe, "scheduler", None)
    name = type(sched).__name__
    if sched is None or name not in INVERTIBLE_SCHEDULERS:
        raise ValueError(f"doodl needs an invertible first-order deterministic chain (EDICT coupling of DDIM / Euler steps), but {name} "
                         f"has none. Use one of {', '.join(INVERTIBLE_SCHEDULERS)}, e.g. pipe.scheduler = "
                         "DDIMScheduler.from_config(pipe.scheduler.config) (FlowMatchEulerDiscreteScheduler for flow models), or method='reno'.")
    if getattr(sched, "config", {}).get("clip_sample", False):
        raise ValueError(f"doodl: {name} has clip_sample=True, which makes the step non-invertible: set clip_sample=False in the scheduler config")


class DOODL(NoiseOptimization):
    """DOODL-style optimisation of x_T through the invertible EDICT chain.

    Options: ``iters`` (gradient iterations), ``lr`` (step as a fraction of ‖ε‖, 0.1), ``mix`` (EDICT mixing
    p in (0.5, 1), 0.93).
    """

    name = "doodl"

    def __init__(self, iters: int = 20, lr: float = 0.1, mix: float = 0.93):
        lr = validate.real("lr", lr, 0.0)
        mix = validate.real("mix", mix, 0.5, 1.0)
        if mix in (0.5, 1.0):
            raise ValueError(f"mix must be strictly between 0.5 and 1 (EDICT's p; 0.93 in the paper), got {mix:g}")
        super().__init__(iters, lr=lr, mix=mix)
        self.lr, self.mix = lr, mix

    def forward_nfe(self, S: int) -> int:
        return 2 * S

    def backward_cost(self, S: int) -> tuple[int, int]:
        return 4 * S, 4 * S

    def prepare(self, problem: Problem, trace) -> None:
        check_invertible(problem)
        stateless_steps(problem, trace, keep_native=())
        trace.sampler = f"EDICT(p={self.mix:g}) on {trace.sampler}"

    def __call__(self, problem: Problem):
        check_invertible(problem)
        return super().__call__(problem)

    def chain(self, problem: Problem, x: torch.Tensor, cond, grad: bool) -> torch.Tensor:
        runner = EDICTRunner(problem.adapter, cond, self.mix)
        if not grad:
            return runner.run(x)[0]
        return EDICTChain.apply(x, runner)

    def update(self, eps: torch.Tensor, grad: torch.Tensor, state: dict) -> torch.Tensor:
        flat, g = eps.flatten(1), grad.flatten(1)
        norm0 = state.setdefault("norm", flat.norm(dim=1, keepdim=True))
        step = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        new = flat + self.lr * flat.norm(dim=1, keepdim=True) * step
        new = new * (norm0 / new.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return new.view_as(eps)
