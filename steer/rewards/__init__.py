"""Reward models scoring images (``(B, 3, H, W)`` in [0, 1]) against prompts, and a registry by name.

    from steer.rewards import get_reward
    reward = get_reward("pickscore", device="cuda")
    scores = reward(images, "a photo of a cat")  # (B,)
"""

from .aesthetic import AestheticScore, RewardMLP
from .base import Reward
from .clip import OpenCLIPScore
from .composite import Normalized, RankSumReward, WeightedReward, batch_ranks
from .hf_clip import TransformersCLIPScore
from .hps import HPSv2
from .imagereward import ImageReward, ImageRewardModel, convert_imagereward_checkpoint
from .pickscore import PickScore
from .registry import available_rewards, get_reward, register_reward
from .weights import RewardWeightsNotFound

__all__ = [
    "AestheticScore", "HPSv2", "ImageReward", "ImageRewardModel", "Normalized", "OpenCLIPScore", "PickScore",
    "RankSumReward", "Reward", "RewardMLP", "RewardWeightsNotFound", "TransformersCLIPScore", "WeightedReward",
    "available_rewards", "batch_ranks", "convert_imagereward_checkpoint", "get_reward", "register_reward",
]
