"""T2I-CompBench for any pipeline × method: generate with the benchmark's naming, evaluate, summarise.

Layout per category (the benchmark's file names, so its own scripts read ``samples/`` too)::

    <out>/run.json
    <out>/color/samples/a red car and a blue bench_000013.png   prompt 1, image 3 (10 a prompt: index 10·p + k)
    <out>/color/steer/000013.json                               its record (seed, reward, NFE, seconds, memory)
    <out>/color/steer/<evaluator>/000013.json                   its score
    <out>/results/<evaluator>.json|.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from . import files
from .generation import GenerationSettings, HarnessError, Job, Shard, Slot, read_run


def _cb():
    from ..eval import compbench

    return compbench


def jobs(out: Path, category: str, prompts: Sequence[tuple[int, str]], settings: GenerationSettings) -> list[Job]:
    cb = _cb()
    folder = out / category
    result = []
    for p, prompt in prompts:
        slots = []
        for k, seed in enumerate(settings.seeds(p)):
            index = p * settings.images_per_prompt + k
            slots.append(Slot(k, seed, folder / "samples" / cb.image_name(prompt, index), folder / "steer" / f"{index:06d}.json"))
        result.append(Job(prompt, slots, {"category": category, "prompt_index": p}))
    return result


def selection(prompts_dir: str | Path, categories: Sequence[str], limit: int | None) -> dict[str, list[tuple[int, str]]]:
    cb = _cb()
    unknown = [c for c in categories if c not in cb.CATEGORIES]
    if unknown:
        raise HarnessError(f"unknown T2I-CompBench categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; known: {', '.join(cb.CATEGORIES)}")
    if not categories:
        raise HarnessError("no categories given: pass e.g. --categories color,spatial,non_spatial")
    return {c: list(enumerate(cb.read_prompts(prompts_dir, c)))[:limit] for c in categories}


def generate(out: Path, prompts_dir: str | Path, categories: Sequence[str], settings: GenerationSettings, *, limit: int | None = None,
             shard: Shard = Shard(), device: str = "cpu", progress: bool = True, maker=None) -> dict:
    """Generate this shard's missing images (creates or resumes ``out``)."""
    from .generation import check_run_settings, make_missing

    chosen = selection(prompts_dir, categories, limit)
    out.mkdir(parents=True, exist_ok=True)
    check_run_settings(out, settings, "compbench", {"prompts_dir": str(prompts_dir), "categories": list(categories), "limit": limit,
                                                    "prompt_counts": {c: len(v) for c, v in chosen.items()}})
    work = shard.take([j for c, ps in chosen.items() for j in jobs(out, c, ps, settings)])
    return make_missing(work, settings, device, progress, maker)


def _records(out: Path, category: str) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted((out / category / "steer").glob("*.json"))]


def evaluate(out: Path, evaluator, name: str, shard: Shard = Shard(), batch_size: int = 8, progress: bool = True) -> dict:
    """Score every generated image of this shard without a score by ``name`` (one atomic file each)."""
    from PIL import Image
    from tqdm.auto import tqdm

    run = read_run(out)
    todo, offset = [], 0
    for category in run["selection"]["categories"]:
        base, offset = offset, offset + run["selection"]["prompt_counts"][category]
        for path, rec in _records(out, category):
            if not shard.owns(base + rec["prompt_index"]):  # the generation's job order: stable whatever exists yet
                continue
            score = path.parent / name / path.name
            image = out / category / "samples" / rec["image"]
            if image.is_file() and not score.is_file():
                todo.append((category, image, rec["prompt"], score))
    with tqdm(total=len(todo), disable=not progress, desc=f"evaluate ({name})", unit="img") as bar:
        i = 0
        while i < len(todo):
            cat = todo[i][0]
            chunk = [t for t in todo[i:i + batch_size] if t[0] == cat]
            images = []
            for _, path, _, _ in chunk:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            scores = evaluator.evaluate(cat, images, [t[2] for t in chunk])
            for (_, _, _, score_path), value in zip(chunk, scores, strict=True):
                files.write_json(score_path, {"category": cat, "score": float(value)})
            i += len(chunk)
            bar.update(len(chunk))
    return {"scored": len(todo)}


def collect(out: Path, name: str, run: dict) -> list[dict]:
    """Every image record with its image path and score by ``name`` (``score`` None when not scored yet)."""
    rows = []
    for category in run["selection"]["categories"]:
        for path, rec in _records(out, category):
            score = files.read_json(path.parent / name / path.name)
            rec.update(score=None if score is None else score["score"], image_path=out / category / "samples" / rec["image"])
            rows.append(rec)
    return rows


def summary(out: Path, name: str, evaluator_info: dict | None = None) -> dict:
    """Per-category mean score by evaluator ``name`` and compute per image."""
    from .report import run_fields

    run = read_run(out)
    st, sel = run["settings"], run["selection"]
    rows = collect(out, name, run)
    cats = {c: float(np.mean(v)) for c in sel["categories"] if (v := [r["score"] for r in rows if r["category"] == c and r["score"] is not None])}
    scored = sum(r["score"] is not None for r in rows)
    return {
        "benchmark": "compbench", "evaluator": name, "evaluator_info": evaluator_info or {},
        "categories": cats, "score": float(np.mean(list(cats.values()))) if cats else float("nan"),
        "images": len(rows), "scored": scored, "expected": sum(sel["prompt_counts"].values()) * st["images_per_prompt"],
        **run_fields(run, out, rows),
    }


def write_summary(out: Path, name: str, evaluator_info: dict | None = None) -> dict:
    from .report import compbench_markdown

    s = summary(out, name, evaluator_info)
    files.write_json(out / "results" / f"{name}.json", s)
    files.write_text(out / "results" / f"{name}.md", compbench_markdown([s]) + "\n")
    return s
