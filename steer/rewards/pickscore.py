"""PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences."""

from __future__ import annotations

from pathlib import Path

import torch

from .hf_clip import TransformersCLIPScore


class PickScore(TransformersCLIPScore):
    """PickScore of images against prompts (``yuvalkirstain/PickScore_v1`` by default).

    Score = ``logit_scale.exp() * cosine`` (about 18-24 for typical images), as the reference code.
    The tokenizer and image preprocessing come from ``processor_name_or_path``.
    """

    name = "pickscore"

    def __init__(
        self,
        model_name_or_path: str | Path = "yuvalkirstain/PickScore_v1",
        processor_name_or_path: str | Path = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        super().__init__(model_name_or_path, processor_name_or_path, scale=None, device=device, dtype=dtype)
