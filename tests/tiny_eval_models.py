"""Tiny random-weight evaluator models saved to disk, loaded back through the user-facing ``from_pretrained`` paths."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from steer.eval.detectors import GENEVAL_CLASSES


def write_mask2former_dir(folder: Path, seed: int = 0, labels: Sequence[str] = GENEVAL_CLASSES, size: int = 64) -> Path:
    """A tiny random ``Mask2FormerForUniversalSegmentation`` (Swin backbone) + ``Mask2FormerImageProcessor`` in ``folder``."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone = SwinConfig(
        image_size=size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    id2label = dict(enumerate(labels))
    config = Mask2FormerConfig(
        backbone_config=backbone, hidden_dim=32, mask_feature_size=32, feature_size=32, num_queries=10,
        encoder_layers=1, decoder_layers=2, encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
        common_stride=4, id2label=id2label, label2id={v: k for k, v in id2label.items()}, num_labels=len(labels),
    )
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # make a few queries confident so that detections pass the score threshold
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[: len(labels)].normal_(0, 4)
    model.save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": size, "longest_edge": 2 * size}, size_divisor=32).save_pretrained(folder)
    return folder
