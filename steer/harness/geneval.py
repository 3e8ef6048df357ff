"""GenEval for any pipeline × method: generate in GenEval's folder layout, evaluate, summarise.

Layout (GenEval's, so its official evaluator reads it too)::

    <out>/run.json                       settings, versions (checked when a run resumes)
    <out>/00012/metadata.jsonl           the prompt's GenEval record
    <out>/00012/samples/0003.png         image 3 of prompt 12 (seed = --seed + 3)
    <out>/00012/steer/0003.json          its record: seed, reward, NFE, reward calls, seconds, peak memory
    <out>/00012/steer/<evaluator>/0003.json   its verdict by one evaluator
    <out>/results/<evaluator>.json|.md   the summary (per task, overall, compute)

Prompt folders keep the metadata file's line numbers, so a subset (``--per-task``) or a shard writes the same
names as a full run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from ..eval.geneval import TASKS, Verdict, load_metadata, summarize
from . import files
from .generation import GenerationSettings, HarnessError, Job, Shard, Slot, read_run

SHAPES_METADATA = "shapes"


class ShapesEvaluator:
    """The exact shapes evaluator (:mod:`steer.shapes.detect`) behind the same interface as the neural one."""

    name = "shapes"

    def __call__(self, images: Sequence, records: Sequence[dict]) -> list[Verdict]:
        from ..shapes import evaluate_image

        return [evaluate_image(image.convert("RGB"), record) for image, record in zip(images, records, strict=True)]

    def info(self) -> dict:
        return {"evaluator": "steer.shapes exact detector + GenEval rules (shapes thresholds)"}


def metadata_path(path: str | Path) -> Path:
    """``shapes`` → the shipped shapes-world prompts; otherwise the user's ``evaluation_metadata.jsonl``."""
    if str(path) == SHAPES_METADATA:
        from ..shapes import EVAL_PROMPTS

        return EVAL_PROMPTS
    return Path(path).expanduser()


def select(records: list[dict], per_task: int | None = None, tasks: Sequence[str] | None = None) -> list[tuple[int, dict]]:
    """``(line index, record)`` pairs: the first ``per_task`` prompts of each task in ``tasks`` (all by default)."""
    if tasks:
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise HarnessError(f"unknown task(s) {', '.join(unknown)}: GenEval's tasks are {', '.join(TASKS)}")
    seen: dict[str, int] = {}
    out = []
    for i, rec in enumerate(records):
        if tasks and rec["tag"] not in tasks:
            continue
        seen[rec["tag"]] = seen.get(rec["tag"], 0) + 1
        if per_task is None or seen[rec["tag"]] <= per_task:
            out.append((i, rec))
    return out


def prompt_folder(out: Path, index: int) -> Path:
    return out / f"{index:05d}"


def jobs(out: Path, selected: list[tuple[int, dict]], settings: GenerationSettings) -> list[Job]:
    result = []
    for i, rec in selected:
        folder = prompt_folder(out, i)
        slots = [Slot(k, seed, folder / "samples" / f"{k:04d}.png", folder / "steer" / f"{k:04d}.json") for k, seed in enumerate(settings.seeds(i))]
        result.append(Job(rec["prompt"], slots, {"prompt_index": i, "tag": rec["tag"]}))
    return result


def write_metadata(out: Path, selected: list[tuple[int, dict]]) -> None:
    """Each prompt folder's ``metadata.jsonl`` (GenEval's: the record as one JSON object)."""
    for i, rec in selected:
        path = prompt_folder(out, i) / "metadata.jsonl"
        if not path.is_file():
            files.write_text(path, json.dumps(rec) + "\n")


def prompt_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name.isdigit() and (p / "metadata.jsonl").is_file())


