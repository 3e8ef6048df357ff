"""CLIPScore with open_clip models: any open_clip name + pretrained tag, hub repo, or local folder."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch

from .base import Reward
from .preprocess import OPENAI_MEAN, OPENAI_STD, as_size, normalize_images
from .weights import hub_access, weights_not_found


def open_clip_name(model: str | Path) -> str:
    """``model`` as an open_clip identifier: an existing folder becomes ``local-dir:/abs/path``."""
    model = str(model)
    if not model.startswith(("local-dir:", "hf-hub:")) and Path(model).is_dir():
        return f"local-dir:{Path(model).resolve()}"
    return model


def load_open_clip(model: str | Path, pretrained: str | None, device: str | torch.device = "cpu") -> tuple[Any, Any, dict]:
    """``(model, tokenizer, preprocess_cfg)`` of an open_clip model, in eval mode and frozen.

    ``pretrained`` (a tag or a checkpoint file) applies to plain model names only; ``local-dir:``
    and ``hf-hub:`` identifiers carry their own weights. Missing weights raise
    :class:`~steer.rewards.weights.RewardWeightsNotFound`.
    """
    import open_clip

    name = open_clip_name(model)
    with_schema = name.startswith(("local-dir:", "hf-hub:"))
    with hub_access() if not name.startswith("local-dir:") else nullcontext():
        try:
            net = open_clip.create_model(name, pretrained=None if with_schema else pretrained, device=device)
            tokenizer = open_clip.get_tokenizer(name)
        except (FileNotFoundError, OSError, RuntimeError) as e:
            hub = (open_clip.get_pretrained_cfg(name, pretrained or "") or {}).get("hf_hub", "") if not with_schema else ""
            repo = hub.strip("/") or (name.removeprefix("hf-hub:") if name.startswith("hf-hub:") else None)
            raise weights_not_found(f"open_clip model {name!r} (pretrained={pretrained!r})", e, repo_id=repo) from e
    net.eval().requires_grad_(False)
    return net, tokenizer, dict(open_clip.get_model_preprocess_cfg(net))


def pil_transform(model, cfg: dict):
    """open_clip's eval transform (PIL image → normalised tensor) for ``model`` and its preprocess ``cfg``."""
    import open_clip

    return open_clip.image_transform(
        cfg.get("size", model.visual.image_size), is_train=False, mean=cfg.get("mean"), std=cfg.get("std"),
        resize_mode=cfg.get("resize_mode"), interpolation=cfg.get("interpolation"), fill_color=cfg.get("fill_color", 0),
    )


class OpenCLIPScore(Reward):
    """Cosine similarity of open_clip image and text embeddings, times ``scale`` (CLIPScore).

    Args:
        model: an open_clip model name (``"ViT-B-32"``), ``"hf-hub:org/repo"``, a folder, or
            ``"local-dir:/path"`` (a folder with ``open_clip_config.json``, weights, tokenizer).
        pretrained: pretrained tag or checkpoint path, for plain model names.
        scale: multiplier of the cosine (CLIPScore uses 100, or 2.5 with clipping at 0).
        dtype: optional dtype to cast the model to (e.g. ``torch.float16`` on GPU).
    """

    name = "clip"
    differentiable = True

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = "openai",
        scale: float = 100.0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self._setup(*load_open_clip(model, pretrained, device), scale=scale, device=device, dtype=dtype)

    def _setup(self, model, tokenizer, cfg: dict, scale: float, device: str | torch.device, dtype: torch.dtype | None) -> None:
        self.model, self.tokenizer = model, tokenizer
        if dtype is not None:
            self.model.to(dtype)
        self.image_size = as_size(cfg.get("size", self.model.visual.image_size))
        dt = dtype or torch.float32
        self.register_buffer("mean", torch.tensor(cfg.get("mean", OPENAI_MEAN), dtype=dt, device=device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", OPENAI_STD), dtype=dt, device=device).view(1, 3, 1, 1))
        self.scale = scale
        self.resize_mode = "crop"
        self._text_cache: dict[str, torch.Tensor] = {}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable resize (bicubic, antialiased) + centre crop + normalisation of [0, 1] images."""
        return normalize_images(images, self.image_size, self.mean, self.std, mode=self.resize_mode)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, D)`` of [0, 1] images."""
        return self.model.encode_image(self.preprocess(images), normalize=True)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, D)``, cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                feats = self.model.encode_text(self.tokenizer(missing).to(self.mean.device), normalize=True)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        img = self.image_features(images)
        return (self.scale * (img * self.text_features(prompts).to(img.device, img.dtype)).sum(-1)).float()
