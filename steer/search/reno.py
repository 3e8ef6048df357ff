"""ReNO (Eyring et al. 2024): reward-based optimisation of the initial noise through the sampler.

Each particle's initial noise ε is optimised by gradient ascent on ``r(decode(x₀(ε))) + reg·K(ε)``, with
the noise-norm regulariser ``K(ε) = (d−1)·log‖ε‖ − ‖ε‖²/2`` (the log-density of a Gaussian's norm, which
keeps ε typical), SGD with Nesterov momentum, per-particle gradient-norm clipping, and the best iterate (by
the reward) returned. The chain is the deterministic sampler (η = 0, whatever ``eta``) with stateless
transitions (:func:`steer.search.dts.stateless_steps`).

Memory: each denoiser step runs under ``torch.utils.checkpoint`` (``checkpoint=True``), so the graph
keeps one latent per step and recomputes a step's activations during backward. ``backprop_steps=K`` truncates
the backward to the last K steps: the first S−K steps run without grad and the gradient reaches ε through
their affine part (the step's coefficient on its input state with the model output held fixed: ``√(ᾱ'/ᾱ)``
for DDIM, 1 for the flow Euler step), a stated approximation that keeps cost and memory of K steps.

Compute per particle and iteration: S forward NFE, K recomputed NFE (with checkpointing) and a backward pass
through K denoiser calls counted as **2 NFE each**; ``trace.nfe`` includes all of them, ``trace.backward_nfe``
the backward part. Reward evaluations with a gradient are ``trace.reward_grad_calls``; the final iterate's
plain evaluation is a reward call. ``iters`` iterations cost ``(iters+1)·S + iters·(K·[checkpoint] + 2K)`` NFE
per particle; under ``max_nfe`` the method runs the iterations that fit (anytime).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .. import validate
from .base import Method, Problem, score
from .dts import stateless_steps
from .trace import BudgetExceeded

#: registered rewards that are differentiable (``steer.rewards``)
DIFFERENTIABLE_REWARDS = ("clip", "hf_clip", "aesthetic", "shapes_clip", "imagereward")


def check_differentiable(method: str, reward) -> None:
    if not getattr(reward, "differentiable", False):
        name = getattr(reward, "name", type(reward).__name__)
        raise ValueError(f"{method} backpropagates the reward to the initial noise, but reward {name!r} is not differentiable. "
                         f"Use a differentiable reward (registered: {', '.join(DIFFERENTIABLE_REWARDS)}; a Reward with "
                         "differentiable=True), or a search method that only scores images (best_of_n, smc, dts).")


def noise_norm_log_density(eps: torch.Tensor) -> torch.Tensor:
    """``K(ε) = (d−1)·log‖ε‖ − ‖ε‖²/2`` per row (log-density of the norm of a d-dimensional standard normal, up to a constant)."""
    flat = eps.flatten(1)
    d = flat.shape[1]
    norm = flat.norm(dim=1)
    return (d - 1) * torch.log(norm) - norm**2 / 2


class NoiseOptimization(Method):
    """Shared loop of ReNO and DOODL: subclasses define the chain, its cost and the update rule."""

    name = "noise_optimization"

    def __init__(self, iters: int, **options):
        self.iters = validate.integer("iters", iters, 0)
        super().__init__(iters=self.iters, **options)

    # subclasses -----------------------------------------------------------
    def forward_nfe(self, S: int) -> int:
        """NFE of one forward chain per particle."""
        return S

    def backward_cost(self, S: int) -> tuple[int, int]:
        """(forward NFE recomputed during backward, backward NFE) per particle and iteration."""
        raise NotImplementedError

    def chain(self, problem: Problem, x: torch.Tensor, cond, grad: bool) -> torch.Tensor:
        """x₀ from the initial state (differentiable when ``grad``)."""
        raise NotImplementedError

    def update(self, eps: torch.Tensor, grad: torch.Tensor, state: dict) -> torch.Tensor:
        """The next iterate from the ascent direction ``grad`` (of the objective)."""
        raise NotImplementedError

    def objective(self, reward: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return reward

    # engine ---------------------------------------------------------------
    def _iterations(self, problem: Problem) -> int:
        S, rows = problem.num_steps, problem.num_prompts * problem.num_particles
        fwd = self.forward_nfe(S)
        re, back = self.backward_cost(S)
        iters = self.iters
        if problem.budget.nfe is not None:
            left = problem.budget.nfe - rows * fwd
            if left < 0:
                raise BudgetExceeded(f"{self.name}: max_nfe={problem.budget.nfe} is below one trajectory per particle ({rows} particles × "
                                     f"{fwd} NFE = {rows * fwd}): raise max_nfe, or use fewer particles/steps")
            iters = min(iters, left // (rows * (fwd + re + back)))
        if problem.budget.reward_calls is not None:
            if problem.budget.reward_calls < rows:
                raise BudgetExceeded(f"{self.name}: max_reward_calls={problem.budget.reward_calls} is below one reward call per particle "
                                     f"({rows}): raise max_reward_calls")
            iters = min(iters, problem.budget.reward_calls // rows - 1)
        return iters

    def plan(self, problem: Problem) -> tuple[int, int]:
        S, rows = problem.num_steps, problem.num_prompts * problem.num_particles
        iters = self._iterations(problem)
        re, back = self.backward_cost(S)
        return rows * ((iters + 1) * self.forward_nfe(S) + iters * (re + back)), rows * (iters + 1)

    def __call__(self, problem: Problem):
        check_differentiable(self.name, problem.reward)
        return super().__call__(problem)

    def prepare(self, problem: Problem, trace) -> None:
        stateless_steps(problem, trace, keep_native=())

    def run(self, problem: Problem, meter, trace):
        ad = problem.adapter
        self.prepare(problem, trace)
        P, N, S = problem.num_prompts, problem.num_particles, problem.num_steps
        idx = problem.prompt_index()
        cond = problem.cond.select(idx)
        prompts = [problem.cond.prompts[i] for i in idx.tolist()]
        iters = self._iterations(problem)
        re, back = self.backward_cost(S)
        shape = ad.latent_shape(problem.height, problem.width)
        eps = torch.stack([torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in problem.generators]).to(ad.device)
        rows = eps.shape[0]
        best_r = torch.full((rows,), -math.inf, dtype=torch.float64)
        best_x = None
        state: dict = {}
        backward_nfe = grad_calls = 0
        for it in range(iters + 1):
            last = it == iters
            if last:
                with torch.no_grad():
                    x0 = self.chain(problem, ad.scale_initial_noise(eps.to(ad.dtype)), cond, grad=False)
                r = score(problem, meter, trace, x0, idx)
            else:
                e = eps.detach().requires_grad_(True)
                with torch.enable_grad():
                    x0 = self.chain(problem, ad.scale_initial_noise(e.to(ad.dtype)), cond, grad=True)
                    images = ad.decode(x0)
                    rt = problem.reward(images, prompts)
                    obj = self.objective(rt.float().reshape(-1), e)
                    (g,) = torch.autograd.grad(obj.sum(), e)
                grad_calls += rows
                backward_nfe += rows * back
                ad.counters.nfe += rows * back
                r = rt.detach().double().cpu().reshape(-1)
                r = torch.where(torch.isfinite(r), r, torch.full_like(r, -math.inf))
                x0 = x0.detach()
            better = r > best_r
            if best_x is None:
                best_x = x0.clone()
            best_x[better.to(best_x.device)] = x0[better.to(x0.device)]
            best_r = torch.where(better, r, best_r)
            trace.steps.append({"step": it, "rewards": r.view(P, N).tolist(), "best": best_r.view(P, N).tolist()})
            if not last:
                eps = self.update(eps.detach(), g.detach(), state)
        trace.backward_nfe = backward_nfe
        trace.reward_grad_calls = grad_calls
        final = best_r.view(P, N)
        return best_x, final, final.argmax(1).tolist()


class ReNO(NoiseOptimization):
    """ReNO.

    Options: ``iters`` (gradient iterations; 50 in the paper), ``lr`` (5), ``momentum`` (0.9, Nesterov),
    ``clip`` (per-particle gradient-norm clip, 0.1), ``reg`` (weight of the noise-norm regulariser K, 0.01),
    ``backprop_steps`` (K: backward through the last K steps only; default all), ``checkpoint`` (recompute each
    step's activations in backward instead of storing them; default True).
    """

    name = "reno"

    def __init__(self, iters: int = 50, lr: float = 5.0, momentum: float = 0.9, clip: float = 0.1, reg: float = 0.01,
                 backprop_steps: int | None = None, checkpoint: bool = True):
        lr = validate.real("lr", lr, 0.0)
        momentum = validate.real("momentum", momentum, 0.0, 1.0)
        clip = validate.real("clip", clip, 0.0)
        reg = validate.real("reg", reg, 0.0)
        if backprop_steps is not None:
            backprop_steps = validate.integer("backprop_steps", backprop_steps, 1)
        if not isinstance(checkpoint, bool):
            raise TypeError(f"checkpoint must be True or False, got {checkpoint!r}")
        super().__init__(iters, lr=lr, momentum=momentum, clip=clip, reg=reg, backprop_steps=backprop_steps, checkpoint=checkpoint)
        self.lr, self.momentum, self.clip, self.reg = lr, momentum, clip, reg
        self.backprop_steps, self.use_checkpoint = backprop_steps, checkpoint

    def _k(self, S: int) -> int:
        return S if self.backprop_steps is None else min(S, self.backprop_steps)

    def backward_cost(self, S: int) -> tuple[int, int]:
        k = self._k(S)
        return (k if self.use_checkpoint else 0), 2 * k

    def objective(self, reward: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return reward + self.reg * noise_norm_log_density(eps)

    def chain(self, problem: Problem, x: torch.Tensor, cond, grad: bool) -> torch.Tensor:
        ad, S = problem.adapter, problem.num_steps
        k = self._k(S)

        def step(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def run(z: torch.Tensor) -> torch.Tensor:
                ad.counters.nfe += z.shape[0]  # counted before the call, so checkpoint's recomputation counts too
                return ad.transition(z, i, ad.predict(z, i, cond), None, 0.0).prev_sample

            return run

        if not grad:
            for i in range(S):
                x = step(i)(x)
            return x
        x_in = x
        with torch.no_grad():
            z = x.detach()
            for i in range(S - k):
                z = step(i)(z)
            coef = _affine_coefficient(ad, x, range(S - k)) if S > k else 1.0
        x = z + coef * (x_in - x_in.detach()) if S > k else x_in  # truncated: straight-through with the steps' affine part
        for i in range(S - k, S):
            x = checkpoint(step(i), x, use_reentrant=False) if self.use_checkpoint else step(i)(x)
        return x

    def update(self, eps: torch.Tensor, grad: torch.Tensor, state: dict) -> torch.Tensor:
        flat = grad.flatten(1)
        norm = flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g = (flat * (self.clip / norm).clamp(max=1.0)).view_as(grad)  # ascent direction, clipped per particle
        buf = state.get("momentum")
        buf = g if buf is None else self.momentum * buf + g
        state["momentum"] = buf
        return eps + self.lr * (g + self.momentum * buf)  # Nesterov


def _affine_coefficient(adapter, x: torch.Tensor, steps) -> float:
    """Product over ``steps`` of each transition's coefficient on its input state (model output held at zero)."""
    c = 1.0
    probe = torch.ones_like(x[:1])
    zero = torch.zeros_like(x[:1])
    for i in steps:
        c *= float((adapter.transition(probe, i, zero, None, 0.0).prev_sample - adapter.transition(zero, i, zero, None, 0.0).prev_sample).mean())
    return c
