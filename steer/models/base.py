"""The model-adapter interface: everything a search method needs from a pipeline family.

An adapter wraps an *unmodified* diffusers pipeline and uses its own components (prompt
encoding, noise schedule, denoiser, VAE). Methods are written once against this interface
and never branch on the model family.

State conventions:

* a *particle* is one row of a latent batch ``x`` of shape ``(B, *latent_shape)``;
* ``cond.select(prompt_index)`` gives each particle its prompt's conditioning, so a batch
  may hold any mix of prompts and may shrink (pruning) or be rebuilt from stored states
  (tree search) between steps;
* step ``i`` maps the state at ``schedule[i]`` to the state at ``schedule[i + 1]``;
  ``i`` runs over ``range(num_steps)``;
* steps use the pipeline's own scheduler (a per-call copy, :mod:`steer.models.scheduler`), so
  one particle reproduces the plain pipeline call; the scheduler's history is per particle and
  follows :meth:`ModelAdapter.select_state` when particles are resampled or pruned. Only when a
  method needs noise that the scheduler cannot give does a call fall back to DDIM(η) / the flow
  SDE step (:meth:`ModelAdapter.prepare`);
* :meth:`ModelAdapter.step` is differentiable when called with grad enabled (noise
  optimisation); it draws its noise from each particle's own ``torch.Generator``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from .scheduler import SchedulerStepper, fallback_note, scheduler_adds_noise, step_parameters


@dataclass
class Conditioning:
    """Encoded prompts. Every tensor has a leading batch dimension (prompts, or particles after :meth:`select`).

    ``cond`` and ``uncond`` map the denoiser's keyword names (e.g. ``encoder_hidden_states``,
    ``pooled_projections``, ``added_cond_kwargs.text_embeds``) to tensors; ``uncond`` is
    ``None`` when classifier-free guidance is off.
    """

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None
    guidance_scale: float
    prompts: list[str]
    extra: dict[str, Any] = field(default_factory=dict)  # non-batched, e.g. image ids for FLUX

    @property
    def do_cfg(self) -> bool:
        return self.uncond is not None

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: torch.Tensor | Sequence[int]) -> "Conditioning":
        """Rows ``index`` (one per particle)."""
        idx = torch.as_tensor(index, dtype=torch.long)

        def pick(d):
            return None if d is None else {k: v[idx.to(v.device)] for k, v in d.items()}

        return Conditioning(pick(self.cond), pick(self.uncond), self.guidance_scale, [self.prompts[i] for i in idx.tolist()], self.extra)


@dataclass
class StepOutput:
    """Result of one denoising step: the next state and the prediction of the clean latent."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


@dataclass
class Counters:
    """Compute spent through an adapter: particle-steps (NFE), denoiser rows, decodes."""

    nfe: int = 0  # denoising steps taken, summed over particles (CFG counts once)
    denoiser_rows: int = 0  # rows the denoiser actually ran on (CFG counts twice)
    decodes: int = 0  # latents decoded to images

    def reset(self) -> None:
        self.nfe = self.denoiser_rows = self.decodes = 0


