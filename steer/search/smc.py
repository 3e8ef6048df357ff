"""Sequential Monte Carlo with Feynman-Kac potentials (FK steering, Singhal et al. 2025).

Particles move with the model's stochastic transition. At *potential steps* (every
``interval`` steps inside the ``window``) each particle's x̂₀ is decoded and scored, its
log-weight is multiplied by the potential G_t (below), and each prompt's particles are resampled
when their ESS falls below ``ess_threshold · N``. At the end the weights are corrected so the
target is ∝ p(x₀)·exp(λ·r(x₀)) whatever potential was used:

========== ==============================================
potential   log G_t
========== ==============================================
immediate   λ·r_t
diff        λ·(r_t − r_{t'}) (t' the previous potential step, r = 0 before the first)
max         λ·max_{s≤t} r_s
sum         λ·Σ_{s≤t} r_s
========== ==============================================
"""

from __future__ import annotations

import math

import torch

from .. import validate
from ..rewards.base import Reward
from .base import Method, Problem, check_reward_option, init_particles, progress, reorder, reward_label, run_steps, score
from .resampling import ess, get_resampler, normalize
from .tempering import AUTO, auto_lambda, check_lam

POTENTIALS = ("immediate", "diff", "max", "sum")


def potential_steps(num_steps: int, interval: int, window: tuple[float, float]) -> list[int]:
    """Steps (1-based count of completed steps) at which rewards are taken, strictly before the last step."""
    lo, hi = window
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"window must satisfy 0 <= start <= end <= 1 (fractions of the steps), got {window}")
    validate.integer("interval", interval, 1)
    return [k for k in range(interval, num_steps, interval) if lo * num_steps <= k <= hi * num_steps]


