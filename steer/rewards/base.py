"""The reward interface: batched scores of images (tensors in [0, 1]) against prompts."""

from __future__ import annotations

from typing import Sequence

import torch


class Reward(torch.nn.Module):
    """A reward model. Subclasses implement :meth:`score`.

    Attributes:
        name: registry name.
        differentiable: gradients flow from the score to the input pixels.
        noise_aware: trained to score intermediate predictions x̂₀, not only clean images.
    """

    name: str = "reward"
    differentiable: bool = False
    noise_aware: bool = False

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores of shape ``(B,)`` for ``images`` ``(B, 3, H, W)`` in [0, 1] and one prompt per image."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | str, noise_level=None) -> torch.Tensor:
        """Scores of ``images`` against ``prompts``. ``noise_level`` (one float, or one per image; 1 = pure
        noise, 0 = clean) reaches :meth:`score` only for noise-aware rewards; others ignore it."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        if isinstance(prompts, str):
            prompts = [prompts] * images.shape[0]
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image")
        ctx = torch.enable_grad() if (self.differentiable and images.requires_grad) else torch.no_grad()
        with ctx:
            if self.noise_aware:
                return self.score(images, list(prompts), noise_level=noise_level)
            return self.score(images, list(prompts))

    def normalized(self, mean: float, std: float) -> "Reward":
        """This reward as ``(score - mean) / std`` (a :class:`~steer.rewards.composite.Normalized` wrapper)."""
        from .composite import Normalized

        return Normalized(self, mean, std)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
