"""What a steered call spent and did: compute meter, budget, and the trace returned to the user."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import torch


class BudgetExceeded(ValueError):
    """A method's planned or actual cost exceeds the budget."""


@dataclass
class Budget:
    """Caps on compute: ``nfe`` (particle-steps, all prompts together) and ``reward_calls`` (images scored, by the
    final reward and by verifiers together)."""

    nfe: int | None = None
    reward_calls: int | None = None

    def check(self, nfe: int, reward_calls: int, what: str = "this call") -> None:
        if self.nfe is not None and nfe > self.nfe:
            raise BudgetExceeded(f"{what} needs {nfe} NFE but the budget allows {self.nfe}: raise max_nfe or use fewer particles/steps")
        if self.reward_calls is not None and reward_calls > self.reward_calls:
            raise BudgetExceeded(
                f"{what} needs {reward_calls} reward calls but the budget allows {self.reward_calls}: "
                "raise max_reward_calls, resample less often, or use fewer particles"
            )


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@dataclass
class Trace:
    """Per-step record of a steered call plus the totals it spent.

    ``steps`` holds one dict per step where the method looked at rewards: ``step``,
    ``rewards`` (per prompt, per particle), ``ess`` (per prompt), ``resampled`` (per prompt),
    ``ancestors`` (per prompt, indices into that prompt's particles, or ``None``); pruning rows
    hold ``alive``, ``kept`` (per prompt, indices among the candidates alive before the checkpoint)
    and ``kept_particles`` (the same as original particle indices).

    Compute: ``nfe`` (denoiser calls per particle row), ``reward_calls`` (images scored by the
    call's reward), ``verifier_calls`` (images scored by a verifier or potential reward: pruning
    checkpoints, noise-aware SMC potentials), ``backward_nfe`` (noise optimisation: a backward pass
    through the denoiser counts as 2 NFE; included in ``nfe``), ``reward_grad_calls`` (reward evaluations
    backpropagated to the noise, not in ``reward_calls``), ``nfe_saved`` (pruning: NFE not spent against
    best-of-N with as many particles). A budget's ``reward_calls`` caps reward and verifier calls together.
    """

    method: str
    options: dict
    num_prompts: int
    num_particles: int
    num_steps: int
    steps: list[dict] = field(default_factory=list)
    final_rewards: list[list[float]] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    nfe: int = 0
    denoiser_rows: int = 0
    reward_calls: int = 0
    verifier_calls: int = 0
    decodes: int = 0
    seconds: float = 0.0
    reward_seconds: float = 0.0
    verifier_seconds: float = 0.0
    nfe_saved: int = 0  # pruning: denoiser NFE not spent against best-of-N with the same particles
    peak_memory_bytes: int = 0
    nonfinite_rewards: int = 0
    sampler: str = ""  # what the steps used: the pipeline's scheduler, or the stated fallback
    backward_nfe: int = 0  # noise optimisation: backward passes through the denoiser, 2 NFE each (included in nfe)
    reward_grad_calls: int = 0  # noise optimisation: reward evaluations backpropagated to the noise (apart from reward_calls)

    def to_dict(self) -> dict:
        return asdict(self)


class Meter:
    """Counts reward calls and time; reads the adapter's counters at the end."""

    def __init__(self, adapter, budget: Budget):
        self.adapter, self.budget = adapter, budget
        self.reward_calls = 0
        self.reward_seconds = 0.0
        self.verifier_calls = 0
        self.verifier_seconds = 0.0
        self.t0 = time.perf_counter()
        adapter.counters.reset()
        if adapter.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(adapter.device)

    def finish(self, trace: Trace) -> Trace:
        c = self.adapter.counters
        trace.nfe, trace.denoiser_rows, trace.decodes = c.nfe, c.denoiser_rows, c.decodes
        trace.reward_calls, trace.reward_seconds = self.reward_calls, round(self.reward_seconds, 4)
        trace.verifier_calls, trace.verifier_seconds = self.verifier_calls, round(self.verifier_seconds, 4)
        trace.seconds = round(time.perf_counter() - self.t0, 4)
        trace.peak_memory_bytes = _peak_memory_bytes(self.adapter.device)
        self.budget.check(trace.nfe, trace.reward_calls + trace.verifier_calls, "the call")
        return trace
