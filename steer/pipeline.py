"""``steer.wrap``: reward-guided search on a stock diffusers pipeline, behind the usual call."""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput

from . import validate
from .models.registry import get_adapter
from .rewards.base import Reward
from .search import METHODS, get_method
from .search.base import Problem
from .search.trace import Budget, BudgetExceeded, Trace

#: method options whose value is a reward (a name is built once per pipeline and reused)
REWARD_OPTIONS = ("verifier", "potential_reward")
#: call options handled by the engine (everything else goes to the method or the prompt encoder)
ENGINE_OPTIONS = ("num_particles", "eta", "max_nfe", "max_reward_calls", "max_batch", "reward_batch", "return_all")


@dataclass
class SteeredPipelineOutput(BaseOutput):
    """The pipeline's usual ``images`` plus the final ``rewards`` of those images and the search ``trace``."""

    images: Any
    rewards: list[float]
    trace: Trace


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def pipeline_lock(pipe) -> threading.RLock:
    """The lock that serialises steered calls on ``pipe``: a call sets per-call state on the shared pipeline
    (the scheduler's timesteps, the adapter's ``eta`` and ``max_batch``, the compute counters), so two
    threads calling steered pipelines that wrap the same diffusers pipeline take turns."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(pipe)
        if lock is None:
            lock = _LOCKS[pipe] = threading.RLock()
        return lock


def _serialised(fn):
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        with pipeline_lock(self.pipe):
            return fn(self, *args, **kwargs)

    return call


class _Observed(Reward):
    """A reward that reports every batch it scores to ``callback`` (the per-step hook of a steered call)."""

    def __init__(self, inner: Reward, callback: Callable[[dict], None], role: str):
        super().__init__()
        self.inner, self.callback, self.role = inner, callback, role
        self.name, self.differentiable, self.noise_aware = getattr(inner, "name", type(inner).__name__), inner.differentiable, inner.noise_aware
        if hasattr(inner, "check_compatible"):
            self.check_compatible = inner.check_compatible

    def forward(self, images, prompts, noise_level=None):
        scores = self.inner(images, prompts, noise_level=noise_level)
        if not images.requires_grad:  # noise optimisation's differentiable calls are not reported
            level = noise_level if noise_level is None or isinstance(noise_level, (int, float)) else None
            self.callback({"event": "score", "role": self.role, "reward": self.name, "images": images.detach().float().cpu(),
                           "rewards": torch.as_tensor(scores).detach().double().cpu().reshape(-1).tolist(), "noise_level": level})
        return scores


class _ProgressHook:
    """``pipe.progress_bar`` that also reports each completed step to ``callback``."""

    def __init__(self, bar_factory, callback: Callable[[dict], None]):
        self.bar_factory, self.callback = bar_factory, callback

    def __call__(self, total: int):
        hook = self

        class Bar:
            def __enter__(self):
                self.bar, self.done = hook.bar_factory(total=total), 0
                self.inner = self.bar.__enter__()
                hook.callback({"event": "step", "step": 0, "total": total})
                return self

            def __exit__(self, *exc):
                return self.bar.__exit__(*exc)

            def update(self, n: int = 1):
                self.inner.update(n)
                self.done += n
                hook.callback({"event": "step", "step": self.done, "total": total})

        return Bar()


def _method_option_names(name: str) -> set[str]:
    return set(inspect.signature(METHODS[name].__init__).parameters) - {"self", "options"}


def _resolve_reward(reward, device) -> Reward:
    if reward is None:
        raise ValueError("steer needs a reward: pass reward='clip' (see steer.rewards.available_rewards()) or a steer.rewards.Reward instance")
    if isinstance(reward, str):
        from .rewards import get_reward

        reward = get_reward(reward, device=device)
    if not isinstance(reward, Reward):
        raise TypeError(f"reward must be a name or a steer.rewards.Reward, got {type(reward).__name__}")
    return reward.to(device)


def _generators(generator, num_prompts: int, n: int) -> tuple[list[torch.Generator], list[torch.Generator]]:
    """One CPU generator per particle and one per prompt (resampling), derived deterministically from ``generator``."""
    total = num_prompts * n

    def make(seeds):
        return [torch.Generator().manual_seed(int(s)) for s in seeds]

    if generator is None:
        seeds = torch.randint(0, 2**62, (total + num_prompts,))
        return make(seeds[:total]), make(seeds[total:])
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**62, (total + num_prompts,), generator=generator, device=generator.device).cpu()
        return make(seeds[:total]), make(seeds[total:])
    gens = list(generator)
    if len(gens) == total:  # one per particle, as a plain pipeline call takes one per image
        return gens, make([g.initial_seed() + 7919 for g in gens[::n]])
    if len(gens) == num_prompts:  # one per prompt
        parts, res = [], []
        for g in gens:
            seeds = torch.randint(0, 2**62, (n + 1,), generator=g, device=g.device).cpu()
            parts += make(seeds[:n])
            res += make(seeds[n:])
        return parts, res
    raise ValueError(f"got {len(gens)} generators for {num_prompts} prompts × {n} particles: pass one generator, one per prompt, or one per particle")


class SteeredPipeline:
    """A diffusers pipeline whose ``__call__`` runs a search method with a reward.

    Attribute access falls through to the wrapped pipeline (``.unet``, ``.scheduler``, ``.to()``...).
    """

    def __init__(self, pipe, method: str = "smc", reward: str | Reward | None = None, **options):
        self.pipe = pipe
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(sorted(set(METHODS)))}")
        self.method = method
        self.adapter = get_adapter(pipe)  # raises for unsupported families
        self.defaults = dict(options)
        self._rewards: dict[str, Reward] = {}
        get_method(method, **self._method_options(self._split(self.defaults)[1]))  # bad method options fail here, not at the first call
        self.reward = _resolve_reward(reward, self.adapter.device)

    def __getattr__(self, name):
        if name == "pipe":
            raise AttributeError(name)
        return getattr(self.pipe, name)

    def __repr__(self) -> str:
        return f"SteeredPipeline(method={self.method!r}, reward={getattr(self.reward, 'name', '?')!r}, pipe={type(self.pipe).__name__})"

    def to(self, *args, **kwargs) -> "SteeredPipeline":
        self.pipe.to(*args, **kwargs)
        self.reward.to(self.adapter.device)
        return self

    def _split(self, options: dict) -> tuple[dict, dict, dict]:
        """(engine, method, encoder) options: names the engine and method don't take go to the prompt encoder."""
        names = _method_option_names(self.method)
        engine = {k: v for k, v in options.items() if k in ENGINE_OPTIONS}
        method = {k: v for k, v in options.items() if k in names}
        rest = {k: v for k, v in options.items() if k not in engine and k not in method}
        unknown = sorted(set(rest) - set(self.adapter.encode_options))
        if unknown:
            pipe_args = set(inspect.signature(self.pipe.__call__).parameters)
            known = [k for k in unknown if k in pipe_args]
            if known:
                raise ValueError(
                    f"{', '.join(map(repr, known))}: {type(self.pipe).__name__} takes this argument but steered calls do not support it yet; "
                    "leave it out (or call the unwrapped pipeline, steered.pipe)"
                )
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for method {self.method!r}. Method options: {', '.join(sorted(names)) or 'none'}; "
                f"engine options: {', '.join(ENGINE_OPTIONS)}; prompt-encoding options for {self.adapter.family}: "
                f"{', '.join(self.adapter.encode_options) or 'none'}"
            )
        return engine, method, rest

    def _method_options(self, opts: dict) -> dict:
        """Method options with reward names (``verifier="shapes_noise_aware_sd"``) built into rewards, once per pipeline."""
        out = dict(opts)
        for key in REWARD_OPTIONS:
            value = out.get(key)
            if isinstance(value, str):
                if value not in self._rewards:
                    self._rewards[value] = _resolve_reward(value, self.adapter.device)
                out[key] = self._rewards[value]
            elif isinstance(value, Reward):
                out[key] = value.to(self.adapter.device)
        return out

    def _default(self, name: str, fallback):
        p = inspect.signature(self.pipe.__call__).parameters.get(name)
        return p.default if p is not None and p.default is not inspect.Parameter.empty and p.default is not None else fallback

    @_serialised
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[dict], None] | None = None,
        **options,
    ) -> SteeredPipelineOutput | tuple:
        """Steered generation: one image per prompt (the selected particle), or all particles with ``return_all=True``.

        Method options (e.g. ``potential``, ``lam``, ``interval``) and engine options
        (``num_particles``, ``eta``, ``max_nfe``, ``max_reward_calls``, ``max_batch``,
        ``reward_batch``, ``return_all``) override those given to :func:`wrap`.

        ``callback`` (optional) is called with a dict per event, to watch the search: ``{"event": "step",
        "step": k, "total": S}`` as steps complete (each search stage counts its own steps), and
        ``{"event": "score", "role": "reward" | option name, "reward": name, "images": (B, 3, H, W) in [0, 1],
        "rewards": [B floats], "noise_level": float | None}`` whenever particles' x̂₀ or final images are
        scored, in the particles' current order (so resampled copies and pruned particles show). Calls on the
        same diffusers pipeline are serialised (:func:`pipeline_lock`), so threads may share it.
        """
        prompts = validate.prompts("prompt", prompt)
        if negative_prompt is not None:
            negatives = validate.prompts("negative_prompt", negative_prompt)
            if not isinstance(negative_prompt, str) and len(negatives) != len(prompts):
                raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts: pass one string, or one per prompt")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if options.get("num_images_per_prompt", 1) != 1:
            raise ValueError("num_images_per_prompt is not supported: use num_particles (and return_all=True for every particle)")
        options.pop("num_images_per_prompt", None)
        engine, method_opts, encoder_opts = self._split({**self.defaults, **options})
        method_opts = self._method_options(method_opts)
        reward = self.reward
        if callback is not None:
            if not callable(callback):
                raise TypeError(f"callback must be callable (it gets one dict per event), got {type(callback).__name__}")
            reward = _Observed(reward, callback, "reward")
            method_opts = {k: _Observed(v, callback, k) if k in REWARD_OPTIONS and isinstance(v, Reward) else v for k, v in method_opts.items()}
        method = get_method(self.method, **method_opts)
        steps = self._default("num_inference_steps", 25) if num_inference_steps is None else validate.integer("num_inference_steps", num_inference_steps, 1)
        guidance = validate.real("guidance_scale", self._default("guidance_scale", 5.0) if guidance_scale is None else guidance_scale)
        adapter = self.adapter
        for name, size in (("height", height), ("width", width)):
            if size is not None:
                validate.multiple(name, size, adapter.size_multiple, f"{type(self.pipe).__name__} works on latents {adapter.size_multiple}× smaller")
        budget = Budget(*(None if engine.get(k) is None else validate.integer(k, engine[k], 1) for k in ("max_nfe", "max_reward_calls")))
        n = engine.get("num_particles")
        if n is None:
            n = 4 if budget.nfe is None else budget.nfe // (steps * len(prompts))
            if n < 1:
                raise BudgetExceeded(
                    f"max_nfe={budget.nfe} is smaller than one trajectory per prompt ({steps} steps × {len(prompts)} prompts = "
                    f"{steps * len(prompts)} NFE): raise max_nfe or lower num_inference_steps"
                )
        n = validate.integer("num_particles", n, 1)
        eta = engine.get("eta", adapter.stochastic_eta if method.resamples else 0.0)
        adapter.eta = validate.real("eta", eta, 0.0)
        adapter.prepare()
        adapter.max_batch = None if engine.get("max_batch") is None else validate.integer("max_batch", engine["max_batch"], 1)
        reward_batch = validate.integer("reward_batch", engine.get("reward_batch", 64), 1)
        return_all = engine.get("return_all", False)
        if not isinstance(return_all, bool):
            raise TypeError(f"return_all must be True or False, got {return_all!r}")
        with adapter.fixed_placement():
            cond = adapter.encode(prompts, negative_prompt=negative_prompt, guidance_scale=guidance, height=height, width=width, **encoder_opts)
            adapter.set_schedule(steps, height=height, width=width)
            gens, res_gens = _generators(generator, len(prompts), n)
            problem = Problem(
                adapter, reward, cond, n, gens, res_gens, height, width, budget,
                reward_batch=reward_batch, progress=self.pipe.progress_bar if callback is None else _ProgressHook(self.pipe.progress_bar, callback),
            )
            latents, trace = method(problem)
            final = torch.tensor(trace.final_rewards)
            if return_all:
                keep = torch.arange(len(prompts) * n)
                rewards = final.reshape(-1).tolist()
            else:
                keep = torch.tensor([p * n + k for p, k in enumerate(trace.selected)])
                rewards = [float(final[p, k]) for p, k in enumerate(trace.selected)]
            latents = latents[keep.to(latents.device)]
            if output_type == "latent":
                images = latents
            else:
                decoded = problem.final_images[keep.to(problem.final_images.device)] if problem.final_images is not None else adapter.decode(latents)
                images = self._postprocess(decoded, output_type)
        if not return_dict:
            return images, rewards, trace
        return SteeredPipelineOutput(images=images, rewards=rewards, trace=trace)

    def _postprocess(self, images: torch.Tensor, output_type: str):
        if output_type == "pt":
            return images
        arr = images.float().permute(0, 2, 3, 1).cpu().numpy()
        return arr if output_type == "np" else self.pipe.numpy_to_pil(arr)


def wrap(pipeline, method: str = "smc", reward: str | Reward | None = None, **options):
    """Steer a diffusers pipeline (instance → :class:`SteeredPipeline`) or class (→ class with ``from_pretrained``).

    ``method``: ``best_of_n``, ``smc`` (FK steering), ``fleming_viot``; ``reward``: a registered
    name (``steer.rewards.available_rewards()``) or a :class:`~steer.rewards.Reward`; ``options``:
    defaults for the call (method options, ``num_particles``, ``eta``, ``max_nfe`` ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(sorted(set(METHODS)))}")
    if isinstance(pipeline, type):
        base = pipeline

        def from_pretrained(cls, *args, **kwargs) -> SteeredPipeline:
            return SteeredPipeline(base.from_pretrained(*args, **kwargs), method=method, reward=reward, **options)

        return type(f"Steered{base.__name__}", (), {
            "pipeline_class": base,
            "from_pretrained": classmethod(from_pretrained),
            "__doc__": f"{base.__name__} steered with {method!r}; ``from_pretrained`` returns a SteeredPipeline.",
        })
    return SteeredPipeline(pipeline, method=method, reward=reward, **options)
