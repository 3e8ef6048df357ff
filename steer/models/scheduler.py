"""Stepping particles with the pipeline's own scheduler, its state kept per particle.

A :class:`SchedulerStepper` holds one call's copy of the pipeline's scheduler (the pipeline's
own instance is never stepped, so calls do not disturb each other) and steps the whole batch of
particles with ``scheduler.step``, exactly as the stock pipeline loop does. Schedulers that keep
history (multistep solvers' past model outputs, PNDM's ``ets``, Heun's first-order sample) hold it
as batched tensors; when a method resamples, selects or prunes particles, :meth:`select` reindexes
every such tensor, so the history moves with the particles (ancestry-aware state).
"""

from __future__ import annotations

import copy
import inspect
from typing import Sequence

import torch

from .sampling import to_x0_eps

#: schedulers that draw fresh noise in ``step`` whatever their settings (DDIM and TCD take ``eta`` instead)
NOISY_SCHEDULERS = ("EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler", "DDPMScheduler",
                    "DDPMParallelScheduler", "LCMScheduler")


def scheduler_adds_noise(scheduler) -> bool:
    """Whether ``scheduler.step`` injects noise by itself (ancestral / SDE / consistency samplers)."""
    if type(scheduler).__name__ in NOISY_SCHEDULERS:
        return True
    cfg = getattr(scheduler, "config", {})
    return "sde" in str(cfg.get("algorithm_type", "")) or bool(cfg.get("stochastic_sampling", False))


def step_parameters(scheduler) -> set[str]:
    return set(inspect.signature(scheduler.step).parameters)


class SchedulerStepper:
    """One call's copy of a scheduler, stepping a batch of particles.

    ``flow``: the scheduler is a flow-matching one (σ = t / num_train_timesteps, x̂₀ = x − σ·v);
    otherwise VP diffusion (x̂₀ from ``alphas_cumprod`` at the step's timestep when the scheduler
    gives no ``pred_original_sample``).
    """

    def __init__(self, scheduler, prediction_type: str = "epsilon", flow: bool = False):
        self.scheduler = copy.deepcopy(scheduler)
        self.prediction_type = prediction_type
        self.flow = flow
        self.params = step_parameters(self.scheduler)
        self.timesteps: list[torch.Tensor] = []
        self._schedule_ids: set[int] = set()

    # ------------------------------------------------------------------ schedule
    def schedule_done(self) -> None:
        """Call after ``set_timesteps``: remembers the schedule's tensors (never reindexed) and the timesteps."""
        self.timesteps = list(self.scheduler.timesteps)
        self._schedule_ids = {id(v) for v in vars(self.scheduler).values() if isinstance(v, torch.Tensor)}

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0))

    def noise_level(self, i: int) -> float:
        """Noise level before step ``i`` on a 0 (clean) to 1 (noise) scale: σ for flows, sqrt(1−ᾱ) for VP."""
        if i >= len(self.timesteps):
            return 0.0
        t = float(self.timesteps[i])
        if self.flow:
            return t / float(self.scheduler.config.num_train_timesteps)
        return (1 - self._alpha(t)) ** 0.5

    def _alpha(self, t: float) -> float:
        """ᾱ at (the nearest training step to) timestep ``t``."""
        ac = self.scheduler.alphas_cumprod
        return float(ac[min(max(round(t), 0), len(ac) - 1)])

    # ------------------------------------------------------------------ stepping
    def _at(self, i: int) -> None:
        """Point the scheduler at step ``i`` (schedulers that count their own steps), so single-step schedulers
        can step any stored state; multistep history still assumes steps in order."""
        if hasattr(self.scheduler, "_step_index"):
            self.scheduler._step_index = i

    def scale_model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        self._at(i)
        if hasattr(self.scheduler, "scale_model_input"):
            return self.scheduler.scale_model_input(x, self.timesteps[i])
        return x

    def x0(self, x: torch.Tensor, i: int, model_output: torch.Tensor) -> torch.Tensor:
        """x̂₀ from the model output by the prediction type (for schedulers that do not return one)."""
        t = float(self.timesteps[i])
        if self.flow:
            return x - t / float(self.scheduler.config.num_train_timesteps) * model_output
        return to_x0_eps(model_output, x, self._alpha(t), self.prediction_type)[0]

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor, generators: Sequence[torch.Generator] | None,
             eta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``scheduler.step`` on the batch; returns (next state, x̂₀)."""
        kwargs = {}
        if "eta" in self.params:
            kwargs["eta"] = eta
        if "generator" in self.params and generators is not None:
            kwargs["generator"] = list(generators)
        self._at(i)
        out = self.scheduler.step(model_output.to(x.dtype), self.timesteps[i], x, return_dict=True, **kwargs)
        x0 = getattr(out, "pred_original_sample", None)
        if x0 is None:
            x0 = getattr(out, "denoised", None)
        if x0 is None:
            x0 = self.x0(x, i, model_output.to(x.dtype))
        return out.prev_sample, x0

    # ------------------------------------------------------------------ particles
    def select(self, index: torch.Tensor, batch: int) -> None:
        """Reorder every per-particle tensor of the scheduler's state by ``index`` (rows of a ``batch``-row state)."""

        def pick(v):
            if isinstance(v, torch.Tensor) and id(v) not in self._schedule_ids and v.ndim >= 1 and v.shape[0] == batch:
                return v[index.to(v.device)]
            if isinstance(v, list):
                return [pick(e) for e in v]
            if isinstance(v, tuple):
                return tuple(pick(e) for e in v)
            return v

        for key, value in list(vars(self.scheduler).items()):
            if key != "config":
                setattr(self.scheduler, key, pick(value))


def fallback_note(scheduler, eta: float, flow: bool) -> str:
    name = type(scheduler).__name__
    step = f"the flow SDE step (rho={eta:g})" if flow else f"DDIM(eta={eta:g})"
    return (f"{name} is deterministic, and resampling needs noisy steps: this call steps with {step} on the scheduler's "
            "timesteps instead. Use a scheduler that adds noise (e.g. EulerAncestralDiscreteScheduler, DDIMScheduler with eta > 0, "
            "LCMScheduler) to keep the pipeline's own sampler.")


__all__ = ["NOISY_SCHEDULERS", "SchedulerStepper", "fallback_note", "scheduler_adds_noise", "step_parameters"]
