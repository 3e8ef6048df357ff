"""Labelled synthetic objects for the detector: posed shapes a person recognises, and blobs a person does not.

Generative models of the shapes world draw tilted, stretched, blurred and shaded shapes, and
also blobs: shields, teardrops, beans, capsules, fused pairs, crescents, half-discs, notched
and L-shaped slabs, kites. :func:`sample_object` draws one of either kind as an opacity map;
:func:`compose` paints objects (with optional colour gradients) onto the shapes background
with blur, gain drift and noise. The detector's thresholds are calibrated on these
(``benchmarks/shapes_audit.py calibrate``) and the tests use them as adversarial scenes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import SUPERSAMPLE, _local, coverage, inside
from .world import BACKGROUND, PALETTE

#: blob kinds a person does not call a circle, square or triangle
BLOBS: tuple[str, ...] = ("shield", "teardrop", "bean", "capsule", "long_ellipse", "slab", "fused_pair", "crescent",
                          "half_disc", "notched", "l_shape", "kite", "pentagon")
#: (low, high) aspect ratios a person still accepts per shape (width / height in the shape's frame)
SHAPE_ASPECTS = {"circle": (1.0, 1.2), "square": (1.0, 1.35), "triangle": (0.7, 1.9)}


def _grid(cx, cy, angle, size: int):
    return _local(cx, cy, angle, size, size)


def _pool(mask: np.ndarray, size: int) -> np.ndarray:
    s = SUPERSAMPLE
    return mask.reshape(size, s, size, s).mean(axis=(1, 3))


def blob_coverage(kind: str, cx: float, cy: float, area: float, angle: float, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Coverage ``(size, size)`` of one blob of roughly ``area`` pixels."""
    u, v = _grid(cx, cy, angle, size)
    u, v = u[0], v[0]
    r = np.sqrt(area / np.pi)
    if kind == "shield":  # round top, pointed bottom
        top = (u**2 + v**2 <= r**2) & (v <= 0)
        depth = r * rng.uniform(1.2, 1.8)
        bottom = (v >= 0) & (v <= depth) & (np.abs(u) <= r * (1 - v / depth))
        m = top | bottom
    elif kind == "teardrop":  # a disc with a stem or point
        stem = rng.uniform(1.4, 2.4) * r
        width = r * rng.uniform(0.25, 0.6)
        m = (u**2 + v**2 <= r**2) | ((v >= 0) & (v <= stem) & (np.abs(u) <= width * (1 - v / stem) + 0.35))
    elif kind == "bean":  # two overlapping discs
        d = r * rng.uniform(0.7, 1.3)
        r2 = r * rng.uniform(0.75, 1.0)
        m = ((u - d / 2) ** 2 + v**2 <= (0.8 * r) ** 2) | ((u + d / 2) ** 2 + v**2 <= (0.8 * r2) ** 2)
    elif kind == "capsule":
        half = r * rng.uniform(0.8, 1.4)
        w = 0.75 * r
        m = ((np.abs(u) <= half) & (np.abs(v) <= w)) | ((np.abs(u) - half) ** 2 + v**2 <= w**2)
    elif kind == "long_ellipse":
        m = inside("circle", u[None], v[None], area, rng.uniform(1.45, 2.2))[0]
    elif kind == "slab":
        m = inside("square", u[None], v[None], area, rng.uniform(1.7, 2.6))[0]
    elif kind == "fused_pair":  # two shapes of one colour overlapping or touching
        shape = ["circle", "square", "triangle"][int(rng.integers(3))]
        d = np.sqrt(area) * rng.uniform(0.55, 0.95)
        m = inside(shape, (u - d / 2)[None], v[None], area * 0.55, 1.0)[0] | inside(shape, (u + d / 2)[None], (v + rng.uniform(-0.3, 0.3) * d)[None], area * 0.55, 1.0)[0]
    elif kind == "crescent":
        off = r * rng.uniform(0.5, 0.8)
        m = (u**2 + v**2 <= (1.2 * r) ** 2) & ((u - off) ** 2 + v**2 > (1.1 * r) ** 2)
    elif kind == "half_disc":
        R = r * 1.4
        m = (u**2 + v**2 <= R**2) & (v <= R * rng.uniform(0.0, 0.25))
    elif kind == "notched":  # a square missing a corner quarter
        h = np.sqrt(area) * 1.15
        q = h * rng.uniform(0.35, 0.5)
        m = (np.abs(u) <= h / 2) & (np.abs(v) <= h / 2) & ~((u > h / 2 - q) & (v < -h / 2 + q))
    elif kind == "l_shape":
        h = np.sqrt(area) * 1.4
        t = h * rng.uniform(0.35, 0.5)
        m = ((np.abs(u) <= h / 2) & (np.abs(v) <= h / 2)) & ((u < -h / 2 + t) | (v > h / 2 - t))
    elif kind == "kite":  # a rhombus with unequal half-diagonals a > b (about twice ``area``)
        a = np.sqrt(area) * rng.uniform(1.15, 1.4)
        b = area / a
        m = np.abs(u) / b + np.abs(v) / a <= 1.0
    elif kind == "pentagon":
        k = np.arange(5) * 2 * np.pi / 5
        R = np.sqrt(area / (2.5 * np.sin(2 * np.pi / 5)))
        m = np.ones_like(u, dtype=bool)
        for t in k:  # intersection of the half-planes of a regular pentagon
            n = np.array([np.sin(t + np.pi / 5), -np.cos(t + np.pi / 5)])
            m &= u * n[0] + v * n[1] <= R * np.cos(np.pi / 5)
    else:
        raise ValueError(f"unknown blob kind {kind!r} (known: {', '.join(BLOBS)})")
    return _pool(m, size)


