"""The LAION aesthetic predictor v2 (``sac+logos+ava1-l14-linearMSE``): an MLP on CLIP ViT-L/14 embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .base import Reward
from .clip import load_open_clip
from .preprocess import OPENAI_MEAN, OPENAI_STD, as_size, normalize_images
from .weights import hub_file, load_state_dict

#: A hub copy of ``sac+logos+ava1-l14-linearMSE.pth`` (the one TRL's DDPO example uses).
AESTHETIC_HEAD = ("trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth")


class RewardMLP(nn.Module):
    """``in -> 1024 -> 128 -> 64 -> 16 -> 1``, linear (no activations), dropouts 0.2, 0.2, 0.1.

    The layout of the LAION aesthetic predictor and of ImageReward's head: state-dict keys
    ``layers.{0,2,4,6,7}.{weight,bias}``.
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AestheticScore(Reward):
    """LAION aesthetic score (roughly 1-10) of images; the prompt is ignored.

    Args:
        clip_model: open_clip model name or folder (``ViT-L-14`` for the released head).
        clip_pretrained: pretrained tag or checkpoint for a plain model name.
        head_path: the MLP state dict (``.pth``/``.safetensors``, keys ``layers.N.*``); default: the
            released head from the hub cache (:data:`AESTHETIC_HEAD`).
        dtype: optional dtype to cast the models to.
    """

    name = "aesthetic"
    differentiable = True

    def __init__(
        self,
        clip_model: str | Path = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        head_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if head_path is None:
            head_path = hub_file(*AESTHETIC_HEAD, what=f"the LAION aesthetic head {AESTHETIC_HEAD[1]!r} (hub repo {AESTHETIC_HEAD[0]!r})")
        head = load_state_dict(head_path)
        self.model, _, cfg = load_open_clip(clip_model, clip_pretrained, device)
        self.mlp = RewardMLP(int(self.model.visual.output_dim))
        self.mlp.load_state_dict(head)
        self.mlp.to(device).eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype), self.mlp.to(dtype)
        self.image_size = as_size(cfg.get("size", self.model.visual.image_size))
        dt = dtype or torch.float32
        self.register_buffer("mean", torch.tensor(cfg.get("mean", OPENAI_MEAN), dtype=dt, device=device))
        self.register_buffer("std", torch.tensor(cfg.get("std", OPENAI_STD), dtype=dt, device=device))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings ``(B, D)``."""
        return self.model.encode_image(normalize_images(images, self.image_size, self.mean, self.std), normalize=True)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.mlp(self.image_features(images)).squeeze(-1).float()
