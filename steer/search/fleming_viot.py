"""Fleming-Viot birth–death resampling (VASR-style).

At every potential step inside the window each particle gets mass ∝ w·exp(λ·r_t) from its
current x̂₀ reward; low-mass particles die and high-mass ones split, by systematic
resampling of the masses, at every such step (no ESS gate); survivors keep their slot (and
their generator), so only dead particles are overwritten. Weights are uniform afterwards.
There is no final correction: the final pick is the particle with the highest final reward.
"""

from __future__ import annotations

import torch

from .. import validate
from ..rewards.base import Reward
from .base import Method, Problem, check_reward_option, init_particles, progress, reorder, reward_label, run_steps, score
from .resampling import ess, get_resampler
from .smc import potential_steps
from .tempering import AUTO, auto_lambda, check_lam


def birth_death(ancestors: torch.Tensor) -> torch.Tensor:
    """Reorder resampled ancestors so every surviving particle stays in its own slot.

    ``ancestors`` is a multiset of ``N`` indices; the result holds the same multiset with
    ``out[i] == i`` for every ``i`` that survives.
    """
    n = ancestors.numel()
    counts = torch.bincount(ancestors, minlength=n)
    out = torch.full((n,), -1, dtype=torch.long)
    alive = counts > 0
    out[alive] = torch.arange(n)[alive]
    counts[alive] -= 1
    births = torch.repeat_interleave(torch.arange(n), counts)
    out[~alive] = births
    return out


class FlemingViot(Method):
    """Options: ``lam`` (λ, or ``"auto"``: at each step the largest λ whose masses keep an ESS of ``ess_target·N``),
    ``interval`` (default S/5), ``window`` ((start, end) fractions), ``resampler`` (default systematic),
    ``ess_target`` (with ``lam="auto"``), ``potential_reward`` (a reward, e.g. noise-aware, for the
    intermediate masses; the final pick still uses the call's reward)."""

    name = "fleming_viot"
    resamples = True

    def __init__(self, lam: float | str = AUTO, interval: int | None = None, window: tuple[float, float] = (0.0, 1.0),
                 resampler: str = "systematic", ess_target: float = 0.8, potential_reward: Reward | None = None):
        get_resampler(resampler)
        lam = check_lam(lam)
        if interval is not None:
            interval = validate.integer("interval", interval, 1)
        ess_target = validate.real("ess_target", ess_target, 0.0, 1.0)
        check_reward_option("potential_reward", potential_reward)
        super().__init__(lam=lam, interval=interval, window=tuple(window), resampler=resampler, ess_target=ess_target,
                         potential_reward=reward_label(potential_reward))
        self.potential_reward = potential_reward
        self.lam, self.interval, self.window, self.resampler = lam, interval, tuple(window), get_resampler(resampler)
        self.ess_target = ess_target

    def extra_rewards(self) -> list[Reward]:
        return [self.potential_reward] if self.potential_reward is not None else []

    def _steps(self, problem: Problem) -> list[int]:
        interval = self.interval if self.interval is not None else max(1, round(problem.num_steps / 5))
        return potential_steps(problem.num_steps, interval, self.window)

    def plan(self, problem: Problem) -> tuple[int, int]:
        n = problem.num_prompts * problem.num_particles
        return n * problem.num_steps, n * (len(self._steps(problem)) + 1)

    def run(self, problem: Problem, meter, trace):
        P, N, S = problem.num_prompts, problem.num_particles, problem.num_steps
        idx, cond, x = init_particles(problem)
        gens = problem.generators
        done = 0
        with progress(problem, S) as bar:
            for k in self._steps(problem):
                x, x0 = run_steps(problem, x, done, k, cond, gens, bar)
                done = k
                r = score(problem, meter, trace, x0, idx, reward=self.potential_reward, noise_level=problem.adapter.noise_level(k - 1),
                          verifier=self.potential_reward is not None).view(P, N)
                anc = torch.arange(P * N)
                row = {"step": k, "rewards": r.tolist(), "lam": [], "ess": [], "resampled": [], "ancestors": []}
                for p in range(P):  # weights are uniform after every birth–death step
                    lam = auto_lambda(torch.zeros(N), r[p], self.ess_target * N)[0] if self.lam == AUTO else float(self.lam)
                    mass = torch.where(torch.isfinite(r[p]), lam * r[p], torch.full_like(r[p], -torch.inf))
                    row["lam"].append(lam)
                    a = birth_death(self.resampler(mass, problem.resample_generators[p]))
                    anc[p * N : (p + 1) * N] = a + p * N
                    row["ess"].append(ess(mass))
                    row["resampled"].append(True)
                    row["ancestors"].append(a.tolist())
                trace.steps.append(row)
                x = reorder(problem, x, anc)
            x, _ = run_steps(problem, x, done, S, cond, gens, bar)
        r = score(problem, meter, trace, x, idx, keep=True).view(P, N)
        return x, r, r.argmax(1).tolist()
