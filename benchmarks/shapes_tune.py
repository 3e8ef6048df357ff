"""Tune search options on a held-out shapes prompt set (never on the shipped eval prompts).

    python benchmarks/shapes_tune.py --model sd --config '{"method": "smc", "lam": 1.0}' \
        --config '{"method": "smc", "lam": 0.3}' --out results/shapes_tune_sd.json

The held-out set is ``make_prompt_set(per_task, seed)`` with a seed other than the eval set's
(2026). Each ``--config`` is a JSON object: ``method`` plus any call option (``num_particles``,
``eta``, ``lam``, ``potential``, ``interval``, ``window`` ...). Rows are appended to ``--out`` as
they finish, and configs already there are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import steer
from steer.shapes import load_flow_pipeline, load_pipeline, load_reward
from steer.shapes.prompts import make_prompt_set

from shapes_scaling import EVAL_SEED, run_config
from steer.eval.stats import paired_bootstrap


def compare(rows: list[dict], model: str) -> list[str]:
    """Each config against the most accurate one, paired on the same prompts and seeds (bootstrap 95 % interval)."""
    mine = [r for r in rows if r["model"] == model and "correct" in r]
    if not mine:
        return []
    best = max(mine, key=lambda r: r["accuracy"])
    lines = [f"{model}: paired difference to the best config {json.dumps(best['config'], sort_keys=True)} (acc {best['accuracy']:.3f})"]
    for r in mine:
        d = paired_bootstrap(r["correct"], best["correct"])
        verdict = "best" if r is best else ("tie" if d["low"] <= 0 <= d["high"] else "worse")
        lines.append(f"  {json.dumps(r['config'], sort_keys=True):70s} acc={r['accuracy']:.3f} diff={d['diff']:+.3f} "
                     f"[{d['low']:+.3f}, {d['high']:+.3f}] {verdict}")
    return lines


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sd", choices=["sd", "flow"])
    p.add_argument("--config", action="append", required=True, type=json.loads, help="JSON object: method + options")
    p.add_argument("--per-task", type=int, default=16)
    p.add_argument("--prompt-seed", type=int, default=7)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch-prompts", type=int, default=8)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.prompt_seed == EVAL_SEED:
        p.error(f"--prompt-seed {EVAL_SEED} is the eval set's seed: tune on held-out prompts")
    if a.threads:
        torch.set_num_threads(a.threads)
    records = make_prompt_set(per_task=a.per_task, seed=a.prompt_seed)
    rows = json.loads(a.out.read_text()) if a.out.exists() else []
    done = {json.dumps(r["config"], sort_keys=True) for r in rows if r["model"] == a.model}
    reward = load_reward()
    pipe = load_pipeline() if a.model == "sd" else load_flow_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for config in a.config:
        key = json.dumps(config, sort_keys=True)
        if key in done:
            continue
        opts = dict(config)
        method, n = opts.pop("method"), opts.pop("num_particles", 4)
        steered = steer.wrap(pipe, method=method, reward=reward)
        row = {"model": a.model, "config": config, "prompts": len(records), "seeds": a.seeds}
        row.update(run_config(steered, records, a.seeds, a.steps, a.guidance, n, a.batch_prompts, **opts))
        rows.append(row)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=2))
        tasks = " ".join(f"{t[:6]}={v:.2f}" for t, v in row["tasks"].items())
        print(f"{a.model} {key:70s} acc={row['accuracy']:.3f} reward={row['mean_reward']:.2f} {row['seconds']:.0f}s | {tasks}", flush=True)
    print("\n".join(compare(rows, a.model)))
    return rows


if __name__ == "__main__":
    main()
