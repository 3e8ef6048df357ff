"""Noise-aware rewards (TTSnap-style): a CLIP-family reward that also reads the noise level.

A :class:`NoiseAwareReward` scores an intermediate estimate x̂₀ decoded at noise level σ (1 =
pure noise, 0 = clean, the engine's common scale) and is trained (``steer.train.noise_aware``)
so that its score predicts the clean reward of the image that trajectory will end in.

Design (noise-level conditioning):

* **level tokens**: σ goes through sinusoidal features and a two-layer MLP to a vector of the
  vision tower's width, added to every image token just before the tower's first layer norm
  (open_clip ``visual.ln_pre``; transformers ``vision_model.pre_layrnorm``), so every layer
  sees the noise level;
* **gated two-branch head**: a frozen copy of the base reward and the trained, level-conditioned
  copy both score the image; their scores, standardised with the base's clean-image statistics
  (``z_f``, ``z_t``), are mixed by weights that depend on σ:
  ``ẑ = (1 + a(σ))·z_f + b(σ)·z_t + c(σ)``, reported in the teacher's units (``μ_T + σ_T·ẑ``).
  Near σ = 0 the student can keep the clean reward exactly (the frozen branch), and where the
  clean reward fails (high noise) the trained branch takes over; at high noise the final reward
  is uncertain and the regression optimum shrinks towards the mean, which the weights learn.

Both MLPs' last layers start at zero, so an untrained student is exactly its base reward
rescaled to the teacher's units. The folder written by :meth:`NoiseAwareReward.save_pretrained`
holds ``noise_aware_config.json`` (base reward, statistics, the model and image size it was
trained for) and ``noise_aware.safetensors`` (all weights); load it with
``get_reward("noise_aware:PATH")`` or :meth:`NoiseAwareReward.from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from .base import Reward

CONFIG_NAME = "noise_aware_config.json"
WEIGHTS_NAME = "noise_aware.safetensors"


class VerifierMismatch(ValueError):
    """A noise-aware reward was trained for another model or image size than the one it is used with."""


def level_features(sigma: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """Sinusoidal features ``(B, dim)`` of noise levels in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), half, device=sigma.device, dtype=torch.float32))
    angles = sigma.float().view(-1, 1) * freqs.view(1, -1) * math.pi
    return torch.cat([angles.sin(), angles.cos()], -1)


class _MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, dim_out)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _vision_entry(base: Reward) -> tuple[nn.Module, int]:
    """(module whose input is the vision tower's token sequence, the tower's width)."""
    model = base.model
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "ln_pre"):  # open_clip VisionTransformer
        return visual.ln_pre, int(visual.ln_pre.normalized_shape[0])
    vm = getattr(model, "vision_model", None)
    if vm is not None and hasattr(vm, "pre_layrnorm"):  # transformers CLIPVisionTransformer
        return vm.pre_layrnorm, int(vm.pre_layrnorm.normalized_shape[0])
    raise TypeError(
        f"{type(base).__name__} has no ViT vision tower steer can condition on the noise level "
        "(open_clip VisionTransformer or transformers CLIPVisionModel); use a CLIP-family student "
        "(clip, hf_clip, pickscore, hpsv2, shapes_clip)"
    )


def model_signature(adapter, height: int | None = None, width: int | None = None) -> dict:
    """What a verifier is tied to: the pipeline class, the denoiser's config and weights, the image size."""
    den = adapter.denoiser
    cfg = {k: v for k, v in dict(den.config).items() if not k.startswith("_")}
    params = [p for p in den.parameters()]
    stats = [round(float(t.detach().float().mean()), 6) for t in (params[0], params[-1])] + \
            [round(float(t.detach().float().std()), 6) for t in (params[0], params[-1])]
    return {
        "pipeline": type(adapter.pipe).__name__,
        "denoiser_config": hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "weight_stats": stats,
        "latent_shape": [int(v) for v in adapter.latent_shape(height, width)],
    }


