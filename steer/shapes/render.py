"""Deterministic anti-aliased renderer for shapes scenes (numpy only)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .world import BACKGROUND, PALETTE, Scene

SUPERSAMPLE = 4


def shape_coverage(shape: str, box: tuple[float, float, float, float], height: int, width: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by ``shape`` inscribed in ``box`` (x0, y0, x1, y1).

    Circles become ellipses and triangles stay upright (apex up) when the box is not square.
    """
    x0, y0, x1, y1 = box
    s = supersample
    ys = (np.arange(height * s) + 0.5) / s
    xs = (np.arange(width * s) + 0.5) / s
    y, x = np.meshgrid(ys, xs, indexing="ij")
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1e-6), max((y1 - y0) / 2, 1e-6)
    if shape == "circle":
        inside = ((x - cx) / hw) ** 2 + ((y - cy) / hh) ** 2 <= 1.0
    elif shape == "square":
        inside = (np.abs(x - cx) <= hw) & (np.abs(y - cy) <= hh)
    elif shape == "triangle":
        frac = (y - y0) / (y1 - y0 + 1e-9)  # 0 at the apex, 1 at the base
        inside = (frac >= 0) & (frac <= 1) & (np.abs(x - cx) <= hw * frac)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(height, s, width, s).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    """Render a scene to an ``(H, W, 3)`` uint8 array."""
    n = scene.image_size
    img = np.broadcast_to(np.asarray(BACKGROUND, dtype=np.float64), (n, n, 3)).copy()
    for obj in scene.objects:
        cov = shape_coverage(obj.shape, obj.box, n, n)[..., None]
        img = img * (1 - cov) + np.asarray(PALETTE[obj.color], dtype=np.float64) * cov
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline images in [0, 1] (``output_type="np"``) → uint8, the evaluator's input, rounded as PIL output is."""
    return np.clip(np.rint(np.asarray(images) * 255), 0, 255).astype(np.uint8)


def render_pil(scene: Scene) -> Image.Image:
    return Image.fromarray(render(scene))