class ModelAdapter(ABC):
    """One pipeline family. Subclasses set :attr:`family` and implement the abstract methods."""

    family: ClassVar[str] = "base"
    #: whether transitions can be stochastic (needed by resampling methods)
    supports_stochastic: ClassVar[bool] = True
    #: default noise level for methods that need stochastic transitions (resampling)
    stochastic_eta: ClassVar[float] = 1.0
    #: extra pipeline-call options :meth:`encode` honours (anything else is rejected by ``steer.wrap``)
    encode_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipe, *, eta: float = 1.0, max_batch: int | None = None):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.pipe = pipe
        self.eta = float(eta)
        self.max_batch = max_batch
        self.counters = Counters()
        self.native = True  # step with the pipeline's own scheduler (else DDIM(η) / the flow SDE step); set by prepare()
        self.sampler = ""  # what the current call steps with, for the trace
        self._stepper: SchedulerStepper | None = None
        self._warned: set[str] = set()
        self.prepare(warn=False)

    # ---------------------------------------------------------------- discovery
    @classmethod
    @abstractmethod
    def matches(cls, pipe) -> bool:
        """Whether this adapter handles ``pipe``."""

    # ---------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        placement = self.__dict__.get("_placement")
        return placement[0] if placement else self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the denoiser."""
        placement = self.__dict__.get("_placement")
        return placement[1] if placement else self.denoiser.dtype

    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The pipeline's UNet or transformer."""

    @contextmanager
    def fixed_placement(self):
        """Read device and dtype once for a whole call (diffusers walks every module to answer them)."""
        old = self.__dict__.get("_placement")
        self._placement = (self.pipe._execution_device, self.denoiser.dtype)
        try:
            yield self
        finally:
            self._placement = old

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (the VAE's downscale factor, times any patch size)."""
        return int(self.pipe.vae_scale_factor)

    @property
    def stochastic(self) -> bool:
        """Whether this call's steps draw noise (needed when particles are resampled)."""
        sched = getattr(self.pipe, "scheduler", None)
        if self.native:
            return scheduler_adds_noise(sched) or ("eta" in step_parameters(sched) and self.eta > 0)
        return self.eta > 0

    def prepare(self, warn: bool = True) -> str:
        """Choose how this call steps (after ``eta`` is set, before :meth:`set_schedule`); returns the trace's description.

        With ``eta == 0``, or a scheduler that draws its own noise (ancestral, SDE, LCM) or takes
        ``eta`` (DDIM, TCD), particles step with the pipeline's own ``scheduler.step``. A noisy step asked of
        a deterministic scheduler (Euler, DPM-Solver++, PNDM, UniPC, FlowMatchEuler) falls back to
        DDIM(η) (the flow SDE step for flow models) on the scheduler's timesteps, with a warning once.
        """
        sched = getattr(self.pipe, "scheduler", None)
        if sched is None:  # a custom adapter on an object without a scheduler: its own transitions
            self.native, self.sampler = False, f"{type(self).__name__}.transition"
            return self.sampler
        name, takes_eta = type(sched).__name__, "eta" in step_parameters(sched)
        self.native = self.eta == 0 or scheduler_adds_noise(sched) or takes_eta
        if self.native:
            self.sampler = f"{name}.step" + (f" (eta={self.eta:g})" if takes_eta else "")
        else:
            note = fallback_note(sched, self.eta, flow=self.family in ("sd3", "flux"))
            self.sampler = f"fallback: {note}"
            if warn and name not in self._warned:
                self._warned.add(name)
                warnings.warn(note, UserWarning, stacklevel=3)
        return self.sampler

    def select_state(self, index: torch.Tensor, batch: int) -> None:
        """Move the scheduler's per-particle state with particles that were resampled, selected or pruned."""
        if self.native and self._stepper is not None:
            self._stepper.select(index, batch)

    # ---------------------------------------------------------------- prompts and schedule
    @abstractmethod
    def encode(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        guidance_scale: float = 5.0,
        height: int | None = None,
        width: int | None = None,
        **kwargs,
    ) -> Conditioning:
        """Encode prompts with the pipeline's own text encoders (one row per prompt)."""

    @abstractmethod
    def set_schedule(self, num_inference_steps: int, *, height: int | None = None, width: int | None = None, **kwargs) -> None:
        """Prepare the pipeline's noise schedule for ``num_inference_steps`` steps."""

    @property
    @abstractmethod
    def num_steps(self) -> int:
        """Number of steps of the current schedule."""

    @abstractmethod
    def noise_level(self, i: int) -> float:
        """Noise level before step ``i`` on a common scale: 1 = pure noise, 0 = clean (``num_steps`` → 0)."""

    # ---------------------------------------------------------------- sampling
    @abstractmethod
    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """Shape of one particle's state (without the batch dimension)."""

    def initial_noise(self, generators: Sequence[torch.Generator], height: int | None = None, width: int | None = None) -> torch.Tensor:
        """The starting state of one particle per generator (drawn on CPU, so seeds give the same noise on any device)."""
        shape = self.latent_shape(height, width)
        x = torch.stack([torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators])
        if self.native:
            return x.to(self.device, self.dtype) * self._stepper.init_noise_sigma
        return self.scale_initial_noise(x.to(self.device, self.dtype))

    def scale_initial_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Map standard normal noise to the state at ``schedule[0]``."""
        return noise

    @abstractmethod
    def predict(self, x: torch.Tensor, i: int, cond: Conditioning) -> torch.Tensor:
        """Guided denoiser output at step ``i`` in the family's native parameterisation (batched, CFG applied)."""

    @abstractmethod
    def transition(self, x: torch.Tensor, i: int, model_output: torch.Tensor, noise: torch.Tensor | None, eta: float) -> StepOutput:
        """Pure update from ``x`` at step ``i`` given the denoiser output and optional standard noise."""

    def step(self, x: torch.Tensor, i: int, cond: Conditioning, generators: Sequence[torch.Generator] | None = None, eta: float | None = None) -> StepOutput:
        """One denoising step for a batch of particles (``cond`` already selected per particle)."""
        if len(cond) != x.shape[0]:
            raise ValueError(f"conditioning has {len(cond)} rows but the state has {x.shape[0]}: call cond.select(prompt_index)")
        eta = self.eta if eta is None else eta
        if self.native:
            out = self.predict(self._stepper.scale_model_input(x, i), i, cond)
            self.counters.nfe += x.shape[0]
            return StepOutput(*self._stepper.step(out, i, x, generators, eta))
        out = self.predict(x, i, cond)
        noise = None
        if eta > 0 and i + 1 < self.num_steps:
            if generators is None or len(generators) != x.shape[0]:
                raise ValueError("a stochastic step needs one torch.Generator per particle")
            noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generators]).to(x.device, x.dtype)
        self.counters.nfe += x.shape[0]
        return self.transition(x, i, out, noise, eta)

    def predict_x0(self, x: torch.Tensor, i: int, cond: Conditioning) -> torch.Tensor:
        """x̂₀ of a batch at step ``i`` (one denoiser call, no state change)."""
        if self.native:
            return self._stepper.x0(x, i, self.predict(self._stepper.scale_model_input(x, i), i, cond))
        return self.transition(x, i, self.predict(x, i, cond), None, 0.0).pred_original_sample

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] from clean-latent predictions (differentiable)."""

    # ---------------------------------------------------------------- helpers
    def _chunks(self, n: int):
        size = self.max_batch or n
        for s in range(0, n, size):
            yield slice(s, min(n, s + size))
