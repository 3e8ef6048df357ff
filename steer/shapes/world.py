"""The shapes world: vocabulary, scene description, and scene sampling.

A scene is 1-4 flat-coloured shapes on a dark background, on a small square canvas.
Scenes are sampled *for a GenEval record*, so a ground-truth scene satisfies its prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..eval.geneval import relative_position

IMAGE_SIZE = 32
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 135, 20),
    "yellow": (235, 215, 35),
    "green": (45, 175, 65),
    "blue": (45, 90, 230),
    "purple": (150, 55, 200),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (22, 22, 26)
NUMBERS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
MIN_SIZE, MAX_SIZE = 8, 13  # side of an object's bounding box, in pixels
GAP = 2  # minimum free pixels between two objects' boxes


@dataclass
class ShapeObject:
    """One object: its shape, colour name, centre (pixels) and bounding-box side."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass
class Scene:
    """A list of objects on a square canvas."""

    objects: list[ShapeObject] = field(default_factory=list)
    image_size: int = IMAGE_SIZE

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls([ShapeObject(**o) for o in d["objects"]], d.get("image_size", IMAGE_SIZE))


def _fits(box, others, image_size: int, gap: float = GAP) -> bool:
    x0, y0, x1, y1 = box
    if x0 < 1 or y0 < 1 or x1 > image_size - 1 or y1 > image_size - 1:
        return False
    for o in others:
        a0, b0, a1, b1 = o.box
        if x0 < a1 + gap and a0 < x1 + gap and y0 < b1 + gap and b0 < y1 + gap:
            return False
    return True


def _place(rng: np.random.Generator, shape: str, color: str, others: list[ShapeObject], image_size: int, max_size: int = MAX_SIZE) -> ShapeObject | None:
    for _ in range(200):
        size = float(rng.integers(MIN_SIZE, max_size + 1))
        lo, hi = 1 + size / 2, image_size - 1 - size / 2
        obj = ShapeObject(shape, color, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), size)
        if _fits(obj.box, others, image_size):
            return obj
    return None


def scene_for_record(record: dict, rng: np.random.Generator, image_size: int = IMAGE_SIZE) -> Scene:
    """Sample a scene that satisfies a GenEval record of the shapes world.

    Unspecified attributes (colour, size, position) are random. For ``position`` records
    the relation holds by GenEval's rule; counting scenes hold exactly ``count`` objects.
    """
    for _ in range(500):
        objects: list[ShapeObject] = []
        # fewer/larger objects fit; shrink the size range when many objects are asked
        total = sum(c["count"] for c in record["include"])
        max_size = MAX_SIZE if total <= 2 else MAX_SIZE - 2
        ok = True
        for clause in record["include"]:
            for _ in range(clause["count"]):
                color = clause.get("color") or COLORS[int(rng.integers(len(COLORS)))]
                obj = _place(rng, clause["class"], color, objects, image_size, max_size)
                if obj is None:
                    ok = False
                    break
                objects.append(obj)
            if not ok:
                break
        if not ok:
            continue
        # position clauses: clause i (object A) must stand `rel` to clause j's object B
        idx, start = [], 0
        for clause in record["include"]:
            idx.append(list(range(start, start + clause["count"])))
            start += clause["count"]
        if all(
            clause["position"][0] in relative_position(objects[a].box, objects[b].box)
            for i, clause in enumerate(record["include"])
            if "position" in clause
            for a in idx[i]
            for b in idx[clause["position"][1]]
        ):
            return Scene(objects, image_size)
    raise RuntimeError(f"could not place a scene for {record['prompt']!r}")
