"""Differentiable CLIP-style image preprocessing of [0, 1] tensors (resize, centre crop, normalise)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from an int or a pair."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_center_crop(images: torch.Tensor, size: tuple[int, int], shortest_edge: int | None = None) -> torch.Tensor:
    """Resize the shorter side to ``shortest_edge`` (default: just covering ``size``; bicubic,
    antialiased), then centre-crop to ``size``.

    Like torchvision's ``Resize(n) + CenterCrop(n)`` used by CLIP processors, but on tensors, so
    gradients reach the pixels. Values are clamped to [0, 1] after resizing, as an 8-bit image would be.
    """
    h, w = images.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw) and shortest_edge in (None, min(th, tw)):
        return images
    scale = shortest_edge / min(h, w) if shortest_edge else max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = int(round((nh - th) / 2)), int(round((nw - tw) / 2))
    return x[..., top : top + th, left : left + tw]


def resize_pad(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize the longer side to fit ``size`` (bicubic, antialiased), then pad with black, centred
    (open_clip's ``ResizeMaxSize``, used by HPSv2's evaluation transform)."""
    h, w = images.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return images
    scale = min(th / h, tw / w)
    nh, nw = min(th, round(h * scale)), min(tw, round(w * scale))
    x = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    ph, pw = th - nh, tw - nw
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def normalize_images(
    images: torch.Tensor,
    size: tuple[int, int],
    mean: torch.Tensor,
    std: torch.Tensor,
    shortest_edge: int | None = None,
    mode: str = "crop",
) -> torch.Tensor:
    """[0, 1] images ``(B, 3, H, W)`` -> model input of ``size``, ``(x - mean) / std`` (``mean``'s dtype/device).

    ``mode="crop"``: :func:`resize_center_crop`; ``mode="pad"``: :func:`resize_pad`.
    """
    x = images.to(mean.device, mean.dtype)
    if mode == "pad":
        x = resize_pad(x, size)
    elif mode == "crop":
        x = resize_center_crop(x, size, shortest_edge)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; use 'crop' or 'pad'")
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
