"""Noise-aware pruning (TTSnap, Yu et al. 2025): start many candidates, drop the weak ones early.

Every prompt starts ``N`` independent trajectories. At each checkpoint ``(step, keep)`` of the
schedule, the surviving candidates' x̂₀ (predicted at that step) are scored by the *verifier*
and each prompt keeps its ``ceil(keep · alive)`` best; the rest stop, so their remaining steps
are never computed. The survivors finish and the final pick is by the clean reward.

The verifier can be any reward: the clean reward itself on x̂₀ (``verifier=None``, the plain
baseline) or a noise-aware one trained for the model (``steer.train.noise_aware``), which is
what makes early checkpoints reliable. Cost per prompt: ``Σ_segments alive · steps`` NFE,
``Σ_checkpoints alive`` verifier calls and ``survivors`` final reward calls; the trace reports
them apart and the NFE saved against best-of-N with the same ``N``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import validate
from ..rewards.base import Reward
from .base import Method, Problem, check_reward_option, init_particles, progress, reorder, reward_label, run_steps, score
from .trace import BudgetExceeded

#: default schedule, chosen on held-out shapes prompts with the noise-aware verifier
#: (benchmarks/shapes_tune.py, results/shapes_tune_prune_sd.json; see the README)
#: (a step below 1 is a fraction of the steps: 0.16 is step 4 of 25, step 1 of a 4-step sampler)
DEFAULT_SCHEDULE: tuple[tuple[float, float], ...] = ((0.16, 0.125),)


def check_schedule(schedule) -> tuple[tuple[int, float], ...]:
    """A pruning schedule as ``((step, keep), ...)``: strictly increasing step numbers ≥ 1 (or fractions of the
    steps, all in (0, 1)) and keep fractions in (0, 1]."""
    try:
        items = [(s, f) for s, f in schedule]
    except (TypeError, ValueError):
        raise ValueError(f"schedule must be a list of (step, keep_fraction) pairs, e.g. [(3, 0.25), (8, 0.5)]; got {schedule!r}") from None
    if not items:
        raise ValueError("schedule is empty: give at least one (step, keep_fraction) pair, e.g. [(5, 0.5)] (or use best_of_n)")
    fractional = [isinstance(st, float) and 0 < st < 1 for st, _ in items]
    if any(fractional) and not all(fractional):
        raise ValueError("give schedule steps either all as fractions of the steps (0 < s < 1) or all as step numbers (1, 2, ...)")
    out, last = [], 0
    for step, frac in items:
        step = float(step) if all(fractional) else validate.integer("schedule step", step, 1)
        frac = float(frac)
        if not 0 < frac <= 1:
            raise ValueError(f"keep fraction {frac:g} at step {step} is outside (0, 1]: it is the share of each prompt's candidates kept")
        if step <= last:
            raise ValueError(f"schedule steps must increase strictly; got step {step} after step {last}")
        out.append((step, frac))
        last = step
    return tuple(out)


def resolve_schedule(schedule, num_steps: int) -> tuple[tuple[int, float], ...]:
    """Fractional steps (0 < s < 1) as step numbers for ``num_steps`` steps (rounded, at least 1, strictly increasing)."""
    out, last = [], 0
    for step, keep in schedule:
        if isinstance(step, float) and step < 1:
            step = max(last + 1, max(1, round(step * num_steps)))
        out.append((int(step), keep))
        last = int(step)
    return tuple(out)


def survivors(alive: int, keep: float) -> int:
    """Candidates kept of ``alive`` with keep fraction ``keep`` (at least one)."""
    return max(1, math.ceil(keep * alive - 1e-9))


def prune_plan(num_particles: int, num_steps: int, schedule: Sequence[tuple[int, float]]) -> tuple[int, int, int, list[int]]:
    """Per prompt: (denoiser NFE, verifier calls, final reward calls, alive count after each checkpoint)."""
    alive, done, nfe, calls, counts = num_particles, 0, 0, 0, []
    for step, keep in resolve_schedule(schedule, num_steps):
        if step >= num_steps:
            raise ValueError(f"checkpoint step {step} is out of range: with {num_steps} steps, prune at steps 1..{num_steps - 1}")
        nfe += alive * (step - done)
        calls += alive
        alive = survivors(alive, keep)
        counts.append(alive)
        done = step
    nfe += alive * (num_steps - done)
    return nfe, calls, alive, counts


class Prune(Method):
    """TTSnap-style pruning.

    Options: ``schedule`` (list of ``(step, keep_fraction)``: after ``step`` completed steps keep
    that share of each prompt's surviving candidates; default :data:`DEFAULT_SCHEDULE`),
    ``verifier`` (a :class:`~steer.rewards.Reward` or registered name scoring x̂₀ at the
    checkpoints; noise-aware rewards get the noise level; default: the call's reward).

    With ``return_all=True`` a call returns ``N`` rows per prompt: the survivors first, then the
    pruned candidates as black images with reward ``-inf`` (they were never finished).
    """

    name = "prune"

    def __init__(self, schedule: Sequence[tuple[int, float]] = DEFAULT_SCHEDULE, verifier: Reward | None = None):
        schedule = check_schedule(schedule)
        check_reward_option("verifier", verifier)
        super().__init__(schedule=[list(s) for s in schedule], verifier=reward_label(verifier))
        self.schedule, self.verifier = schedule, verifier

    def extra_rewards(self) -> list[Reward]:
        return [self.verifier] if self.verifier is not None else []

    def plan(self, problem: Problem) -> tuple[int, int]:
        nfe, calls, final, _ = prune_plan(problem.num_particles, problem.num_steps, self.schedule)
        return problem.num_prompts * nfe, problem.num_prompts * (calls + final)

    def __call__(self, problem: Problem):
        try:
            return super().__call__(problem)
        except BudgetExceeded as e:
            nfe, calls, final, counts = prune_plan(problem.num_particles, problem.num_steps, self.schedule)
            raise BudgetExceeded(f"{e}. The pruning plan per prompt: {problem.num_particles} candidates, alive after each checkpoint "
                                 f"{counts}, {nfe} NFE, {calls} verifier + {final} reward calls; loosen the budget, start fewer "
                                 "candidates, or keep fewer at the first checkpoint") from None

    def run(self, problem: Problem, meter, trace):
        P, N, S = problem.num_prompts, problem.num_particles, problem.num_steps
        idx, cond, x = init_particles(problem)
        gens = list(problem.generators)
        alive = N
        slots = torch.arange(N).repeat(P, 1)  # each survivor's particle index within its prompt
        done = 0
        with progress(problem, S) as bar:
            for step, keep in resolve_schedule(self.schedule, S):
                x, x0 = run_steps(problem, x, done, step, cond, gens, bar)
                done = step
                level = problem.adapter.noise_level(step - 1)
                r = score(problem, meter, trace, x0, idx, reward=self.verifier, noise_level=level, verifier=True).view(P, alive)
                k = survivors(alive, keep)
                top = torch.sort(r, dim=1, descending=True, stable=True).indices[:, :k]
                top = torch.sort(top, dim=1).values  # keep the surviving rows in their original order
                rows = (top + torch.arange(P).view(P, 1) * alive).reshape(-1)
                trace.steps.append({"step": step, "noise_level": level, "rewards": r.tolist(), "alive": alive, "kept": top.tolist(),
                                    "kept_particles": slots.gather(1, top).tolist()})
                x = reorder(problem, x, rows)
                idx, slots, alive = idx[rows], slots.gather(1, top), k
                cond = cond.select(rows)
                gens = [gens[i] for i in rows.tolist()]
            x, _ = run_steps(problem, x, done, S, cond, gens, bar)
        r = score(problem, meter, trace, x, idx, keep=True).view(P, alive)
        trace.nfe_saved = P * N * S - problem.adapter.counters.nfe
        # the engine returns rows by particle index: put the survivors in the first `alive` slots of each prompt
        full = torch.full((P, N), -math.inf, dtype=torch.float64)
        full[:, :alive] = r
        selected = r.argmax(1).tolist()
        return _pad(problem, x, alive), full, selected


def _pad(problem: Problem, x: torch.Tensor, alive: int) -> torch.Tensor:
    """``(P·alive, ...)`` survivors → ``(P·N, ...)`` rows (dead candidates as zeros), so row ``p·N + k`` is survivor ``k``."""
    P, N = problem.num_prompts, problem.num_particles
    if alive == N:
        return x
    out = x.new_zeros((P * N, *x.shape[1:]))
    src = torch.arange(P * alive)
    dst = (src // alive) * N + src % alive
    out[dst.to(x.device)] = x
    if problem.final_images is not None:
        imgs = problem.final_images
        full = imgs.new_zeros((P * N, *imgs.shape[1:]))
        full[dst.to(imgs.device)] = imgs
        problem.final_images = full
    return out
