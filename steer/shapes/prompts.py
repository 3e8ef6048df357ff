"""GenEval-shaped prompts for the shapes world (same JSONL schema as GenEval's metadata).

Training captions and evaluation prompts come from the same templates.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from ..eval.geneval import RELATIONS, TASKS, load_metadata
from .world import COLORS, NUMBERS, PLURALS, SHAPES

EVAL_PROMPTS = Path(__file__).parent / "data" / "eval_prompts.jsonl"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def make_record(task: str, *args) -> dict:
    """Build one GenEval record. Arguments per task:

    single_object(shape) · two_object(a, b) · counting(shape, n) · colors(color, shape) ·
    position(a, relation, b) ["a {a} {relation} a {b}"] · color_attr(color_a, a, color_b, b)
    """
    if task == "single_object":
        (s,) = args
        return {"tag": task, "include": [{"class": s, "count": 1}], "prompt": f"a photo of {_a(s)}"}
    if task == "two_object":
        a, b = args
        return {"tag": task, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}], "prompt": f"a photo of {_a(a)} and {_a(b)}"}
    if task == "counting":
        s, n = args
        return {
            "tag": task,
            "include": [{"class": s, "count": n}],
            "exclude": [{"class": s, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {PLURALS[s]}",
        }
    if task == "colors":
        c, s = args
        return {"tag": task, "include": [{"class": s, "count": 1, "color": c}], "prompt": f"a photo of {_a(c + ' ' + s)}"}
    if task == "position":
        a, rel, b = args
        return {
            "tag": task,
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {_a(a)} {rel} {_a(b)}",
        }
    if task == "color_attr":
        ca, a, cb, b = args
        return {
            "tag": task,
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {_a(ca + ' ' + a)} and {_a(cb + ' ' + b)}",
        }
    raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")


def all_args(task: str) -> list[tuple]:
    """Every distinct argument tuple of a task's template."""
    pairs = [(a, b) for a, b in itertools.permutations(SHAPES, 2)]
    if task == "single_object":
        return [(s,) for s in SHAPES]
    if task == "two_object":
        return pairs
    if task == "counting":
        return [(s, n) for s in SHAPES for n in (2, 3, 4)]
    if task == "colors":
        return [(c, s) for c in COLORS for s in SHAPES]
    if task == "position":
        return [(a, r, b) for a, b in pairs for r in RELATIONS]
    if task == "color_attr":
        return [(ca, a, cb, b) for a, b in pairs for ca in COLORS for cb in COLORS if ca != cb]
    raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")


def sample_record(rng: np.random.Generator, task: str | None = None) -> dict:
    """A random record; the task is uniform over the six when not given."""
    task = task or TASKS[int(rng.integers(len(TASKS)))]
    choices = all_args(task)
    return make_record(task, *choices[int(rng.integers(len(choices)))])


def make_prompt_set(per_task: int = 48, seed: int = 0) -> list[dict]:
    """A balanced prompt set: ``per_task`` records per task.

    Each task cycles through a shuffled list of its distinct prompts, so tasks with few
    distinct prompts (single_object has three) repeat them evenly.
    """
    rng = np.random.default_rng(seed)
    records = []
    for task in TASKS:
        choices = all_args(task)
        order: list[int] = []
        while len(order) < per_task:
            order.extend(rng.permutation(len(choices)).tolist())
        records.extend(make_record(task, *choices[i]) for i in order[:per_task])
    return records


def write_jsonl(records: list[dict], path: str | Path) -> None:
    with Path(path).open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def load_prompts(path: str | Path | None = None) -> list[dict]:
    """Load a GenEval-style prompt file of the shapes world (default: the shipped eval set)."""
    return load_metadata(path or EVAL_PROMPTS, classes=SHAPES, colors=COLORS)


def vocabulary() -> list[str]:
    """Every word the templates can produce."""
    words = {"a", "an", "photo", "of", "and"}
    words.update(SHAPES, PLURALS.values(), COLORS, NUMBERS.values())
    for rel in RELATIONS:
        words.update(rel.split())
    return sorted(words)


def _prompt_index() -> dict[str, dict]:
    return {r["prompt"]: r for task in TASKS for r in (make_record(task, *a) for a in all_args(task))}


def parse_prompt(prompt: str) -> dict:
    """The GenEval record of a shapes-world prompt (any template prompt, e.g. "a photo of two circles")."""
    key = " ".join(prompt.lower().strip().rstrip(".").split())
    index = _prompt_index()
    if key not in index:
        examples = "; ".join(make_record(t, *all_args(t)[0])["prompt"] for t in TASKS)
        raise ValueError(
            f"{prompt!r} is not a shapes-world prompt. Use one of the six GenEval templates with shapes "
            f"{', '.join(SHAPES)} and colours {', '.join(COLORS)}, for example: {examples}"
        )
    return index[key]
