"""GenEval scoring rules, written once and shared by every detector.

The rule engine is independent of how objects are found: the exact shapes detector
(:mod:`steer.shapes.detect`) and a neural detector (Mask2Former + CLIP colour
classification, as in the official GenEval) both produce :class:`Detection` lists and
hand them to :func:`evaluate_detections`.

Rules (GenEval, Ghosh et al. 2023):

* detections below a confidence threshold are dropped (0.3; 0.9 for ``counting``),
  at most 16 are kept per class, highest confidence first;
* every ``include`` clause must hold: at least ``count`` objects of ``class``; if a
  ``color`` is asked, that many of the top-``count`` instances must have it; if a
  ``position`` ``[relation, group]`` is asked, every found instance must stand in that
  relation to every instance matched by include clause ``group``;
* any ``exclude`` clause that holds (``count`` or more objects of ``class``) fails the image;
* the task score is the mean over images; ``overall`` is the unweighted mean of task scores.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


class MetadataError(ValueError):
    """A GenEval metadata record is malformed."""


@dataclass
class Detection:
    """One detected object instance.

    ``box`` is ``(x0, y0, x1, y1)`` in pixels (x to the right, y downwards).
    ``color`` is the detector's colour name for the instance, if it assigns one.
    """

    label: str
    score: float
    box: tuple[float, float, float, float]
    color: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class RuleConfig:
    """Thresholds of the GenEval rules (defaults are the official ones)."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    position_shrink: float = 0.1
    position_min: float = 0.5


@dataclass
class Verdict:
    """Outcome of scoring one image against one metadata record."""

    tag: str
    correct: bool
    reasons: list[str] = field(default_factory=list)


def _fail(where: str, problem: str) -> MetadataError:
    return MetadataError(
        f"{where}: {problem}. Expected GenEval's schema: "
        '{"tag": <task>, "include": [{"class": str, "count": int>=1, "color"?: str, '
        '"position"?: [<relation>, <include index>]}], "exclude"?: [...], "prompt": str}'
    )


def validate_metadata(
    record: Mapping,
    *,
    classes: Iterable[str] | None = None,
    colors: Iterable[str] | None = None,
    where: str = "metadata",
) -> dict:
    """Check one GenEval record and return it as a plain dict; raise :class:`MetadataError`."""
    if not isinstance(record, Mapping):
        raise _fail(where, f"a record must be a JSON object, got {type(record).__name__}")
    classes = set(classes) if classes is not None else None
    colors = set(colors) if colors is not None else None
    for key in ("tag", "include", "prompt"):
        if key not in record:
            raise _fail(where, f"missing key {key!r}")
    if record["tag"] not in TASKS:
        raise _fail(where, f"unknown tag {record['tag']!r} (known: {', '.join(TASKS)})")
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        raise _fail(where, "'prompt' must be a non-empty string")
    for key in ("include", "exclude"):
        clauses = record.get(key, [])
        if not isinstance(clauses, list) or (key == "include" and not clauses):
            raise _fail(where, f"{key!r} must be a {'non-empty ' if key == 'include' else ''}list of clauses")
        for i, clause in enumerate(clauses):
            at = f"{key}[{i}]"
            if not isinstance(clause, Mapping):
                raise _fail(where, f"{at} must be an object")
            if not isinstance(clause.get("class"), str):
                raise _fail(where, f"{at} needs a string 'class'")
            if classes is not None and clause["class"] not in classes:
                raise _fail(where, f"{at} has unknown class {clause['class']!r} (known: {', '.join(sorted(classes))})")
            count = clause.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise _fail(where, f"{at} needs an integer 'count' >= 1, got {count!r}")
            if "color" in clause:
                if not isinstance(clause["color"], str):
                    raise _fail(where, f"{at} 'color' must be a string")
                if colors is not None and clause["color"] not in colors:
                    raise _fail(where, f"{at} has unknown color {clause['color']!r} (known: {', '.join(sorted(colors))})")
            if "position" in clause:
                pos = clause["position"]
                if key != "include":
                    raise _fail(where, f"{at}: 'position' is only allowed in include clauses")
                if not (isinstance(pos, (list, tuple)) and len(pos) == 2):
                    raise _fail(where, f"{at} 'position' must be [relation, index]")
                rel, idx = pos
                if rel not in RELATIONS:
                    raise _fail(where, f"{at} has unknown relation {rel!r} (known: {', '.join(RELATIONS)})")
                if not isinstance(idx, int) or not 0 <= idx < i:
                    raise _fail(where, f"{at} 'position' index {idx!r} must point to an earlier include clause")
    return dict(record)


