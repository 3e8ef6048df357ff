"""Accuracy (exact evaluator) and mean reward versus compute for best-of-N, SMC and Fleming-Viot.

    python benchmarks/shapes_scaling.py --out results/shapes_scaling.json --plot results/shapes_scaling.png

For each model, method and particle count, every prompt is generated at ``--seeds`` seeds with
the shapes reward as the search objective; the returned image is judged by the exact
evaluator (never by the reward). NFE and reward calls are per generated image. SMC and
Fleming-Viot at N particles spend the same NFE as best-of-N at N.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import steer
from steer.eval.geneval import TASKS, summarize
from steer.shapes import evaluate_image, load_flow_pipeline, load_pipeline, load_prompts, load_reward


def run_config(steered, records, seeds: int, steps: int, guidance: float, n: int, batch_prompts: int, **opts) -> dict:
    verdicts, rewards, nfe, calls = [], [], 0, 0
    t0 = time.perf_counter()
    for s in range(seeds):
        for start in range(0, len(records), batch_prompts):
            chunk = records[start : start + batch_prompts]
            gens = [torch.Generator().manual_seed(10_000 * s + start + i) for i in range(len(chunk))]
            out = steered([r["prompt"] for r in chunk], num_inference_steps=steps, guidance_scale=guidance, num_particles=n,
                          generator=gens, output_type="np", **opts)
            for img, rec in zip(out.images, chunk):
                verdicts.append(evaluate_image(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), rec))
            rewards += out.rewards
            nfe += out.trace.nfe
            calls += out.trace.reward_calls
    images = len(verdicts)
    s = summarize(verdicts)
    return {"nfe": nfe / images, "reward_calls": calls / images, "accuracy": s["overall"], "tasks": s["tasks"],
            "mean_reward": float(np.mean(rewards)), "seconds": round(time.perf_counter() - t0, 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, help="GenEval-style JSONL (default: the shipped shapes eval set)")
    p.add_argument("--limit", type=int, default=8, help="prompts per task")
    p.add_argument("--models", nargs="+", default=["sd", "flow"], choices=["sd", "flow"])
    p.add_argument("--bon", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="best-of-N particle counts")
    p.add_argument("--smc", type=int, nargs="+", default=[4, 8], help="SMC and Fleming-Viot particle counts")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--lam", type=float, default=1.0, help="λ of SMC / Fleming-Viot (reward is 100·cosine)")
    p.add_argument("--potential", default="max")
    p.add_argument("--batch-prompts", type=int, default=8)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    records = load_prompts(a.prompts)
    records = [r for t in TASKS for r in [r for r in records if r["tag"] == t][: a.limit]]
    reward = load_reward()
    rows = []
    for model in a.models:
        pipe = load_pipeline() if model == "sd" else load_flow_pipeline()
        pipe.set_progress_bar_config(disable=True)
        configs = [("best_of_n", n, {}) for n in a.bon]
        configs += [("smc", n, {"lam": a.lam, "potential": a.potential}) for n in a.smc]
        configs += [("fleming_viot", n, {"lam": a.lam}) for n in a.smc]
        for method, n, opts in configs:
            steered = steer.wrap(pipe, method=method, reward=reward)
            row = {"model": model, "method": method, "options": {"num_particles": n, **opts}}
            row.update(run_config(steered, records, a.seeds, a.steps, a.guidance, n, a.batch_prompts, **opts))
            rows.append(row)
            print(f"{model:5s} {method:13s} N={n:<3d} nfe/img={row['nfe']:7.1f} reward_calls/img={row['reward_calls']:6.1f} "
                  f"acc={row['accuracy']:.3f} reward={row['mean_reward']:.2f} {row['seconds']:.0f}s", flush=True)
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "rows": rows}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(a.models), figsize=(5 * len(a.models), 4), squeeze=False)
        for ax, model in zip(axes[0], a.models):
            for method in ("best_of_n", "smc", "fleming_viot"):
                pts = sorted((r["nfe"], r["accuracy"]) for r in rows if r["model"] == model and r["method"] == method)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=method)
            ax.set_xscale("log", base=2)
            ax.set(title=f"shapes {model}", xlabel="NFE per image", ylabel="accuracy (exact evaluator)")
            ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
    return result


if __name__ == "__main__":
    main()
