"""Exact detector and evaluator for generated shapes images.

Detection: pixels far enough from the background are foreground; each gets the palette
colour of nearest hue; connected components of the foreground are split by colour where
two colours each hold a real share; each part's shape is the template (circle, square,
upright triangle, drawn into the part's bounding box) with the best IoU, and that IoU is
the detection's confidence. Hue- and coverage-based tests make it robust to the blur and
the brightness/colour drift a generative model produces.

Scoring: the GenEval rules of :mod:`steer.eval.geneval`, with confidence thresholds
calibrated for this detector (:data:`SHAPES_RULES`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..eval.geneval import Detection, RuleConfig, Verdict, evaluate_detections, summarize
from .render import shape_coverage
from .world import BACKGROUND, PALETTE, SHAPES

#: IoU-confidence thresholds for this detector (GenEval's are 0.3/0.9 for Mask2Former scores).
SHAPES_RULES = RuleConfig(threshold=0.5, counting_threshold=0.6)
MIN_AREA = 10  # pixels; the smallest object (8 px triangle) covers about 30
MIN_COVERAGE = 0.45  # estimated opacity above which a pixel is foreground
MIN_SATURATION = 0.25
MIN_SHARE = 0.3  # a second colour inside a component becomes its own part above this share


def _to_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255)
    return arr.astype(np.float64) / 255.0


def _hue_sat(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-9), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.maximum(delta, 1e-9)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return hue, sat


_NAMES = list(PALETTE)
_PAL = np.array([PALETTE[c] for c in _NAMES], dtype=np.float64) / 255.0
_BG = np.array(BACKGROUND, dtype=np.float64) / 255.0
_PAL_HUE, _ = _hue_sat(_PAL)


def segment(image) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel palette index (``-1`` for background) and estimated opacity."""
    rgb = _to_array(image)
    hue, sat = _hue_sat(rgb)
    dh = np.abs(hue[..., None] - _PAL_HUE)
    dh = np.minimum(dh, 360.0 - dh)
    idx = dh.argmin(-1)
    # opacity of the nearest palette colour over the background, by projection
    direction = _PAL[idx] - _BG
    alpha = ((rgb - _BG) * direction).sum(-1) / (direction**2).sum(-1)
    fg = (alpha > MIN_COVERAGE) & (sat > MIN_SATURATION)
    return np.where(fg, idx, -1), alpha


_SIGMAS = (0.0, 0.7, 1.4)  # blur levels tried when matching templates


def _classify(alpha: np.ndarray, mask: np.ndarray, region: np.ndarray) -> tuple[str, float, tuple[float, float, float, float]]:
    """Best-matching shape for one part: (shape, soft IoU, fitted box).

    Each shape's template is sized from the part's soft area (blur preserves it), centred
    on its soft centroid, blurred at a few levels, and compared by soft IoU with the
    part's opacity map; the best match wins.
    """
    plateau = np.percentile(alpha[mask], 90)
    a = np.where(region, np.clip(alpha / max(plateau, 1e-6), 0.0, 1.0), 0.0)
    area = a.sum()
    h, w = a.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = (a * xs).sum() / area, (a * ys).sum() / area
    best = (SHAPES[0], -1.0, (0.0, 0.0, 0.0, 0.0))
    for shape in SHAPES:
        side = {"circle": np.sqrt(4 * area / np.pi), "square": np.sqrt(area), "triangle": np.sqrt(2 * area)}[shape]
        by = cy - side / 6 if shape == "triangle" else cy  # a triangle's centroid sits 2/3 down its box
        box = (cx - side / 2, by - side / 2, cx + side / 2, by + side / 2)
        tmpl = shape_coverage(shape, box, h, w)
        for sigma in _SIGMAS:
            t = ndimage.gaussian_filter(tmpl, sigma) if sigma else tmpl
            iou = float(np.minimum(a, t).sum() / max(np.maximum(a, t).sum(), 1e-9))
            if iou > best[1]:
                best = (shape, iou, tuple(float(v) for v in box))
    return best


def detect(image) -> list[Detection]:
    """Find the shapes in an image (PIL image or ``(H, W, 3)`` array, uint8 or float in [0, 1])."""
    labels, alpha = segment(image)
    fg = labels >= 0
    comps, n = ndimage.label(fg)
    parts: list[tuple[np.ndarray, int]] = []
    for k in range(1, n + 1):
        comp = comps == k
        if comp.sum() < MIN_AREA:
            continue
        colors, counts = np.unique(labels[comp], return_counts=True)
        major = [c for c, m in zip(colors, counts) if m >= MIN_AREA and m / counts.sum() >= MIN_SHARE]
        if len(major) <= 1:
            parts.append((comp, int(colors[counts.argmax()])))  # one object, coloured by its majority
            continue
        for c in major:  # touching objects of different colours
            sub, m = ndimage.label(comp & (labels == c))
            parts += [(sub == j, int(c)) for j in range(1, m + 1) if (sub == j).sum() >= MIN_AREA]
    dets: list[Detection] = []
    for i, (mask, c) in enumerate(parts):
        others = np.zeros_like(fg)
        for j, (m, _) in enumerate(parts):
            if j != i:
                others |= m
        region = ndimage.binary_dilation(mask, iterations=2) & ~others
        shape, iou, box = _classify(alpha, mask, region)
        dets.append(Detection(label=shape, score=iou, box=box, color=_NAMES[c], mask=mask))
    return dets


def evaluate_image(image, record: dict, rules: RuleConfig = SHAPES_RULES) -> Verdict:
    """Score one image against one GenEval record of the shapes world."""
    return evaluate_detections(record, detect(image), config=rules)


def evaluate_images(images: Iterable, records: Sequence[dict], rules: RuleConfig = SHAPES_RULES) -> dict:
    """Score images against records (paired); returns :func:`steer.eval.geneval.summarize` plus per-image verdicts."""
    verdicts = [evaluate_image(img, rec, rules) for img, rec in zip(images, records, strict=True)]
    out = summarize(verdicts)
    out["verdicts"] = verdicts
    return out
