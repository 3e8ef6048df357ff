"""CLIPScore with open_clip models: any open_clip name + pretrained tag, hub repo, or local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .base import Reward


def _offline_hint(what: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load {what}: {err}. The weights are not available locally. Download them once where "
        "the hub is reachable (they land in the Hugging Face cache), or pass a local folder / checkpoint path."
    )


class OpenCLIPScore(Reward):
    """Cosine similarity of open_clip image and text embeddings, times ``scale`` (CLIPScore).

    Args:
        model: an open_clip model name (``"ViT-B-32"``), ``"hf-hub:org/repo"``, or
            ``"local-dir:/path"`` (a folder with ``open_clip_config.json``, weights, tokenizer).
        pretrained: pretrained tag or checkpoint path, for plain model names.
        scale: multiplier of the cosine (CLIPScore uses 100, or 2.5 with clipping at 0).
    """

    name = "clip"
    differentiable = True

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai", scale: float = 100.0, device: str | torch.device = "cpu"):
        super().__init__()
        import open_clip

        if Path(model).is_dir():
            model = f"local-dir:{Path(model).resolve()}"
        try:
            self.model = open_clip.create_model(model, pretrained=pretrained if not model.startswith(("local-dir:", "hf-hub:")) else None, device=device)
            self.tokenizer = open_clip.get_tokenizer(model)
        except (FileNotFoundError, OSError, RuntimeError) as e:
            raise _offline_hint(f"open_clip model {model!r} (pretrained={pretrained!r})", e) from e
        self.model.eval().requires_grad_(False)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", self.model.visual.image_size)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1))
        self.scale = scale
        self._text_cache: dict[str, torch.Tensor] = {}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable resize (bicubic, antialiased) + normalisation of [0, 1] images."""
        x = images.to(self.mean.device, self.mean.dtype)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                feats = self.model.encode_text(self.tokenizer(missing).to(self.mean.device), normalize=True)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        img = self.model.encode_image(self.preprocess(images), normalize=True)
        return self.scale * (img * self.text_features(prompts).to(img.dtype)).sum(-1)
