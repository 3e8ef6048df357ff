"""Loaders for the shipped shapes-world models (weights live inside the package)."""

from __future__ import annotations

from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parent / "weights"


def _folder(path: str | Path | None, name: str) -> Path:
    folder = Path(path) if path is not None else WEIGHTS / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"shapes {name!r} weights not found at {folder}. They ship inside the package: reinstall it "
            f"(pip install -e .), or retrain them (README, 'Reproducing the shapes models')."
        )
    return folder


#: fine-tuned variants of the ``sd`` model shipped as LoRAs (``steer.train.pgraft`` / ``steer.train.draft`` results)
VARIANTS = {"pgraft": "sd_pgraft", "draft": "sd_draft"}


def load_pipeline(path: str | Path | None = None, variant: str | None = None, **kwargs):
    """The SD-family shapes model as a stock ``diffusers.StableDiffusionPipeline`` (DDIM scheduler).

    ``variant="pgraft"`` / ``"draft"``: the same pipeline with the shipped fine-tuned LoRA loaded
    (``pipe.load_lora_weights``); P-GRAFT's LoRA acts only in its high-noise segment (a gate on the UNet,
    :func:`steer.train.finetune.load_result`).
    """
    from diffusers import StableDiffusionPipeline

    if variant not in (None, "base", *VARIANTS):
        raise ValueError(f"variant must be None, 'base' or one of {sorted(VARIANTS)}, got {variant!r}")
    pipe = StableDiffusionPipeline.from_pretrained(_folder(path, "sd"), **kwargs)
    if variant in VARIANTS:
        from ..train.finetune import load_result

        load_result(pipe, _folder(None, VARIANTS[variant]))
    return pipe


def load_flow_pipeline(path: str | Path | None = None, **kwargs):
    """The rectified-flow twin as a stock ``diffusers.StableDiffusion3Pipeline`` (no T5 encoder)."""
    from diffusers import StableDiffusion3Pipeline

    kwargs.setdefault("text_encoder_3", None)
    kwargs.setdefault("tokenizer_3", None)
    return StableDiffusion3Pipeline.from_pretrained(_folder(path, "flow"), **kwargs)


def load_reward(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The shapes open_clip reward, as a :class:`steer.rewards.clip.OpenCLIPScore`."""
    from ..rewards.clip import OpenCLIPScore

    reward = OpenCLIPScore(str(_folder(path, "reward")), device=device)
    reward.name = "shapes_clip"
    return reward


def load_noise_aware_reward(model: str = "sd", path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The shipped noise-aware shapes reward for the ``sd`` or ``flow`` model (a
    :class:`steer.rewards.noise_aware.NoiseAwareReward`; it refuses other models)."""
    from ..rewards.noise_aware import NoiseAwareReward

    if model not in ("sd", "flow"):
        raise ValueError(f"model must be 'sd' or 'flow', got {model!r}")
    reward = NoiseAwareReward.from_pretrained(_folder(path, f"noise_aware_{model}"), device=device)
    reward.name = f"shapes_noise_aware_{model}"
    return reward