class SMC(Method):
    """FK-steering SMC.

    Options: ``potential`` (max | diff | sum | immediate), ``lam`` (λ, inverse temperature on
    the reward's scale, or ``"auto"``: :mod:`steer.search.tempering`), ``interval`` (steps between
    potentials; default S/5), ``window`` ((start, end) fractions of the steps), ``ess_threshold``
    (resample when ESS < this·N; 1.0 resamples at every potential step), ``ess_target`` (with
    ``lam="auto"``: the ESS, as a fraction of N, each step's λ is chosen to reach, after which the
    particles are resampled; default 0.8, chosen on held-out shapes prompts), ``resampler``
    (systematic | stratified | multinomial | residual), ``select`` (best: highest final reward;
    sample: draw by the final weights, with the last λ reached when ``lam="auto"``),
    ``potential_reward`` (a reward, e.g. a noise-aware one, for the intermediate potentials; it gets
    the noise level of each x̂₀; the final particles are still scored by the call's reward; its
    calls count as ``trace.verifier_calls``).
    """

    name = "smc"
    resamples = True

    def __init__(self, potential: str = "max", lam: float | str = AUTO, interval: int | None = None, window: tuple[float, float] = (0.0, 1.0),
                 ess_threshold: float = 0.5, resampler: str = "systematic", select: str = "best", ess_target: float = 0.8,
                 potential_reward: Reward | None = None):
        if potential not in POTENTIALS:
            raise ValueError(f"unknown potential {potential!r}; choose one of {', '.join(POTENTIALS)}")
        if select not in ("best", "sample"):
            raise ValueError(f"select must be 'best' or 'sample', got {select!r}")
        ess_threshold = validate.real("ess_threshold", ess_threshold, 0.0, 1.0)
        ess_target = validate.real("ess_target", ess_target, 0.0, 1.0)
        lam = check_lam(lam)
        if interval is not None:
            interval = validate.integer("interval", interval, 1)
        get_resampler(resampler)
        check_reward_option("potential_reward", potential_reward)
        super().__init__(potential=potential, lam=lam, interval=interval, window=tuple(window), ess_threshold=ess_threshold, resampler=resampler, select=select,
                         ess_target=ess_target, potential_reward=reward_label(potential_reward))
        self.potential_reward = potential_reward
        self.potential, self.lam, self.interval, self.window, self.ess_target = potential, lam, interval, tuple(window), ess_target
        self.ess_threshold, self.resampler, self.select = ess_threshold, get_resampler(resampler), select

    def extra_rewards(self) -> list[Reward]:
        return [self.potential_reward] if self.potential_reward is not None else []

    def _steps(self, problem: Problem) -> list[int]:
        interval = self.interval if self.interval is not None else max(1, round(problem.num_steps / 5))
        return potential_steps(problem.num_steps, interval, self.window)

    def plan(self, problem: Problem) -> tuple[int, int]:
        n = problem.num_prompts * problem.num_particles
        return n * problem.num_steps, n * (len(self._steps(problem)) + 1)

    def _potential(self, r: torch.Tensor, state: dict) -> torch.Tensor:
        """log G_t / λ."""
        if self.potential == "immediate":
            return r
        if self.potential == "diff":
            return r - state["prev"]
        if self.potential == "max":
            return torch.maximum(state["max"], r)
        return state["sum"] + r

    def _lambdas(self, logw: torch.Tensor, phi: torch.Tensor, n: int) -> tuple[torch.Tensor, list[bool]]:
        """λ per prompt for this potential step (the fixed λ, or the adaptive one), and where the ESS target set it."""
        if self.lam != AUTO:
            return torch.full((logw.shape[0],), float(self.lam), dtype=torch.float64), [False] * logw.shape[0]
        picks = [auto_lambda(logw[p], phi[p], self.ess_target * n) for p in range(logw.shape[0])]
        return torch.tensor([lam for lam, _ in picks], dtype=torch.float64), [binding for _, binding in picks]

    def resample(self, problem: Problem, logw: torch.Tensor, trace_row: dict, force: list[bool] | None = None) -> torch.Tensor:
        """Per-prompt adaptive resampling (also where ``force``); returns flat ancestor indices (identity where not resampled)."""
        P, N = problem.num_prompts, problem.num_particles
        anc = torch.arange(P * N)
        for p in range(P):
            e = ess(logw[p])
            trace_row["ess"].append(e)
            do = e < self.ess_threshold * N or (self.ess_threshold >= 1.0) or bool(force and force[p])
            trace_row["resampled"].append(bool(do))
            if do:
                a = self.resampler(logw[p], problem.resample_generators[p])
                anc[p * N : (p + 1) * N] = a + p * N
                trace_row["ancestors"].append(a.tolist())
            else:
                trace_row["ancestors"].append(None)
        return anc

    def run(self, problem: Problem, meter, trace):
        P, N, S = problem.num_prompts, problem.num_particles, problem.num_steps
        idx, cond, x = init_particles(problem)
        gens = problem.generators
        logw = torch.zeros(P, N, dtype=torch.float64)
        applied = torch.zeros(P, N, dtype=torch.float64)  # Σ log G along each lineage, undone at the end
        state = {k: torch.zeros(P * N, dtype=torch.float64) for k in ("prev", "sum")}
        state["max"] = torch.full((P * N,), -math.inf, dtype=torch.float64)
        lam_last = torch.full((P,), 0.0 if self.lam == AUTO else float(self.lam), dtype=torch.float64)
        done = 0
        with progress(problem, S) as bar:
            for k in self._steps(problem):
                x, x0 = run_steps(problem, x, done, k, cond, gens, bar)
                done = k
                r = score(problem, meter, trace, x0, idx, reward=self.potential_reward, noise_level=problem.adapter.noise_level(k - 1),
                          verifier=self.potential_reward is not None)
                phi = self._potential(r, state)
                lam, binding = self._lambdas(logw, phi.view(P, N), N)
                lam_last = lam
                log_g = lam.repeat_interleave(N) * phi
                finite = torch.isfinite(r)
                inc = torch.where(finite, log_g, torch.full_like(log_g, -math.inf))  # non-finite reward: zero weight
                logw = logw + inc.view(P, N)
                applied = applied + torch.where(finite, inc, torch.zeros_like(inc)).view(P, N)
                state["prev"] = torch.where(finite, r, state["prev"])
                state["max"] = torch.where(finite, torch.maximum(state["max"], r), state["max"])
                state["sum"] = torch.where(finite, state["sum"] + r, state["sum"])
                row = {"step": k, "rewards": r.view(P, N).tolist(), "lam": lam.tolist(), "ess": [], "resampled": [], "ancestors": []}
                anc = self.resample(problem, logw, row, force=binding)
                trace.steps.append(row)
                moved = anc != torch.arange(P * N)
                if moved.any():
                    x = reorder(problem, x, anc)
                    applied = applied.view(-1)[anc].view(P, N)
                    for key in state:
                        state[key] = state[key][anc]
                for p in range(P):  # weights are uniform after resampling, even when no particle moved
                    if row["resampled"][p]:
                        logw[p] = 0.0
            x, _ = run_steps(problem, x, done, S, cond, gens, bar)
        r = score(problem, meter, trace, x, idx, keep=True).view(P, N)
        final_logw = logw + lam_last.view(P, 1) * r - applied
        if self.select == "best":
            selected = r.argmax(1).tolist()
        else:
            selected = [int(torch.multinomial(normalize(final_logw[p]), 1, generator=problem.resample_generators[p])) for p in range(P)]
        return x, r, selected
