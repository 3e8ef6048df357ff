"""Exact detector and evaluator for generated shapes images.

Detection, in three steps:

1. **Foreground and colour.** Pixels far enough from the background (estimated opacity over
   it, and saturation) are foreground; each gets the palette colour of nearest hue.
2. **Objects.** Connected foreground components are objects. A component holding a second
   colour is explained both ways, as one object (a shaded object) and as one object per
   colour region (touching objects, each fitted with the other's pixels ignored, since it may
   hide under them); the explanation whose shapes fit better wins, so a colour gradient
   inside one object does not split it and two touching objects of different colours are
   split at their boundary.
3. **Shape.** Each object's opacity map is matched against a bank of posed templates
   (:mod:`steer.shapes.geometry`): circles and mild ellipses, squares, near-square rectangles
   and slight trapezoids, isosceles triangles, at every rotation, sized from the object's soft
   area and centred on its soft centroid, then refined at a few blur levels. The soft IoU of
   the best template is the confidence. The best class is accepted only when the fit passes
   that class's :class:`Acceptance` (:data:`ACCEPT`: IoU, lead over the runner-up class, how far
   the outline spikes out, solidity); otherwise the object is *unrecognised* (label
   ``"unknown"``) and counts as no object of any class, as GenEval's detector would miss a
   blob. The thresholds were chosen by ``benchmarks/shapes_audit.py calibrate`` on labelled
   data: synthetic shapes and blobs, and the even half of the hand-labelled audit set.

Scoring: the GenEval rules of :mod:`steer.eval.geneval` (:data:`SHAPES_RULES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..eval.geneval import Detection, RuleConfig, Verdict, evaluate_detections, summarize
from .geometry import box_of, coverage
from .world import BACKGROUND, PALETTE, SHAPES

UNKNOWN = "unknown"  #: label of an object whose shape is not recognised


@dataclass(frozen=True)
class Acceptance:
    """When a best-fitting class is accepted: thresholds on the fit's features (calibrated, see the module doc)."""

    min_iou: float  # best-template soft IoU
    min_margin: float = 0.0  # lead over the runner-up class
    max_spike: float = float("inf")  # farthest outline radius over the median (points, stems)
    min_solidity: float = 0.0  # area over convex-hull area (bites, notches, fused pairs)

    def accepts(self, fit: "ShapeFit") -> bool:
        return (fit.iou >= self.min_iou and fit.margin >= self.min_margin and fit.spike <= self.max_spike
                and fit.solidity >= self.min_solidity)


#: per-class acceptance, chosen by ``benchmarks/shapes_audit.py calibrate`` on labelled synthetic shapes and blobs
ACCEPT: dict[str, Acceptance] = {
    "circle": Acceptance(min_iou=0.92, min_margin=0.06, max_spike=1.12),
    "square": Acceptance(min_iou=0.86, min_solidity=0.9),
    "triangle": Acceptance(min_iou=0.78),
}
#: the detector does the refusing (unrecognised objects never match a class); these only drop near-empty fits
SHAPES_RULES = RuleConfig(threshold=0.5, counting_threshold=0.5)
MIN_AREA = 10  # pixels; the smallest object (8 px triangle) covers about 30
MIN_COVERAGE = 0.45  # estimated opacity above which a pixel is foreground
MIN_SATURATION = 0.25
MIN_FRAGMENT = 4  # pixels of another colour from which a component is also fitted without them


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


# --- the template bank: (shape, aspect, angle) poses; sizes and centres come from each object ---

def _poses() -> dict[str, np.ndarray]:
    """Per class, rows of (aspect, angle, taper)."""
    circle = [(1.0, 0.0, 0.0)] + [(r, a, 0.0) for r in (1.12, 1.25) for a in range(0, 180, 15)]
    square = [(1.0, a, 0.0) for a in np.arange(0, 90, 7.5)] + [(r, a, 0.0) for r in (1.2, 1.4) for a in np.arange(0, 180, 7.5)]
    square += [(r, a, t) for r in (1.0, 1.2) for t in (0.15, 0.3) for a in range(0, 360, 15)]
    triangle = [(r, a, 0.0) for r in (0.7, 0.85, 1.0, 1.2, 1.45, 1.75) for a in range(0, 360, 10)]
    return {shape: np.array(p, dtype=np.float64) for shape, p in (("circle", circle), ("square", square), ("triangle", triangle))}


_BANK = _poses()
_SIGMAS = (0.0, 0.6, 1.0, 1.5)  # blur levels tried on each class's best poses
_PAD = 3  # window margin around an object, pixels