def load_metadata(path: str | Path, **kwargs) -> list[dict]:
    """Read a GenEval ``evaluation_metadata.jsonl`` file, validating every line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {str(path)!r} does not exist: pass the path of a GenEval-style JSONL file")
    records = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MetadataError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            records.append(validate_metadata(record, where=f"{path}:{n}", **kwargs))
    if not records:
        raise MetadataError(f"{path}: no records found")
    return records


def relative_position(box_a: Sequence[float], box_b: Sequence[float], shrink: float = 0.1, min_component: float = 0.5) -> set[str]:
    """Relations in which object A stands to object B (GenEval's rule).

    The centre offset A - B is shrunk by ``shrink * (size_A + size_B)`` per axis; a relation
    holds when the shrunk offset's component along its axis, divided by the unshrunk
    offset's norm, exceeds ``min_component`` in the right direction.
    """
    a = np.asarray(box_a, dtype=float).reshape(2, 2)
    b = np.asarray(box_b, dtype=float).reshape(2, 2)
    offset = a.mean(0) - b.mean(0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - shrink * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -min_component:
        rels.add("left of")
    if dx > min_component:
        rels.add("right of")
    if dy < -min_component:
        rels.add("above")
    if dy > min_component:
        rels.add("below")
    return rels


def group_detections(detections: Iterable[Detection], threshold: float, max_objects: int = 16) -> dict[str, list[Detection]]:
    """Keep detections above ``threshold``, grouped by class, highest score first."""
    groups: dict[str, list[Detection]] = defaultdict(list)
    for det in sorted(detections, key=lambda d: -d.score):
        if det.score > threshold and len(groups[det.label]) < max_objects:
            groups[det.label].append(det)
    return dict(groups)


def evaluate_detections(
    metadata: Mapping,
    detections: Iterable[Detection],
    *,
    color_of: Callable[[Detection], str | None] | None = None,
    config: RuleConfig | None = None,
) -> Verdict:
    """Apply the GenEval rules of one record to one image's detections.

    ``color_of`` names an instance's colour (GenEval: CLIP zero-shot on the masked crop);
    by default the detector's own ``Detection.color`` is used.
    """
    config = config or RuleConfig()
    color_of = color_of or (lambda det: det.color)
    threshold = config.counting_threshold if metadata["tag"] == "counting" else config.threshold
    objects = group_detections(detections, threshold, config.max_objects)
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata["include"]:
        cls, count = req["class"], req["count"]
        found = objects.get(cls, [])[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [color_of(det) for det in found]
                if colors.count(req["color"]) < count:
                    matched = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {colors}")
            if "position" in req and matched:
                rel, group = req["position"]
                targets = matched_groups[group]
                if targets is None:
                    matched = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj in found:
                        for target in targets:
                            true_rels = relative_position(obj.box, target.box, config.position_shrink, config.position_min)
                            if rel not in true_rels:
                                matched = False
                                reasons.append(f"expected {cls} {rel} target, found {sorted(true_rels) or 'no relation'}")
                                break
                        if not matched:
                            break
        correct &= matched
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return Verdict(tag=metadata["tag"], correct=bool(correct), reasons=reasons)


def summarize(verdicts: Iterable[Verdict | tuple[str, bool | float]]) -> dict:
    """GenEval summary: per-task accuracy and their unweighted mean, ``{"overall", "tasks", "counts"}``.

    Items are verdicts or ``(tag, correct)`` pairs; ``correct`` may be a fraction in [0, 1] (e.g. the
    share of correct images among several picks for one prompt).
    """
    hits: dict[str, list[float]] = defaultdict(list)
    for v in verdicts:
        tag, ok = (v.tag, v.correct) if isinstance(v, Verdict) else v
        hits[tag].append(float(ok))
    tasks = {t: float(np.mean(hits[t])) for t in TASKS if hits.get(t)}
    tasks.update({t: float(np.mean(h)) for t, h in hits.items() if t not in tasks})
    overall = float(np.mean(list(tasks.values()))) if tasks else float("nan")
    return {"overall": overall, "tasks": tasks, "counts": {t: len(h) for t, h in hits.items()}}


def format_table(rows: Mapping[str, Mapping], title: str = "model") -> str:
    """Render ``{name: summary}`` as a GenEval-style text table."""
    tags = [t for t in TASKS if any(t in r["tasks"] for r in rows.values())]
    width = max([len(title)] + [len(n) for n in rows]) + 2
    head = f"{title:<{width}}" + "".join(f"{t:>12}" for t in tags) + f"{'overall':>10}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        cells = "".join(f"{r['tasks'].get(t, float('nan')):>12.3f}" for t in tags)
        lines.append(f"{name:<{width}}{cells}{r['overall']:>10.3f}")
    return "\n".join(lines)