def signature_mismatch(trained: dict, current: dict) -> str | None:
    """Why ``current`` differs from ``trained`` (None if they match)."""
    if trained.get("pipeline") != current.get("pipeline") or trained.get("denoiser_config") != current.get("denoiser_config"):
        return f"it was trained for a {trained.get('pipeline')} with another denoiser than this {current.get('pipeline')}'s"
    a, b = trained.get("weight_stats", []), current.get("weight_stats", [])
    if len(a) != len(b) or any(abs(x - y) > 1e-3 + 1e-2 * abs(x) for x, y in zip(a, b)):
        return "it was trained for another checkpoint of this architecture (the denoiser's weights differ)"
    if list(trained.get("latent_shape", [])) != list(current.get("latent_shape", [])):
        return (f"it was trained on latents of shape {tuple(trained.get('latent_shape', ()))}, this call makes "
                f"{tuple(current.get('latent_shape', ()))} (another image size)")
    return None


class NoiseAwareReward(Reward):
    """A CLIP-family reward conditioned on the noise level of the image it scores.

    Args:
        base: the student's base reward (a copy is modified in place: pass a fresh instance).
        base_spec: how to rebuild ``base`` from the registry, ``{"name": ..., "kwargs": {...}}``
            (stored in the saved config).
        teacher_stats: ``(mean, std)`` of the teacher's rewards of clean images (output units).
        student_stats: ``(mean, std)`` of ``base``'s scores of the same clean images.
        trained_for: :func:`model_signature` of the pipeline the training data came from.
        teacher: the teacher reward's name (documentation).
    """

    noise_aware = True

    def __init__(self, base: Reward, base_spec: dict | None = None, teacher_stats: tuple[float, float] = (0.0, 1.0),
                 student_stats: tuple[float, float] = (0.0, 1.0), trained_for: dict | None = None, teacher: str = "",
                 feature_dim: int = 32, hidden: int = 128, info: dict | None = None):
        super().__init__()
        import copy

        entry, width = _vision_entry(base)
        self.base = base
        self.base.requires_grad_(False)
        self.frozen = copy.deepcopy(base)  # the clean reward, never trained, without level input
        self.base_spec = dict(base_spec or {})
        self.teacher = teacher
        self.trained_for = dict(trained_for or {})
        self.info = dict(info or {})
        self.strict = True  # check_compatible raises on a mismatch (set False to only warn)
        self.differentiable = bool(getattr(base, "differentiable", False))
        self.name = f"noise_aware({teacher or getattr(base, 'name', 'reward')})"
        self.feature_dim = feature_dim
        self.level_tokens = _MLP(feature_dim, hidden, width)
        self.level_head = _MLP(feature_dim, hidden, 3)
        self.register_buffer("teacher_stats", torch.tensor(teacher_stats, dtype=torch.float32))
        self.register_buffer("student_stats", torch.tensor(student_stats, dtype=torch.float32))
        self._level_vec: torch.Tensor | None = None
        entry.register_forward_pre_hook(self._add_level)

    # ------------------------------------------------------------------ conditioning
    def _add_level(self, module, args):
        if self._level_vec is None:
            return None
        x = args[0]
        v = self._level_vec.to(x.dtype)
        if x.ndim == 3 and x.shape[0] == v.shape[0]:  # (B, L, D) batch-first
            x = x + v[:, None, :]
        elif x.ndim == 3 and x.shape[1] == v.shape[0]:  # (L, B, D)
            x = x + v[None, :, :]
        else:
            raise RuntimeError(f"noise-level conditioning: unexpected token shape {tuple(x.shape)} for batch {v.shape[0]}")
        return (x, *args[1:])

    def _levels(self, noise_level, batch: int, device) -> torch.Tensor:
        if noise_level is None:
            noise_level = 0.0
        s = torch.as_tensor(noise_level, dtype=torch.float32, device=device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(batch)
        if s.numel() != batch:
            raise ValueError(f"{self.name}: got {s.numel()} noise levels for {batch} images; pass one level, or one per image")
        if not bool(((s >= 0) & (s <= 1)).all()):
            raise ValueError(f"{self.name}: noise levels must lie in [0, 1] (1 = pure noise, 0 = clean), got {s.min().item():.3g}..{s.max().item():.3g}")
        return s

    def standardized(self, images: torch.Tensor, prompts: Sequence[str], noise_level=None) -> torch.Tensor:
        """Prediction of the teacher's clean reward, standardised with the teacher's statistics (what training fits)."""
        s = self._levels(noise_level, images.shape[0], images.device)
        feats = level_features(s, self.feature_dim).to(images.device)
        self._level_vec = self.level_tokens(feats)
        try:
            raw = self.base.score(images, prompts).float()
        finally:
            self._level_vec = None
        with torch.no_grad():
            fixed = self.frozen.score(images, prompts).float()
        z_t = (raw - self.student_stats[0]) / self.student_stats[1]
        z_f = (fixed - self.student_stats[0]) / self.student_stats[1]
        a, b, c = self.level_head(feats).unbind(-1)
        return (1 + a) * z_f + b * z_t + c

    def score(self, images: torch.Tensor, prompts: Sequence[str], noise_level=None) -> torch.Tensor:
        z = self.standardized(images, prompts, noise_level)
        return self.teacher_stats[0] + self.teacher_stats[1] * z

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.preprocess(images)

    # ------------------------------------------------------------------ checks
    def check_compatible(self, adapter, height: int | None = None, width: int | None = None) -> None:
        """Raise :class:`VerifierMismatch` if this reward was trained for another model or image size."""
        if not self.trained_for:
            return
        why = signature_mismatch(self.trained_for, model_signature(adapter, height, width))
        if why is None:
            return
        msg = (f"noise-aware reward {self.name!r} does not fit this pipeline: {why}. Train one for it "
               "(python -m steer.train.noise_aware --help), or set reward.strict = False to use it anyway")
        if self.strict:
            raise VerifierMismatch(msg)
        import warnings

        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ save / load
    def trainable_parameters(self, tune_base: str = "vision") -> list[nn.Parameter]:
        """The level MLPs, plus the vision tower (``"vision"``) or not (``"none"``). The text tower stays
        frozen, so cached prompt embeddings stay valid."""
        if tune_base not in ("none", "vision"):
            raise ValueError(f"tune_base must be 'none' or 'vision', got {tune_base!r}")
        params = list(self.level_tokens.parameters()) + list(self.level_head.parameters())
        if tune_base == "none":
            return params
        model = self.base.model
        tower = getattr(model, "visual", None) or getattr(model, "vision_model", None)
        extra = list(tower.parameters())
        proj = getattr(model, "visual_projection", None)
        if proj is not None:
            extra += list(proj.parameters())
        return params + extra

    def config(self) -> dict:
        return {
            "base": self.base_spec, "teacher": self.teacher, "teacher_stats": self.teacher_stats.tolist(),
            "student_stats": self.student_stats.tolist(), "trained_for": self.trained_for, "feature_dim": self.feature_dim,
            "hidden": self.level_head.fc1.out_features, "info": self.info, "frozen_checksum": self._frozen_checksum(),
        }

    def _frozen_checksum(self) -> float:
        return round(float(sum(p.detach().double().abs().sum() for p in self.frozen.parameters())), 3)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config and weights into ``folder`` (each file atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # the frozen branch is the base reward's own weights, rebuilt from the registry at load: not stored
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("frozen.")}
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(folder / WEIGHTS_NAME)
        tmp = folder / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(self.config(), indent=2))
        tmp.replace(folder / CONFIG_NAME)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu", **base_kwargs: Any) -> "NoiseAwareReward":
        """Load a folder written by :meth:`save_pretrained`; ``base_kwargs`` override the stored base reward's kwargs."""
        from safetensors.torch import load_file

        from .registry import get_reward

        folder = Path(folder)
        cfg_file = folder / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file} not found: {folder} is not a noise-aware reward folder (train one with python -m steer.train.noise_aware)")
        cfg = json.loads(cfg_file.read_text())
        spec = cfg["base"]
        base = get_reward(spec["name"], device=device, **{**spec.get("kwargs", {}), **base_kwargs})
        reward = cls(base, spec, tuple(cfg["teacher_stats"]), tuple(cfg["student_stats"]), cfg.get("trained_for"), cfg.get("teacher", ""),
                     feature_dim=cfg.get("feature_dim", 32), hidden=cfg.get("hidden", 128), info=cfg.get("info"))
        state = load_file(str(folder / WEIGHTS_NAME), device=str(torch.device(device)))
        missing, unexpected = reward.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("frozen.") for k in missing):
            raise ValueError(f"{folder}: weights do not fit the noise-aware reward (missing {missing[:3]}, unexpected {unexpected[:3]})")
        want = cfg.get("frozen_checksum")
        if want is not None and abs(reward._frozen_checksum() - want) > 1e-3 * max(1.0, abs(want)):
            raise ValueError(f"{folder}: the base reward {spec['name']!r} loaded with other weights than the verifier was trained "
                             "against (its frozen branch is the base's own weights); load the same base checkpoint")
        return reward.to(device).eval()
