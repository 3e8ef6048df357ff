"""What every search method gets: the particles' problem, and the shared helpers that score them."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..models.base import Conditioning, ModelAdapter
from ..rewards.base import Reward
from .trace import Budget, Meter, Trace


@dataclass
class Problem:
    """``P`` prompts × ``N`` particles, laid out prompt-major (particle ``k`` of prompt ``p`` is row ``p·N + k``).

    ``generators`` has one generator per row (initial noise and step noise); ``resample_generators``
    one per prompt (resampling draws), so the same seeds give the same images.
    """

    adapter: ModelAdapter
    reward: Reward
    cond: Conditioning  # one row per prompt
    num_particles: int
    generators: list[torch.Generator]
    resample_generators: list[torch.Generator]
    height: int | None = None
    width: int | None = None
    budget: Budget = field(default_factory=Budget)
    reward_batch: int = 64
    progress: Any = None  # callable(total) -> context manager with .update(), e.g. pipe.progress_bar
    final_images: torch.Tensor | None = None  # decoded final particles, kept by score(..., keep=True)

    @property
    def num_prompts(self) -> int:
        return len(self.cond)

    @property
    def num_steps(self) -> int:
        return self.adapter.num_steps

    def prompt_index(self) -> torch.Tensor:
        return torch.arange(self.num_prompts).repeat_interleave(self.num_particles)


class Method:
    """A search method: subclasses implement :meth:`run` and :meth:`plan`."""

    name: str = "method"
    resamples: bool = False  # needs a stochastic transition

    def __init__(self, **options):
        self.options = options

    def plan(self, problem: Problem) -> tuple[int, int]:
        """(NFE, reward-model calls: final and verifier calls together) the method will spend, for budget checks before any work."""
        raise NotImplementedError

    def extra_rewards(self) -> list[Reward]:
        """Rewards the method uses besides ``problem.reward`` (verifiers, potentials)."""
        return []

    def run(self, problem: Problem, meter: Meter, trace: Trace) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Return (final clean latents of all particles, their final rewards ``(P, N)``, selected particle per prompt)."""
        raise NotImplementedError

    def __call__(self, problem: Problem) -> tuple[torch.Tensor, Trace]:
        if self.resamples and not problem.adapter.stochastic:
            raise ValueError(
                f"{self.name} resamples particles, but the sampler is deterministic (eta=0): resampled copies would stay "
                "identical. Pass eta > 0 (e.g. eta=1.0 for DDIM, eta=0.5 for flow models)."
            )
        nfe, calls = self.plan(problem)
        problem.budget.check(nfe, calls, f"{self.name} with {problem.num_particles} particles × {problem.num_steps} steps × {problem.num_prompts} prompts")
        meter = Meter(problem.adapter, problem.budget)
        trace = Trace(self.name, dict(self.options), problem.num_prompts, problem.num_particles, problem.num_steps,
                      sampler=problem.adapter.sampler)
        check_rewards(problem, *self.extra_rewards())
        latents, final, selected = self.run(problem, meter, trace)
        trace.final_rewards = final.tolist()
        trace.selected = list(selected)
        meter.finish(trace)
        return latents, trace


class RewardError(ValueError):
    """A reward returned something other than one finite score per image."""


def _name(reward: Reward) -> str:
    return getattr(reward, "name", type(reward).__name__)


def _check_scores(reward: Reward, r, batch: int) -> torch.Tensor:
    name = _name(reward)
    if not isinstance(r, torch.Tensor):
        raise RewardError(f"reward {name!r} returned a {type(r).__name__}; a reward's score() must return a tensor of shape ({batch},), one score per image")
    if r.shape not in ((batch,), (batch, 1)):
        raise RewardError(f"reward {name!r} returned scores of shape {tuple(r.shape)} for {batch} images; expected ({batch},), one score per image")
    if not (r.dtype.is_floating_point or r.dtype in (torch.int32, torch.int64)):
        raise RewardError(f"reward {name!r} returned scores of dtype {r.dtype}; expected real numbers")
    return r.detach().double().cpu().reshape(-1)