def evaluate(out: Path, evaluator: Callable, name: str, shard: Shard = Shard(), batch_size: int = 8, progress: bool = True) -> dict:
    """Score every generated image of this shard that has no verdict by ``name`` yet (one atomic file each)."""
    from PIL import Image
    from tqdm.auto import tqdm

    run = read_run(out)
    position = {i: n for n, i in enumerate(run["selection"]["prompt_indices"])}  # stable, whatever exists yet
    todo = []
    for folder in prompt_folders(out):
        if not shard.owns(position.get(int(folder.name), int(folder.name))):
            continue
        record = json.loads((folder / "metadata.jsonl").read_text())
        for rec_path in sorted((folder / "steer").glob("*.json")):
            score = folder / "steer" / name / rec_path.name
            image = folder / "samples" / f"{rec_path.stem}.png"
            if image.is_file() and not score.is_file():
                todo.append((image, record, score))
    done = 0
    with tqdm(total=len(todo), disable=not progress, desc=f"evaluate ({name})", unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = []
            for path, _, _ in chunk:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            verdicts = evaluator(images, [rec for _, rec, _ in chunk])
            for (_, rec, score), v in zip(chunk, verdicts, strict=True):
                files.write_json(score, {"tag": v.tag, "correct": bool(v.correct), "reasons": list(v.reasons)})
                done += 1
            bar.update(len(chunk))
    return {"scored": done}


def collect(out: Path, name: str, run: dict) -> tuple[list[dict], int]:
    """Every image record with its prompt folder, image path and verdict by ``name`` (``correct`` and ``reasons``
    None when not scored yet), and the expected image count."""
    expected = len(run["selection"]["prompt_indices"]) * run["settings"]["images_per_prompt"]
    rows = []
    for folder in prompt_folders(out):
        for rec_path in sorted((folder / "steer").glob("*.json")):
            row = json.loads(rec_path.read_text())
            score = files.read_json(folder / "steer" / name / rec_path.name) or {}
            row.update(correct=score.get("correct"), reasons=score.get("reasons"), folder=folder.name, image_path=folder / "samples" / row["image"])
            rows.append(row)
    return rows, expected


def summary(out: Path, name: str, evaluator_info: dict | None = None) -> dict:
    """The run's GenEval summary by evaluator ``name``: per task, overall, and compute per image."""
    from .report import run_fields

    run = read_run(out)
    rows, expected = collect(out, name, run)
    scored = [r for r in rows if r["correct"] is not None]
    result = summarize([(r["tag"], r["correct"]) for r in scored]) if scored else {"overall": float("nan"), "tasks": {}, "counts": {}}
    return {
        "benchmark": "geneval", "evaluator": name, "evaluator_info": evaluator_info or files.read_json(out / "results" / f"{name}.info.json") or {},
        "score": result["overall"], "overall": result["overall"], "tasks": result["tasks"], "counts": result["counts"],
        "images": len(rows), "scored": len(scored), "expected": expected, "prompts": len({r["folder"] for r in rows}),
        **run_fields(run, out, rows),
    }


def write_summary(out: Path, name: str, evaluator_info: dict | None = None) -> dict:
    from .report import geneval_markdown

    s = summary(out, name, evaluator_info)
    files.write_json(out / "results" / f"{name}.json", s)
    files.write_text(out / "results" / f"{name}.md", geneval_markdown([s]) + "\n")
    return s


def generate(out: Path, metadata: str | Path, settings: GenerationSettings, *, per_task: int | None = None, tasks: Sequence[str] | None = None,
             shard: Shard = Shard(), device: str = "cpu", progress: bool = True, maker=None) -> dict:
    """Generate this shard's missing images of a GenEval run (creates or resumes ``out``)."""
    from .generation import check_run_settings, make_missing

    records = load_metadata(metadata_path(metadata))
    selected = select(records, per_task, tasks)
    out.mkdir(parents=True, exist_ok=True)
    check_run_settings(out, settings, "geneval", {"metadata": str(metadata), "per_task": per_task, "tasks": list(tasks or []),
                                                  "prompt_indices": [i for i, _ in selected]})
    mine = shard.take(selected)
    write_metadata(out, mine)
    work = jobs(out, mine, settings)
    return make_missing(work, settings, device, progress, maker)
