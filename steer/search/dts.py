"""Diffusion Tree Sampling (DTS) and its greedy variant Diffusion Tree Search (DTS*), after Jain et al. 2025.

The tree's nodes are partially denoised states at the *branching steps* ``interval, 2·interval, ... < S``
of the schedule; the root stands for the initial-noise distribution (a root expansion draws fresh noise and
runs it to the first branching step), and the leaves are clean samples x₀.
Each iteration, per prompt:

1. **selection** from the root: at a node with fewer than ``children`` children (``roots`` at the root)
   expand it; otherwise move to a child drawn ∝ exp(λ·v̂(child)) (DTS) or to the best child (DTS*);
2. **expansion**: a new child by the model's *stochastic* transition from the node's state (fresh initial
   noise at the root), then
3. **rollout** to x₀ by the same stochastic sampler; the rollout's states at later branching steps join the
   tree as a chain (so later iterations can branch from them without recomputing the prefix);
4. **backup** of the leaf's reward along the path with the soft Bellman operator
   ``v = (1/λ)·log mean_c exp(λ·v_c)`` (DTS) or ``v = max_c v_c`` (DTS*): :func:`backup_value`.

Anytime: the search stops per prompt when the next expansion would exceed the NFE budget (``nfe`` per
prompt; else ``max_nfe`` of the call split over prompts; else ``num_particles × steps``, best-of-N's cost) or
the reward-call budget; it returns each prompt's ``num_particles`` best leaves (the best one selected; with
fewer leaves than particles the last rows repeat the best leaf).

Compute: NFE are counted step by step, so shared prefixes are counted once; an expansion at a node after
``k`` steps costs ``S − k`` NFE and one reward call (the leaf). Memory is bounded: one latent per node, at
most ``children`` children per branching node (a full last-level node whose drawn child is a leaf gets one
more leaf), so a prompt keeps at most ``B / interval + roots`` branching states plus one x₀ per leaf, and at
most ``B / (S − last branching step)`` leaves (``B`` its NFE budget).

Transitions must be stochastic (``eta > 0``) and stateless: the pipeline's scheduler when it is a single-step
one (DDIM, DDPM, Euler (ancestral), flow Euler, LCM, TCD: any stored state can be stepped), else the
DDIM(η) / flow-SDE fallback on its timesteps (multistep schedulers keep per-trajectory history that a batch
rebuilt from stored states would not have).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import validate
from .base import Method, Problem
from .trace import BudgetExceeded

#: schedulers whose ``step`` depends only on (state, step index): any stored state can be stepped natively
STATELESS_SCHEDULERS = ("DDIMScheduler", "DDIMParallelScheduler", "DDPMScheduler", "DDPMParallelScheduler", "EulerDiscreteScheduler",
                        "EulerAncestralDiscreteScheduler", "FlowMatchEulerDiscreteScheduler", "LCMScheduler", "TCDScheduler")


def stateless_steps(problem: Problem, trace, keep_native: Sequence[str] = STATELESS_SCHEDULERS) -> str:
    """Make the adapter step without per-trajectory scheduler history for the rest of this call.

    A native scheduler named in ``keep_native`` is kept; any other switches to the adapter's DDIM(η) /
    flow-SDE fallback on the same timesteps (the schedule is rebuilt for it). Returns and records the sampler.
    """
    ad = problem.adapter
    sched = getattr(ad.pipe, "scheduler", None)
    if ad.native and sched is not None and type(sched).__name__ not in keep_native:
        n = getattr(ad._stepper.scheduler, "num_inference_steps", None) or ad.num_steps
        ad.native = False
        kind = "flow SDE/Euler step" if "Flow" in type(sched).__name__ else f"DDIM(eta={ad.eta:g})"
        ad.sampler = f"stateless fallback: {kind} on {type(sched).__name__}'s timesteps"
        ad.set_schedule(n, height=problem.height, width=problem.width)
    trace.sampler = ad.sampler
    return ad.sampler


def backup_value(values: Sequence[float], lam: float, greedy: bool = False) -> float:
    """A node's value from its children's: ``max`` (DTS*) or the soft Bellman ``(1/λ)·log mean exp(λ·v)`` (DTS)."""
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("a node without children has no backed-up value")
    if greedy:
        return float(v.max())
    finite = torch.isfinite(v)
    if not finite.any():
        return -math.inf
    return float((torch.logsumexp(lam * v, 0) - math.log(v.numel())) / lam)


def select_child(values: Sequence[float], lam: float, greedy: bool, generator: torch.Generator) -> int:
    """Index of the child to descend to: argmax (DTS*) or a draw ∝ exp(λ·v) (DTS)."""
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    if greedy or not torch.isfinite(v).any():
        return int(v.argmax())
    p = torch.softmax(lam * v, 0)
    return int(torch.multinomial(p, 1, generator=generator))


@dataclass
class Node:
    """A tree node: the state after ``step`` completed steps (``None`` for the virtual root), or a leaf's x₀."""

    step: int
    state: torch.Tensor | None = None
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    value: float = -math.inf
    visits: int = 0
    leaf: bool = False