def score(problem: Problem, meter: Meter, trace: Trace, latents: torch.Tensor, prompt_index: torch.Tensor, keep: bool = False,
          reward: Reward | None = None, noise_level: float = 0.0, verifier: bool = False) -> torch.Tensor:
    """Rewards of decoded clean-latent predictions (float64 on CPU; non-finite values become ``-inf``).

    ``reward`` (default ``problem.reward``) scores the images; a noise-aware one also gets
    ``noise_level``, the level of the state the x̂₀ was predicted from (0 for final images).
    ``verifier=True`` counts the calls as verifier calls (``trace.verifier_calls``) instead of
    reward calls. ``keep=True`` (the final scoring) stores the decoded images in
    ``problem.final_images`` so the returned images need no second decode. A reward that returns
    the wrong type or shape, or no finite score for any particle of a prompt, raises
    :class:`RewardError`; a non-finite score for some particles gives them zero weight, counts
    them in ``trace.nonfinite_rewards`` and warns.
    """
    reward = problem.reward if reward is None else reward
    out, kept = [], []
    prompts = [problem.cond.prompts[i] for i in prompt_index.tolist()]
    with torch.no_grad():
        for s in range(0, latents.shape[0], problem.reward_batch):
            images = problem.adapter.decode(latents[s : s + problem.reward_batch])
            t0 = time.perf_counter()
            r = reward(images, prompts[s : s + problem.reward_batch], noise_level=noise_level)
            if verifier:
                meter.verifier_seconds += time.perf_counter() - t0
                meter.verifier_calls += images.shape[0]
            else:
                meter.reward_seconds += time.perf_counter() - t0
                meter.reward_calls += images.shape[0]
            out.append(_check_scores(reward, r, images.shape[0]))
            if keep:
                kept.append(images)
    if keep:
        problem.final_images = torch.cat(kept)
    r = torch.cat(out)
    bad = ~torch.isfinite(r)
    if bad.any():
        name = _name(reward)
        for p in prompt_index[bad].unique().tolist():
            if bad[prompt_index == p].all():
                raise RewardError(
                    f"reward {name!r} returned NaN or ±inf for every particle of prompt {p} ({problem.cond.prompts[p]!r}), "
                    "so no image can be chosen. Check the reward on images in [0, 1] of shape (B, 3, H, W)."
                )
        trace.nonfinite_rewards += int(bad.sum())
        warnings.warn(f"reward {name!r} returned NaN or ±inf for {int(bad.sum())} of {len(r)} particles: they get zero weight "
                      "(counted in trace.nonfinite_rewards)", RuntimeWarning, stacklevel=3)
        r = r.masked_fill(bad, -math.inf)
    return r


def check_reward_option(name: str, reward) -> None:
    """A method option that takes a reward: a :class:`Reward` or ``None`` (names are resolved by ``steer.wrap``)."""
    if reward is not None and not isinstance(reward, Reward):
        raise TypeError(f"{name} must be a steer.rewards.Reward or a registered reward name, got {type(reward).__name__}")


def reward_label(reward) -> str | None:
    """How a reward-valued option appears in ``trace.options``."""
    return None if reward is None else _name(reward)


def check_rewards(problem: Problem, *rewards: Reward | None) -> None:
    """Noise-aware rewards must have been trained for this pipeline and image size (they carry a check)."""
    for r in (problem.reward, *rewards):
        if r is not None and hasattr(r, "check_compatible"):
            r.check_compatible(problem.adapter, problem.height, problem.width)


def reorder(problem: Problem, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Particles ``x[index]`` (resampled, selected or pruned), with the scheduler's per-particle state moved alike."""
    problem.adapter.select_state(index, x.shape[0])
    return x[index.to(x.device)]


def init_particles(problem: Problem) -> tuple[torch.Tensor, Conditioning, torch.Tensor]:
    """(prompt index per particle, per-particle conditioning, initial states)."""
    idx = problem.prompt_index()
    x = problem.adapter.initial_noise(problem.generators, problem.height, problem.width)
    return idx, problem.cond.select(idx), x


def run_steps(problem: Problem, x: torch.Tensor, start: int, stop: int, cond: Conditioning, generators: Sequence[torch.Generator], bar=None):
    """Advance ``x`` from step ``start`` to ``stop``; returns (state, last x̂₀)."""
    x0 = None
    for i in range(start, stop):
        with torch.no_grad():
            out = problem.adapter.step(x, i, cond, generators)
        x, x0 = out.prev_sample, out.pred_original_sample
        if bar is not None:
            bar.update()
    return x, x0


class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def update(self, n: int = 1):
        pass


def progress(problem: Problem, total: int):
    return problem.progress(total=total) if problem.progress is not None else _NullBar()
