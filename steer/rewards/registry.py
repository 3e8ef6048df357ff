"""Rewards by name: ``get_reward("pickscore", device="cuda")``."""

from __future__ import annotations

from typing import Any, Callable

from .base import Reward

_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str, factory: Callable[..., Reward], overwrite: bool = False) -> None:
    """Make ``factory(**kwargs)`` available as ``get_reward(name, **kwargs)``."""
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"reward {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = factory


def available_rewards() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REGISTRY)


def get_reward(name: str, normalize: tuple[float, float] | None = None, **kwargs: Any) -> Reward:
    """Build the reward registered as ``name`` with ``kwargs``; ``normalize=(mean, std)`` wraps it in
    :class:`~steer.rewards.composite.Normalized`. Unknown names raise ``ValueError``."""
    key = name.lower()
    if key.startswith("noise_aware:"):  # a folder written by steer.train.noise_aware
        from .noise_aware import NoiseAwareReward

        reward = NoiseAwareReward.from_pretrained(name.split(":", 1)[1], **kwargs)
        reward.name = name
    elif key not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(available_rewards())}, or 'noise_aware:PATH' "
                         "(a folder written by python -m steer.train.noise_aware)")
    else:
        reward = _REGISTRY[key](**kwargs)
        reward.name = key
    if normalize is not None:
        from .composite import Normalized

        reward = Normalized(reward, *normalize)
    return reward


def _lazy(module: str, attr: str, **fixed: Any) -> Callable[..., Reward]:
    """A factory importing ``steer.rewards.<module>.<attr>`` on first use (heavy deps load lazily)."""

    def factory(**kwargs: Any) -> Reward:
        import importlib

        cls = getattr(importlib.import_module(f"steer.rewards.{module}"), attr)
        return cls(**fixed, **kwargs)

    factory.__name__ = f"{attr}_factory"
    return factory


def _shapes_clip(**kwargs: Any) -> Reward:
    from steer.shapes import load_reward  # steer.shapes imports steer.rewards: import lazily

    return load_reward(**kwargs)


register_reward("clip", _lazy("clip", "OpenCLIPScore"))
register_reward("hf_clip", _lazy("hf_clip", "TransformersCLIPScore"))
register_reward("aesthetic", _lazy("aesthetic", "AestheticScore"))
register_reward("pickscore", _lazy("pickscore", "PickScore"))
register_reward("hpsv2", _lazy("hps", "HPSv2", version="v2.0"))
register_reward("hpsv2.1", _lazy("hps", "HPSv2", version="v2.1"))
register_reward("imagereward", _lazy("imagereward", "ImageReward"))
def _shapes_noise_aware(model: str):
    def factory(**kwargs: Any) -> Reward:
        from steer.shapes import load_noise_aware_reward

        return load_noise_aware_reward(model, **kwargs)

    return factory


register_reward("shapes_clip", _shapes_clip)
register_reward("shapes_noise_aware_sd", _shapes_noise_aware("sd"))
register_reward("shapes_noise_aware_flow", _shapes_noise_aware("flow"))