@dataclass
class ShapeFit:
    """The best template of each class for one object, and outline features (acceptance: :class:`Acceptance`)."""

    best: str  # the best-fitting class
    iou: float  # its soft IoU
    margin: float  # lead of the best class over the runner-up class
    ious: dict[str, float]  # best IoU per class
    box: tuple[float, float, float, float]
    spike: float = 1.0  # farthest outline point over the median outline radius (points and stems stick out)
    solidity: float = 1.0  # area over convex-hull area (bites, notches, L-shapes and fused pairs fall short)


def _soft_iou(a: np.ndarray, t: np.ndarray, keep: np.ndarray | float = 1.0) -> np.ndarray:
    """Soft IoU of one map ``(h, w)`` with templates ``(P, h, w)``, over the pixels ``keep`` marks."""
    return (np.minimum(a, t) * keep).sum((-2, -1)) / np.maximum((np.maximum(a, t) * keep).sum((-2, -1)), 1e-9)


def _outline(win: np.ndarray, cx: float, cy: float, x0: int, y0: int, zoom: int = 4, bins: int = 36) -> tuple[float, float]:
    """(spike, solidity) of the map's half-opacity region, upsampled ``zoom`` times.

    spike: the farthest outline radius from the centroid over the median one (per angular bin);
    solidity: the region's area over its convex hull's.
    """
    up = ndimage.zoom(win, zoom, order=1) > 0.5
    ys, xs = np.nonzero(up)
    if len(xs) < 3:
        return 1.0, 1.0
    dx, dy = x0 + (xs + 0.5) / zoom - cx, y0 + (ys + 0.5) / zoom - cy
    r = np.hypot(dx, dy)
    k = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    radius = np.zeros(bins)
    np.maximum.at(radius, k, r)
    spike = float(radius.max() / max(np.median(radius), 1e-6))
    try:  # hull of the pixel squares' corners, so a filled region has solidity 1
        pts = np.concatenate([np.stack([xs + a, ys + b], 1) for a in (0, 1) for b in (0, 1)]).astype(np.float64)
        hull = ConvexHull(pts).volume
    except QhullError:
        return spike, 1.0
    return spike, float(min(len(xs) / hull, 1.0))


def fit_shape(a: np.ndarray, ignore: np.ndarray | None = None) -> ShapeFit:
    """Classify one object from its normalised opacity map ``a`` (``(H, W)`` in [0, 1], zero off the object).

    ``ignore`` marks pixels where the object may be hidden (an object touching it): templates are
    compared with the map everywhere else, so an occluded shape is not penalised for its hidden part.
    """
    area = float(a.sum())
    ys, xs = np.nonzero(a > 0)
    h, w = a.shape
    y0, y1 = max(ys.min() - _PAD, 0), min(ys.max() + _PAD + 1, h)
    x0, x1 = max(xs.min() - _PAD, 0), min(xs.max() + _PAD + 1, w)
    win = a[y0:y1, x0:x1]
    keep = 1.0 if ignore is None else 1.0 - ignore[y0:y1, x0:x1].astype(np.float64)
    gy, gx = np.mgrid[y0:y1, x0:x1] + 0.5
    cx, cy = float((win * gx).sum() / area), float((win * gy).sum() / area)
    ious, poses = {}, {}
    for shape, bank in _BANK.items():
        aspects, angles = bank[:, 0], bank[:, 1]
        coarse = coverage(shape, cx, cy, area, aspects, angles, y1 - y0, x1 - x0, x0, y0, supersample=2, taper=bank[:, 2])
        best = np.argsort(-_soft_iou(win, coarse, keep))[:3]  # the best poses on a coarse grid, then finely
        t = coverage(shape, cx, cy, area, aspects[best], angles[best], y1 - y0, x1 - x0, x0, y0, taper=bank[best, 2])
        sharp = _soft_iou(win, t, keep)
        top = (float(sharp.max()), int(best[sharp.argmax()]))
        for j, k in enumerate(best):  # blur the best poses: generated objects have soft edges
            for sigma in _SIGMAS[1:]:
                iou = float(_soft_iou(win, ndimage.gaussian_filter(t[j], sigma)[None], keep)[0])
                if iou > top[0]:
                    top = (iou, int(k))
        ious[shape], poses[shape] = top[0], (float(aspects[top[1]]), float(angles[top[1]]))  # box: taper ignored
    order = sorted(ious, key=ious.get, reverse=True)
    best, second = order[0], order[1]
    margin = ious[best] - ious[second]
    box = box_of(best, cx, cy, area, *poses[best])
    return ShapeFit(best, ious[best], margin, ious, box, *_outline(win, cx, cy, x0, y0))