def warp(cov: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Wobble an object's outline: a smooth random displacement field of about ``amplitude`` pixels."""
    if amplitude <= 0:
        return cov
    h, w = cov.shape
    field = [ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 3.0) for _ in range(2)]
    field = [f / max(np.abs(f).max(), 1e-9) * amplitude for f in field]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return ndimage.map_coordinates(cov, [ys + field[0], xs + field[1]], order=1, mode="constant")


def sample_object(rng: np.random.Generator, kind: str, size: int = 32, area: tuple[float, float] = (30, 160),
                  wobble: float = 0.7) -> np.ndarray:
    """Coverage of one random object of ``kind`` (a shape name or a blob kind), centred near the middle.

    Shapes get a random rotation and an aspect ratio a person still accepts (:data:`SHAPE_ASPECTS`);
    every object's outline wobbles by up to ``wobble`` pixels, as generated outlines do.
    """
    a = float(np.exp(rng.uniform(np.log(area[0]), np.log(area[1]))))
    cx, cy = (size / 2 + rng.uniform(-3, 3) for _ in range(2))
    angle = float(rng.uniform(0, 360))
    if kind in SHAPE_ASPECTS:
        lo, hi = SHAPE_ASPECTS[kind]
        cov = coverage(kind, cx, cy, a, rng.uniform(lo, hi), angle, size, size)[0]
        if kind == "triangle" and rng.random() < 0.5:  # tent-like: sides bowed inwards, as flow models draw them
            u, v = _grid(cx, cy, angle, size)
            asp, h = rng.uniform(lo, hi), np.sqrt(2 * a / 1.2)
            frac = (v[0] + 2 * h / 3) / h
            cov = _pool((frac >= 0) & (frac <= 1) & (np.abs(u[0]) <= asp * h / 2 * np.clip(frac, 0, 1) ** rng.uniform(1.2, 1.8)), size)
    else:
        cov = blob_coverage(kind, cx, cy, a, angle, rng, size)
    return warp(cov, rng, rng.uniform(0, wobble))


def compose(layers: list[tuple[np.ndarray, str] | tuple[np.ndarray, str, str]], rng: np.random.Generator | None = None,
            blur: float = 0.6, drift: bool = True) -> np.ndarray:
    """Paint ``(coverage, colour)`` layers (or ``(coverage, colour, colour_b)``: a left-to-right gradient) as uint8 RGB."""
    size = layers[0][0].shape[0]
    img = np.broadcast_to(np.asarray(BACKGROUND, dtype=np.float64), (size, size, 3)).copy()
    for layer in layers:
        cov = layer[0][..., None]
        col = np.asarray(PALETTE[layer[1]], dtype=np.float64)
        if len(layer) == 3:  # shade across the object's horizontal extent
            xs = np.nonzero(layer[0].sum(0) > 0)[0]
            t = np.clip((np.arange(size) - xs.min()) / max(xs.max() - xs.min(), 1), 0, 1)[None, :, None]
            col = col * (1 - t) + np.asarray(PALETTE[layer[2]], dtype=np.float64) * t
        img = img * (1 - cov) + col * cov
    if blur:
        img = ndimage.gaussian_filter(img, sigma=(blur, blur, 0))
    if drift:
        rng = rng or np.random.default_rng(0)
        img = img * rng.uniform(0.92, 1.06, size=3) + rng.normal(0, 3, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
