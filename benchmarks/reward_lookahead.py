"""How well does a verifier's score of an intermediate x̂₀ predict the final image? (Why SMC and pruning help, or not.)

    python benchmarks/reward_lookahead.py --out results/reward_lookahead.json

Runs N independent trajectories per held-out prompt, decodes x̂₀ after every step and scores it
with each verifier: ``plain`` (the shapes reward, blind to the noise level) and ``noise_aware``
(the shipped noise-aware shapes reward of that model, told the level). Per step and verifier:

* ``spearman_final``: within-prompt rank correlation of the step's score with the final
  reward (the clean shapes reward of the trajectory's final image: what the noise-aware
  reward was trained to predict);
* ``pairwise_correct``: over pairs of trajectories of one prompt where exactly one final image
  is correct by the exact evaluator, how often the step's score ranks the correct one higher
  (0.5 = chance; the final reward's value is what best-of-N selection gets).

``--samplers``: ``stochastic`` is the transition SMC uses (the step noise of the adapter,
as in earlier versions of this table); ``deterministic`` (eta=0) is what best-of-N and pruning use.
The JSON's ``models[MODEL][VERIFIER]["steps"]`` holds the first sampler's table;
``models[MODEL]["samplers"][SAMPLER][VERIFIER]["steps"]`` every sampler's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from steer.eval.geneval import TASKS
from steer.models.registry import get_adapter
from steer.shapes import evaluate_image, load_flow_pipeline, load_noise_aware_reward, load_pipeline, load_reward, to_uint8
from steer.shapes.prompts import make_prompt_set


def pairwise(scores: np.ndarray, correct: np.ndarray) -> tuple[float, int]:
    """(wins + ties/2, pairs) over (correct, incorrect) particle pairs of one prompt."""
    pos, neg = scores[correct], scores[~correct]
    if len(pos) == 0 or len(neg) == 0:
        return 0.0, 0
    d = pos[:, None] - neg[None, :]
    return float((d > 0).sum() + 0.5 * (d == 0).sum()), d.size


@torch.no_grad()
def run_chunk(adapter, prompts: list[str], n: int, steps: int, guidance: float, eta: float, seeds: list[int], verifiers: dict):
    """Scores ``{verifier: (S-1, P, n)}`` of x̂₀ after each step, final rewards ``(P, n)`` and final images (uint8)."""
    adapter.eta = eta
    adapter.prepare(warn=False)
    cond = adapter.encode(prompts, guidance_scale=guidance)
    adapter.set_schedule(steps)
    P = len(prompts)
    idx = torch.arange(P).repeat_interleave(n)
    c = cond.select(idx)
    gens = [torch.Generator().manual_seed(seeds[p] * 1000 + k) for p in range(P) for k in range(n)]
    x = adapter.initial_noise(gens)
    texts = [prompts[i] for i in idx.tolist()]
    scores = {name: [] for name in verifiers}
    for i in range(adapter.num_steps):
        out = adapter.step(x, i, c, gens)
        x = out.prev_sample
        if i + 1 < adapter.num_steps:
            images = adapter.decode(out.pred_original_sample)
            level = adapter.noise_level(i)
            for name, v in verifiers.items():
                scores[name].append(v(images, texts, noise_level=level).float().view(P, n).cpu().numpy())
    final = adapter.decode(x)
    return {k: np.stack(v) for k, v in scores.items()}, final


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["sd", "flow"], choices=["sd", "flow"])
    p.add_argument("--per-task", type=int, default=8, help="held-out prompts per task (make_prompt_set)")
    p.add_argument("--prompt-seed", type=int, default=11)
    p.add_argument("--particles", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--samplers", nargs="+", default=["stochastic", "deterministic"], choices=["stochastic", "deterministic"])
    p.add_argument("--verifiers", nargs="+", default=["plain", "noise_aware"], choices=["plain", "noise_aware"])
    p.add_argument("--batch-prompts", type=int, default=8)
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
        adapter = get_adapter(pipe)
        verifiers = {"plain": reward, "noise_aware": load_noise_aware_reward(model)}
        verifiers = {k: v for k, v in verifiers.items() if k in a.verifiers}
        for v in verifiers.values():
            if hasattr(v, "check_compatible"):
                v.check_compatible(adapter)
        entry = result["models"].setdefault(model, {"samplers": {}})
        n = a.particles
        for sampler in a.samplers:
            eta = 0.0 if sampler == "deterministic" else adapter.stochastic_eta
            per = {name: {} for name in verifiers}
            final_pairs = [0.0, 0]
            levels = None
            for start in range(0, len(records), a.batch_prompts):
                chunk = records[start : start + a.batch_prompts]
                scores, final_images = run_chunk(adapter, [r["prompt"] for r in chunk], n, a.steps, a.guidance, eta,
                                                 list(range(start, start + len(chunk))), verifiers)
                texts = [r["prompt"] for r in chunk for _ in range(n)]
                with torch.no_grad():
                    final = reward(final_images, texts).float().view(len(chunk), n).cpu().numpy()
                imgs = to_uint8(final_images.permute(0, 2, 3, 1).cpu().numpy())
                levels = [round(adapter.noise_level(i), 4) for i in range(a.steps - 1)]
                for i, rec in enumerate(chunk):
                    ok = np.array([evaluate_image(im, rec).correct for im in imgs[i * n : (i + 1) * n]])
                    w, c = pairwise(final[i], ok)
                    final_pairs[0] += w
                    final_pairs[1] += c
                    for name, sc in scores.items():
                        for k in range(sc.shape[0]):
                            s = per[name].setdefault(k + 1, {"rho": [], "wins": 0.0, "pairs": 0})
                            r = sc[k, i]
                            if np.ptp(r) > 0 and np.ptp(final[i]) > 0:
                                s["rho"].append(spearmanr(r, final[i]).statistic)
                            w, c = pairwise(r, ok)
                            s["wins"] += w
                            s["pairs"] += c
            final_pc = final_pairs[0] / max(final_pairs[1], 1)
            block = {}
            for name, steps in per.items():
                block[name] = {"steps": [{"step": k, "noise_level": levels[k - 1], "spearman_final": float(np.mean(s["rho"])) if s["rho"] else float("nan"),
                                          "pairwise_correct": s["wins"] / max(s["pairs"], 1)} for k, s in sorted(steps.items())]}
            block["final_pairwise_correct"], block["pairs"] = final_pc, final_pairs[1]
            entry["samplers"][sampler] = block
            if sampler == a.samplers[0]:
                entry.update({name: block[name] for name in verifiers})
                entry["final_pairwise_correct"], entry["pairs"], entry["sampler"] = final_pc, final_pairs[1], sampler
            print(f"\n{model}, {sampler} sampler (eta={eta:g}): {len(records)} prompts ({len(TASKS)} tasks) × {n} trajectories; "
                  f"final reward pairwise_correct={final_pc:.3f} over {final_pairs[1]} pairs")
            names = list(verifiers)
            print(f"{'step':>5} {'noise':>7} " + " ".join(f"{'rho ' + v:>17} {'pairs ' + v:>19}" for v in names))
            for k in range(1, a.steps):
                row = [next(s for s in block[v]["steps"] if s["step"] == k) for v in names]
                print(f"{k:>5} {levels[k - 1]:>7.3f} " + " ".join(f"{r['spearman_final']:>17.3f} {r['pairwise_correct']:>19.3f}" for r in row))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