def _opacity(labels: np.ndarray, alpha: np.ndarray, mask: np.ndarray, others: np.ndarray) -> np.ndarray:
    """An object's opacity map on its mask dilated by 2 px less other objects, normalised to 1 inside (by the median opacity, robust to noise).

    Opacity is measured against each pixel's nearest palette colour, so a shaded object reads
    higher in one colour than another: each colour region is normalised by its own plateau.
    """
    region = ndimage.binary_dilation(mask, iterations=2) & ~others
    plateau = np.full(alpha.shape, max(np.median(alpha[mask]), 1e-6))
    for c in np.unique(labels[mask]):
        own = mask & (labels == c)
        if own.sum() >= MIN_AREA:
            plateau[region & (labels == c)] = max(np.median(alpha[own]), 1e-6)
    return np.where(region, np.clip(alpha / plateau, 0.0, 1.0), 0.0)


def _colour(labels: np.ndarray, alpha: np.ndarray, mask: np.ndarray) -> int:
    return int(np.bincount(labels[mask], weights=np.clip(alpha[mask], 0, None), minlength=len(_NAMES)).argmax())


@dataclass
class Candidate:
    """One connected foreground component, fitted whole and (when it holds several colours) per colour region."""

    whole: tuple[np.ndarray, int, ShapeFit]  # (mask, palette index, fit)
    parts: list[tuple[np.ndarray, int, ShapeFit]]


def candidates(image) -> list[Candidate]:
    """Every component of an image with its shape fits; :func:`resolve` turns them into objects."""
    labels, alpha = segment(image)
    fg = labels >= 0
    comps, n = ndimage.label(fg)
    out = []
    for k in range(1, n + 1):
        mask = comps == k
        if mask.sum() < MIN_AREA:
            continue
        whole = (mask, _colour(labels, alpha, mask), fit_shape(_opacity(labels, alpha, mask, fg & ~mask)))
        colours, counts = np.unique(labels[mask], return_counts=True)
        parts = []
        if (counts >= MIN_FRAGMENT).sum() > 1:
            for c, m in zip(colours, counts):  # colour regions; fragments smaller than MIN_AREA are left out
                sub, j = ndimage.label(mask & (labels == c))
                parts += [(sub == i, int(c)) for i in range(1, j + 1) if (sub == i).sum() >= MIN_AREA]
        split = len(parts) > 1 or (len(parts) == 1 and parts[0][0].sum() < mask.sum() - MIN_FRAGMENT)
        fits = []
        for pm, _ in parts if split else []:  # a part may be hidden under the rest of its component
            rest = ndimage.binary_dilation(mask & ~pm) & ~pm
            fits.append(fit_shape(_opacity(labels, alpha, pm, fg & ~pm), ignore=rest))
        out.append(Candidate(whole, [(pm, c, f) for (pm, c), f in zip(parts, fits)]))
    return out


def resolve(cands: Sequence[Candidate], accept: dict[str, Acceptance] | None = None) -> list[Detection]:
    """Objects from fitted components: a multi-colour component is split when its colour regions fit better.

    Split when every region is a recognised shape and the whole is not, or fits worse on average;
    when neither explanation is recognised, the regions are reported (as unknown objects).
    """
    accept = accept or ACCEPT

    def label(fit: ShapeFit) -> str:
        return fit.best if accept[fit.best].accepts(fit) else UNKNOWN

    dets = []
    for cand in cands:
        objs = [cand.whole]
        if cand.parts:
            whole_ok = label(cand.whole[2]) != UNKNOWN
            split_ok = all(label(f) != UNKNOWN for _, _, f in cand.parts)
            if not whole_ok or (split_ok and cand.whole[2].iou < np.mean([f.iou for _, _, f in cand.parts])):
                objs = cand.parts
        dets += [Detection(label=label(f), score=f.iou, box=f.box, color=_NAMES[c], mask=m) for m, c, f in objs]
    return dets


def detect(image, accept: dict[str, Acceptance] | None = None) -> list[Detection]:
    """Find the shapes in an image (PIL image or ``(H, W, 3)`` array, uint8 or float in [0, 1]).

    Unrecognised objects are returned with label ``"unknown"`` (no GenEval class matches them).
    """
    return resolve(candidates(image), accept)


def evaluate_image(image, record: dict, rules: RuleConfig = SHAPES_RULES) -> Verdict:
    """Score one image against one GenEval record of the shapes world."""
    return evaluate_detections(record, detect(image), config=rules)


def evaluate_images(images: Iterable, records: Sequence[dict], rules: RuleConfig = SHAPES_RULES) -> dict:
    """Score images against records (paired); returns :func:`steer.eval.geneval.summarize` plus per-image verdicts."""
    verdicts = [evaluate_image(img, rec, rules) for img, rec in zip(images, records, strict=True)]
    out = summarize(verdicts)
    out["verdicts"] = verdicts
    return out
