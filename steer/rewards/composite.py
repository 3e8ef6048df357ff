"""Rewards built from other rewards: affine normalisation, weighted sums, rank sums."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch

from .base import Reward


class Normalized(Reward):
    """``(reward - mean) / std``: puts rewards on a common scale (e.g. before mixing them)."""

    def __init__(self, reward: Reward, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.reward, self.mean, self.std = reward, float(mean), float(std)
        self.name = reward.name
        self.differentiable = reward.differentiable
        self.noise_aware = reward.noise_aware

    def score(self, images: torch.Tensor, prompts: Sequence[str], noise_level=None) -> torch.Tensor:
        return (self.reward(images, prompts, noise_level=noise_level) - self.mean) / self.std


def _pairs(rewards: Mapping[Reward, float] | Iterable[tuple[Reward, float]]) -> list[tuple[Reward, float]]:
    items = list(rewards.items()) if isinstance(rewards, Mapping) else list(rewards)
    if not items:
        raise ValueError("need at least one reward")
    return [(r, float(w)) for r, w in items]


class WeightedReward(Reward):
    """``sum_i w_i * reward_i``; differentiable (and noise-aware) if all parts are.

    Args:
        rewards: ``{reward: weight}`` or ``[(reward, weight), ...]``.
    """

    def __init__(self, rewards: Mapping[Reward, float] | Iterable[tuple[Reward, float]]):
        super().__init__()
        pairs = _pairs(rewards)
        self.parts = torch.nn.ModuleList([r for r, _ in pairs])
        self.weights = [w for _, w in pairs]
        self.name = "+".join(f"{w:g}*{r.name}" for r, w in pairs)
        self.differentiable = all(r.differentiable for r in self.parts)
        self.noise_aware = all(r.noise_aware for r in self.parts)

    def score(self, images: torch.Tensor, prompts: Sequence[str], noise_level=None) -> torch.Tensor:
        total = None
        for r, w in zip(self.parts, self.weights):
            s = w * r(images, prompts, noise_level=noise_level).float()
            total = s if total is None else total + s.to(total.device)
        return total


def batch_ranks(scores: torch.Tensor) -> torch.Tensor:
    """0-based ranks within the batch (0 = lowest score), ties sharing their average rank."""
    s = scores.detach().float()
    below = (s[None, :] < s[:, None]).sum(1).float()
    ties = (s[None, :] == s[:, None]).sum(1).float() - 1
    return below + ties / 2


class RankSumReward(Reward):
    """Sum over rewards of each image's rank in the batch (Borda count); not differentiable.

    Scale-free, so rewards with different ranges combine without normalisation, but a score
    depends on the other images of the batch.
    """

    differentiable = False

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float] | None = None):
        super().__init__()
        if not rewards:
            raise ValueError("need at least one reward")
        self.parts = torch.nn.ModuleList(list(rewards))
        self.weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.parts):
            raise ValueError(f"got {len(self.parts)} rewards but {len(self.weights)} weights")
        self.name = "ranksum(" + ",".join(r.name for r in self.parts) + ")"

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        total = None
        for r, w in zip(self.parts, self.weights):
            s = w * batch_ranks(r(images, prompts))
            total = s if total is None else total + s.to(total.device)
        return total
