"""CLIPScore with a transformers ``CLIPModel`` (hub name or local folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .base import Reward
from .preprocess import OPENAI_MEAN, OPENAI_STD, as_size, normalize_images
from .weights import from_pretrained


def _image_processor_cfg(name_or_path: str | Path) -> dict:
    """The ``preprocessor_config.json`` of ``name_or_path`` as a dict, or ``{}`` if there is none."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        cfg, _ = ImageProcessingMixin.get_image_processor_dict(str(name_or_path))
        return dict(cfg)
    except (OSError, ValueError):
        return {}


def _edge(v: int | dict | None, key: str) -> int | None:
    if isinstance(v, dict):
        return v.get(key) or v.get("height")
    return v


class TransformersCLIPScore(Reward):
    """Cosine similarity of transformers CLIP image and text embeddings, times ``scale``.

    Args:
        model_name_or_path: a hub id (resolved through the Hugging Face cache) or a local folder
            written by ``CLIPModel.save_pretrained``.
        tokenizer_name_or_path: where the tokenizer and ``preprocessor_config.json`` live
            (default: ``model_name_or_path``). Image size/mean/std come from the latter if present,
            else from the model config and OpenAI's statistics.
        scale: multiplier of the cosine; ``None`` uses the model's ``logit_scale.exp()``.
        dtype: optional dtype to cast the model to.
    """

    name = "hf_clip"
    differentiable = True

    def __init__(
        self,
        model_name_or_path: str | Path = "openai/clip-vit-large-patch14",
        tokenizer_name_or_path: str | Path | None = None,
        scale: float | None = 100.0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel

        tok_path = tokenizer_name_or_path if tokenizer_name_or_path is not None else model_name_or_path
        self.model = from_pretrained(CLIPModel.from_pretrained, model_name_or_path, "CLIP model")
        self.tokenizer = from_pretrained(AutoTokenizer.from_pretrained, tok_path, "CLIP tokenizer")
        self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        proc = _image_processor_cfg(tok_path)
        vis = self.model.config.vision_config
        self.image_size = as_size(_edge(proc.get("crop_size"), "height") or vis.image_size)
        self.shortest_edge = _edge(proc.get("size"), "shortest_edge") or min(self.image_size)
        dt = dtype or torch.float32
        self.register_buffer("mean", torch.tensor(proc.get("image_mean", OPENAI_MEAN), dtype=dt, device=device))
        self.register_buffer("std", torch.tensor(proc.get("image_std", OPENAI_STD), dtype=dt, device=device))
        self.max_length = min(int(self.tokenizer.model_max_length), int(self.model.config.text_config.max_position_embeddings))
        self.scale = scale
        self._text_cache: dict[str, torch.Tensor] = {}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable resize + centre crop + normalisation of [0, 1] images."""
        return normalize_images(images, self.image_size, self.mean, self.std, self.shortest_edge)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, D)``."""
        out = self.model.vision_model(pixel_values=self.preprocess(images))
        return F.normalize(self.model.visual_projection(out.pooler_output), dim=-1)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, D)``, cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tok = self.tokenizer(missing, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                out = self.model.text_model(input_ids=tok.input_ids.to(self.mean.device), attention_mask=tok.attention_mask.to(self.mean.device))
                feats = F.normalize(self.model.text_projection(out.pooler_output), dim=-1)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def logit_scale(self) -> torch.Tensor | float:
        return self.scale if self.scale is not None else self.model.logit_scale.exp()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        img = self.image_features(images)
        cos = (img * self.text_features(prompts).to(img.device, img.dtype)).sum(-1)
        return (self.logit_scale() * cos).float()

