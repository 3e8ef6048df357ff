"""Base accuracy of the shipped shapes models (exact evaluator, GenEval rules) and reward AUROC.

    python benchmarks/shapes_baseline.py --out results/shapes_baseline.json

Samples every prompt of the evaluation file at ``--seeds`` seeds (image ``k`` of prompt ``i``
uses seed ``i * seeds + k``, so repeated prompts get fresh seeds), scores the images with the
exact evaluator, prints a GenEval-style table per model, then the shapes reward's AUROC at
separating correct from incorrect generated images, per task.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from steer.eval.geneval import TASKS, format_table, summarize
from steer.eval.stats import auroc
from steer.shapes import evaluate_image, load_flow_pipeline, load_pipeline, load_prompts, load_reward, to_uint8


def generate(pipe, records, seeds: int, steps: int, guidance: float, batch: int, **call_kwargs):
    """All images (uint8 arrays) of ``records`` × ``seeds``, in prompt-major order."""
    jobs = [(i, k) for i in range(len(records)) for k in range(seeds)]
    images = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        out = pipe(
            [records[i]["prompt"] for i, _ in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(i * seeds + k) for i, k in chunk],
            output_type="np",
            **call_kwargs,
        ).images
        images += list(to_uint8(out))
    return images


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, help="GenEval-style JSONL of shapes prompts (default: the shipped eval set)")
    p.add_argument("--models", nargs="+", default=["sd", "flow"], choices=["sd", "flow"])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--limit", type=int, help="use only the first N prompts of each task (quick runs)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, help="write results JSON here")
    p.add_argument("--grid", type=Path, help="save a PNG grid of the first images of each model here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    records = load_prompts(a.prompts)
    if a.limit:
        records = [r for t in TASKS for r in [r for r in records if r["tag"] == t][: a.limit]]
    reward = load_reward()
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "models": {}, "reward_auroc": {}, "reward_auroc_by_model": {}}
    summaries, all_scores, all_labels, all_tags = {}, [], [], []
    grids = []
    for name in a.models:
        pipe = load_pipeline() if name == "sd" else load_flow_pipeline()
        pipe.set_progress_bar_config(disable=True)
        t0 = time.time()
        images = generate(pipe, records, a.seeds, a.steps, a.guidance, a.batch)
        seconds = time.time() - t0
        recs = [r for r in records for _ in range(a.seeds)]
        verdicts = [evaluate_image(im, r) for im, r in zip(images, recs)]
        s = summarize(verdicts)
        summaries[name] = s
        with torch.no_grad():
            x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
            scores = torch.cat([reward(x[i : i + 256], [r["prompt"] for r in recs[i : i + 256]]) for i in range(0, len(recs), 256)]).numpy()
        labels = np.array([v.correct for v in verdicts])
        tags = np.array([r["tag"] for r in recs])
        result["models"][name] = {"overall": s["overall"], "tasks": s["tasks"], "images": len(images), "seconds": round(seconds, 1)}
        result["reward_auroc_by_model"][name] = {t: auroc(scores[tags == t], labels[tags == t]) for t in TASKS if (tags == t).any()}
        all_scores.append(scores), all_labels.append(labels), all_tags.append(tags)
        grids.append(np.concatenate(images[: 16 * a.seeds : a.seeds], axis=1))
        print(f"{name}: {len(images)} images in {seconds:.1f}s", flush=True)
    scores, labels, tags = np.concatenate(all_scores), np.concatenate(all_labels), np.concatenate(all_tags)
    result["reward_auroc"] = {t: auroc(scores[tags == t], labels[tags == t]) for t in TASKS if (tags == t).any()}
    result["reward_auroc"]["all"] = auroc(scores, labels)
    print()
    print(format_table(summaries, "model (exact evaluator)"))
    print()
    print("reward AUROC (correct vs incorrect generated images, by the exact evaluator)")
    print("  ".join(f"{t}={v:.3f}" for t, v in result["reward_auroc"].items()))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {a.out}")
    if a.grid:
        from PIL import Image

        g = np.concatenate(grids, axis=0)
        Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4), Image.NEAREST).save(a.grid)
    return result


if __name__ == "__main__":
    main()
