"""Pixel coverage of posed shapes: any centre, area, aspect ratio and rotation (numpy, vectorised).

A *pose* places a shape by its centroid ``(cx, cy)``, its area in pixels, its aspect ratio
(width / height in the shape's own frame) and a rotation in degrees (counter-clockwise on
screen). Coverage is the fraction of each pixel inside the shape, from a supersampled grid.
Many poses are evaluated at once: the detector's template bank and the synthetic test
scenes (:mod:`steer.shapes.synthetic`) both use this.
"""

from __future__ import annotations

import numpy as np

SUPERSAMPLE = 4


def _local(cx, cy, angle, height: int, width: int, x0: int = 0, y0: int = 0, supersample: int = SUPERSAMPLE):
    """Supersampled pixel centres in each pose's frame: arrays ``(P, H·s, W·s)`` (u right, v down, unrotated)."""
    s = supersample
    ys = y0 + (np.arange(height * s) + 0.5) / s
    xs = x0 + (np.arange(width * s) + 0.5) / s
    cx, cy, th = (np.asarray(v, dtype=np.float64).reshape(-1, 1, 1) for v in (cx, cy, np.deg2rad(angle)))
    dx, dy = xs[None, None, :] - cx, ys[None, :, None] - cy
    cos, sin = np.cos(th), np.sin(th)
    # rotate the offset by -angle (screen y points down, so a positive angle turns the shape counter-clockwise)
    return cos * dx - sin * dy, sin * dx + cos * dy


def inside(shape: str, u: np.ndarray, v: np.ndarray, area, aspect, taper=0.0) -> np.ndarray:
    """Whether points ``(u, v)`` in a shape's own centroid frame lie inside it.

    ``taper`` (squares only) widens the bottom edge and narrows the top by that fraction of the
    width, keeping the area: a square drawn as a slight trapezoid.
    """
    area = np.asarray(area, dtype=np.float64).reshape(-1, 1, 1)
    aspect = np.asarray(aspect, dtype=np.float64).reshape(-1, 1, 1)
    taper = np.asarray(taper, dtype=np.float64).reshape(-1, 1, 1)
    if shape == "circle":  # ellipse with semi-axes a (u) and b (v)
        b = np.sqrt(area / (np.pi * aspect))
        return (u / (aspect * b)) ** 2 + (v / b) ** 2 <= 1.0
    if shape == "square":  # rectangle w × h
        h = np.sqrt(area / aspect)
        return (np.abs(u) <= aspect * h / 2 * (1 + taper * v / h)) & (np.abs(v) <= h / 2)
    if shape == "triangle":  # isosceles, apex up, base b, height h, centroid h/3 above the base
        h = np.sqrt(2 * area / aspect)
        frac = (v + 2 * h / 3) / h  # 0 at the apex, 1 at the base
        return (frac >= 0) & (frac <= 1) & (np.abs(u) <= aspect * h / 2 * frac)
    raise ValueError(f"unknown shape {shape!r}")


def coverage(shape: str, cx, cy, area, aspect=1.0, angle=0.0, height: int = 32, width: int = 32,
             x0: int = 0, y0: int = 0, supersample: int = SUPERSAMPLE, taper=0.0) -> np.ndarray:
    """Coverage ``(P, height, width)`` of ``P`` poses (scalars broadcast) on the window at ``(x0, y0)``."""
    n = max(np.size(v) for v in (cx, cy, area, aspect, angle, taper))
    cx, cy, area, aspect, angle, taper = (np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (cx, cy, area, aspect, angle, taper))
    u, v = _local(cx, cy, angle, height, width, x0, y0, supersample)
    m = inside(shape, u, v, area, aspect, taper)
    s = supersample
    return m.reshape(n, height, s, width, s).mean(axis=(2, 4))


def box_of(shape: str, cx: float, cy: float, area: float, aspect: float, angle: float) -> tuple[float, float, float, float]:
    """Axis-aligned bounding box ``(x0, y0, x1, y1)`` of a posed shape."""
    if shape == "circle":
        b = np.sqrt(area / (np.pi * aspect))
        a = aspect * b
        th = np.deg2rad(angle)
        hx = np.sqrt((a * np.cos(th)) ** 2 + (b * np.sin(th)) ** 2)
        hy = np.sqrt((a * np.sin(th)) ** 2 + (b * np.cos(th)) ** 2)
        return (cx - hx, cy - hy, cx + hx, cy + hy)
    if shape == "square":
        h = np.sqrt(area / aspect)
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [aspect * h / 2, h / 2]
    else:
        h = np.sqrt(2 * area / aspect)
        pts = np.array([[0, -2 * h / 3], [-aspect * h / 2, h / 3], [aspect * h / 2, h / 3]])
    th = np.deg2rad(angle)
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])  # screen coordinates, y down
    p = pts @ rot.T + [cx, cy]
    return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))
