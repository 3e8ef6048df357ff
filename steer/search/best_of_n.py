"""Best-of-N: sample N independent trajectories per prompt, keep the one the reward likes best."""

from __future__ import annotations

import torch

from .base import Method, Problem, init_particles, progress, run_steps, score


class BestOfN(Method):
    """Independent particles, scored once at the end. Cost: ``N·S`` NFE and ``N`` reward calls per prompt."""

    name = "best_of_n"

    def plan(self, problem: Problem) -> tuple[int, int]:
        n = problem.num_prompts * problem.num_particles
        return n * problem.num_steps, n

    def run(self, problem: Problem, meter, trace):
        idx, cond, x = init_particles(problem)
        with progress(problem, problem.num_steps) as bar:
            x, _ = run_steps(problem, x, 0, problem.num_steps, cond, problem.generators, bar)
        r = score(problem, meter, trace, x, idx, keep=True).view(problem.num_prompts, problem.num_particles)
        return x, r, r.argmax(1).tolist()