class DTS(Method):
    """Diffusion Tree Sampling.

    Options: ``lam`` (λ > 0, inverse temperature on the reward's scale: selection ∝ exp(λ·v̂) and the
    soft backup), ``children`` (children per branching node, 2), ``roots`` (initial noises, 4; ``None``: as
    ``children``; defaults chosen on held-out shapes prompts), ``interval`` (steps between branching levels; default S/5), ``nfe`` (NFE budget per prompt;
    default: ``max_nfe`` split over prompts, else ``num_particles × steps``).
    """

    name = "dts"
    greedy = False
    resamples = True  # the engine's default eta is the adapter's stochastic one

    def __init__(self, lam: float = 1.0, children: int = 2, roots: int | None = 4, interval: int | None = None, nfe: int | None = None):
        lam = validate.real("lam", lam)
        if not lam > 0:
            raise ValueError(f"lam must be > 0 (the inverse temperature of selection and of the soft backup), got {lam:g}: "
                             "use a small positive value (e.g. 0.1) for nearly uniform selection, or method='dts_star' for greedy search")
        children = validate.integer("children", children, 1)
        roots = children if roots is None else validate.integer("roots", roots, 1)
        if interval is not None:
            interval = validate.integer("interval", interval, 1)
        if nfe is not None:
            nfe = validate.integer("nfe", nfe, 1)
        super().__init__(lam=lam, children=children, roots=roots, interval=interval, nfe=nfe)
        self.lam, self.children, self.roots, self.interval, self.nfe = lam, children, roots, interval, nfe

    # ------------------------------------------------------------------ budget
    def levels(self, num_steps: int) -> list[int]:
        """Branching steps (completed steps of the nodes of each level; ``[0]`` when ``interval >= S``: only initial noises)."""
        interval = self.interval if self.interval is not None else max(1, round(num_steps / 5))
        return list(range(interval, num_steps, interval)) or [0]

    def prompt_budget(self, problem: Problem) -> int:
        S, P = problem.num_steps, problem.num_prompts
        if self.nfe is not None:
            b = self.nfe
        elif problem.budget.nfe is not None:
            b = problem.budget.nfe // P
        else:
            b = problem.num_particles * S
        if b < S:
            raise BudgetExceeded(f"{self.name}: an NFE budget of {b} per prompt is below one trajectory ({S} steps = {S} NFE): "
                                 "raise max_nfe / nfe or lower num_inference_steps")
        return b

    def plan(self, problem: Problem) -> tuple[int, int]:
        b = self.prompt_budget(problem)
        cheapest = problem.num_steps - self.levels(problem.num_steps)[-1]
        calls = problem.num_prompts * (1 + (b - problem.num_steps) // cheapest)  # at most one leaf per cheapest expansion
        if problem.budget.reward_calls is not None:
            if problem.budget.reward_calls < problem.num_prompts:
                raise BudgetExceeded(f"{self.name}: max_reward_calls={problem.budget.reward_calls} is below one scored leaf per prompt "
                                     f"({problem.num_prompts}): raise max_reward_calls")
            calls = min(calls, problem.budget.reward_calls)
        return problem.num_prompts * b, calls

    def __call__(self, problem: Problem):
        if not problem.adapter.stochastic:
            raise ValueError(f"{self.name} expands nodes with the model's stochastic transition, but the sampler is deterministic (eta=0): "
                             "every child of a node would be the same state. Pass eta > 0 (e.g. eta=1.0 for DDIM, eta=0.5 for flow models).")
        return super().__call__(problem)

    # ------------------------------------------------------------------ search
    def _select(self, root: Node, gen: torch.Generator) -> Node:
        """The node to expand (root or a branching-level node with room for a child)."""
        node = root
        while True:
            cap = self.roots if node is root else self.children
            if len(node.children) < cap:
                return node
            kids = node.children
            node = kids[select_child([c.value for c in kids], self.lam, self.greedy, gen)]
            if node.leaf:  # a full last-level node whose children are leaves: never happens (cap), kept for safety
                return node.parent

    def run(self, problem: Problem, meter, trace):
        from .base import score

        ad = problem.adapter
        stateless_steps(problem, trace)
        P, N, S = problem.num_prompts, problem.num_particles, problem.num_steps
        lv = self.levels(S)
        budget = self.prompt_budget(problem)
        calls_left = problem.budget.reward_calls
        cond_all = problem.cond
        gens = [problem.generators[p * N] for p in range(P)]  # initial and step noise of prompt p's tree
        sel_gens = problem.resample_generators
        roots = [Node(step=-1) for _ in range(P)]
        spent = [0] * P
        leaves: list[list[Node]] = [[] for _ in range(P)]
        active = list(range(P))
        it = 0
        while active:
            # selection (per prompt), stopping prompts whose next expansion does not fit
            picks: dict[int, Node] = {}
            for p in list(active):
                node = self._select(roots[p], sel_gens[p])
                cost = S - max(node.step, 0)
                if spent[p] + cost > budget or (calls_left is not None and calls_left < 1):
                    active.remove(p)
                    continue
                picks[p] = node
                spent[p] += cost
                if calls_left is not None:
                    calls_left -= 1
            if not picks:
                break
            ps = list(picks)
            # expansion + rollout, batched over prompts: prompt p joins at its node's step
            start = {p: max(picks[p].step, 0) for p in ps}
            x: dict[int, torch.Tensor] = {}
            for p in ps:
                if picks[p].step < 0:
                    x[p] = ad.initial_noise([gens[p]], problem.height, problem.width)[0]
                else:
                    x[p] = picks[p].state
            parent = dict(picks)
            if 0 in lv:  # new initial noises are level-0 nodes
                for p in ps:
                    if picks[p].step < 0:
                        parent[p] = self._add(parent[p], Node(step=0, state=x[p]))
            x0s: dict[int, torch.Tensor] = {}
            for i in range(min(start.values()), S):
                rows = [p for p in ps if start[p] <= i]
                xb = torch.stack([x[p] for p in rows])
                with torch.no_grad():
                    out = ad.step(xb, i, cond_all.select(rows), [gens[p] for p in rows])
                for k, p in enumerate(rows):
                    x[p] = out.prev_sample[k]
                    if i + 1 in lv:
                        parent[p] = self._add(parent[p], Node(step=i + 1, state=x[p]))
            for p in ps:
                x0s[p] = x[p]
            # leaves: reward of each new x₀, then the soft-Bellman backup along the path
            r = score(problem, meter, trace, torch.stack([x0s[p] for p in ps]), torch.tensor(ps))
            row = {"step": it, "expanded_at": {}, "rewards": {}}
            for k, p in enumerate(ps):
                leaf = self._add(parent[p], Node(step=S, state=x0s[p], value=float(r[k]), leaf=True))
                leaves[p].append(leaf)
                self._backup(leaf)
                row["expanded_at"][p], row["rewards"][p] = start[p] if picks[p].step >= 0 else -1, float(r[k])
            trace.steps.append(row)
            it += 1
        # the best leaves per prompt
        out_x, out_r, selected = [], torch.full((P, N), -math.inf, dtype=torch.float64), []
        for p in range(P):
            ranked = sorted(leaves[p], key=lambda n: -n.value)
            for k in range(N):
                leaf = ranked[min(k, len(ranked) - 1)]
                out_x.append(leaf.state)
                out_r[p, k] = leaf.value
            selected.append(0)
        trace.steps.append({"step": it, "leaves": [len(lp) for lp in leaves], "nfe_per_prompt": spent,
                            "tree_nodes": [_count(r) - 1 for r in roots], "root_value": [r.value for r in roots]})
        return torch.stack(out_x), out_r, selected

    @staticmethod
    def _add(parent: Node, child: Node) -> Node:
        child.parent = parent
        parent.children.append(child)
        return child

    def _backup(self, leaf: Node) -> None:
        leaf.visits += 1
        node = leaf.parent
        while node is not None:
            node.visits += 1
            node.value = backup_value([c.value for c in node.children], self.lam, self.greedy)
            node = node.parent


def _count(node: Node) -> int:
    return 1 + sum(_count(c) for c in node.children)


class DTSStar(DTS):
    """Diffusion Tree Search (DTS*): DTS with greedy selection and max backups (same options)."""

    name = "dts_star"
    greedy = True
