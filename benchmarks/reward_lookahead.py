"""How well does the reward of an intermediate x̂₀ predict the final image? (Why SMC helps, or not.)

    python benchmarks/reward_lookahead.py --out results/reward_lookahead.json

Runs N independent particles per prompt on the stochastic sampler SMC uses (SMC with
``ess_threshold=0``, so it never resamples, scoring x̂₀ after every step), then, per step:

* ``spearman_final``: within-prompt rank correlation of the step's reward with the final reward;
* ``pairwise_correct``: over pairs of particles of one prompt where exactly one final image is
  correct by the exact evaluator, how often the step's reward ranks the correct one higher
  (0.5 = chance; the final reward's value is what best-of-N selection gets).

Resampling on a step's reward can only help as much as that step's reward separates particles
that will end correct from those that will not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import steer
from steer.eval.geneval import TASKS
from steer.shapes import evaluate_image, load_flow_pipeline, load_pipeline, load_reward, to_uint8
from steer.shapes.prompts import make_prompt_set


def pairwise(scores: np.ndarray, correct: np.ndarray) -> tuple[float, int]:
    """(wins + ties/2, pairs) over (correct, incorrect) particle pairs of one prompt."""
    pos, neg = scores[correct], scores[~correct]
    if len(pos) == 0 or len(neg) == 0:
        return 0.0, 0
    d = pos[:, None] - neg[None, :]
    return float((d > 0).sum() + 0.5 * (d == 0).sum()), d.size


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["sd", "flow"], choices=["sd", "flow"])
    p.add_argument("--per-task", type=int, default=8, help="held-out prompts per task (make_prompt_set)")
    p.add_argument("--prompt-seed", type=int, default=11)
    p.add_argument("--particles", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    records = make_prompt_set(per_task=a.per_task, seed=a.prompt_seed)
    reward = load_reward()
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "models": {}}
    for model in a.models:
        pipe = load_pipeline() if model == "sd" else load_flow_pipeline()
        pipe.set_progress_bar_config(disable=True)
        steered = steer.wrap(pipe, method="smc", reward=reward, ess_threshold=0.0, interval=1, lam=0.0)
        n, per_step, final_pairs = a.particles, {}, [0.0, 0]
        for start in range(0, len(records), 8):
            chunk = records[start : start + 8]
            out = steered([r["prompt"] for r in chunk], num_inference_steps=a.steps, guidance_scale=a.guidance, num_particles=n,
                          generator=[torch.Generator().manual_seed(start + i) for i in range(len(chunk))], output_type="np", return_all=True)
            imgs = to_uint8(out.images)
            final = np.asarray(out.trace.final_rewards)
            for i, rec in enumerate(chunk):
                ok = np.array([evaluate_image(im, rec).correct for im in imgs[i * n : (i + 1) * n]])
                w, c = pairwise(final[i], ok)
                final_pairs[0] += w
                final_pairs[1] += c
                for row in out.trace.steps:
                    r = np.asarray(row["rewards"][i])
                    s = per_step.setdefault(row["step"], {"rho": [], "wins": 0.0, "pairs": 0})
                    if np.ptp(r) > 0 and np.ptp(final[i]) > 0:
                        s["rho"].append(spearmanr(r, final[i]).statistic)
                    w, c = pairwise(r, ok)
                    s["wins"] += w
                    s["pairs"] += c
        rows = [{"step": k, "noise_level": round(steered.adapter.noise_level(k - 1), 4), "spearman_final": float(np.mean(s["rho"])),
                 "pairwise_correct": s["wins"] / max(s["pairs"], 1)} for k, s in sorted(per_step.items())]
        final_pc = final_pairs[0] / max(final_pairs[1], 1)
        result["models"][model] = {"steps": rows, "final_pairwise_correct": final_pc, "pairs": final_pairs[1]}
        print(f"\n{model}: {len(records)} prompts ({len(TASKS)} tasks) × {n} particles; final reward pairwise_correct={final_pc:.3f} "
              f"over {final_pairs[1]} pairs")
        print(f"{'step':>5} {'noise':>7} {'spearman(final)':>16} {'pairwise_correct':>17}")
        for r in rows:
            print(f"{r['step']:>5} {r['noise_level']:>7.3f} {r['spearman_final']:>16.3f} {r['pairwise_correct']:>17.3f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
