"""Fine-tuning on the shapes models: GRAFT, P-GRAFT (several N_I), DRaFT-K, DRaFT-LV against the base model.

    python benchmarks/shapes_finetune.py --out results/shapes_finetune.json --plot results/shapes_finetune.png

Training prompts come from ``make_prompt_set(seed=--train-prompt-set)`` (never the eval set); every
method is trained with the shapes reward (``shapes_clip``) as its objective and judged on the
shipped eval prompts by the exact evaluator *and* by that reward: a method that raises the reward
but not the accuracy is reward hacking, and the table shows that gap. GRAFT and P-GRAFT at every
N_I train on the very same round of samples (equal sampling budget). Training compute per method:
sampling NFE + training NFE (a backward pass counts 2) and reward calls. The combination rows run
best-of-N and SMC at N = 4 on the base and on the best fine-tuned model.

Trained models are kept under ``--runs`` and every finished row in ``--out``: rerunning the same
command resumes (trainers resume mid-run; finished rows are not recomputed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_scaling import run_config  # noqa: E402

import steer  # noqa: E402
from steer.eval.geneval import TASKS  # noqa: E402
from steer.eval.stats import paired_bootstrap  # noqa: E402
from steer.shapes import load_flow_pipeline, load_pipeline, load_prompts, load_reward  # noqa: E402
from steer.train import draft, pgraft  # noqa: E402
from steer.train.finetune import load_result, read_result  # noqa: E402
from steer.train.noise_aware import load_prompt_source  # noqa: E402


def base_pipe(model: str):
    pipe = load_pipeline() if model == "sd" else load_flow_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_method(model: str, method: str, runs: Path, prompts: list[str], a) -> Path:
    """Train (or resume, or reuse) one method; returns its result folder."""
    out = runs / f"{model}_{method}"
    if (out / "final" / "steer_finetune.json").is_file():
        return out / "final"
    pipe, reward = base_pipe(model), load_reward()
    t0 = time.perf_counter()
    if method == "graft" or method.startswith("pgraft"):
        n_i = int(method.removeprefix("pgraft")) if method.startswith("pgraft") else None
        cfg = pgraft.PGraftConfig(method="pgraft" if n_i else "graft", n_i=n_i, num_inference_steps=a.steps, guidance_scale=a.guidance,
                                  trajectories=a.trajectories, accept=a.accept, train_steps=a.graft_steps, batch=a.graft_batch, lr=a.graft_lr,
                                  rank=a.rank, cfg_drop=a.cfg_drop)
        final = pgraft.train(pipe, reward, prompts, cfg, out, progress=not a.no_progress, base_model=f"shapes-{model}",
                             shared_samples=runs / f"{model}_round0_samples.pt")
    else:
        variant = method.removeprefix("draft_")
        cfg = draft.DraftConfig(variant=variant, k=a.draft_k, lv_samples=a.lv_samples, num_inference_steps=a.steps, guidance_scale=a.guidance,
                                steps=a.draft_steps, batch=a.draft_batch, lr=a.draft_lr, rank=a.rank)
        final = draft.train(pipe, reward, prompts, cfg, out, progress=not a.no_progress, base_model=f"shapes-{model}")
    print(f"trained {model} {method} in {time.perf_counter() - t0:.0f}s", flush=True)
    return final


def evaluate(model: str, method: str, result: Path | None, records, a, search: str = "best_of_n", n: int = 1) -> dict:
    pipe = base_pipe(model)
    meta = {}
    if result is not None:
        load_result(pipe, result)
        meta = read_result(result)
    steered = steer.wrap(pipe, method=search, reward=load_reward())
    opts = {"lam": a.lam} if search == "smc" else {}
    row = run_config(steered, records, a.seeds, a.steps, a.guidance, n, a.batch_prompts, **opts)
    comp = meta.get("compute", {})
    return {"model": model, "method": method if search == "best_of_n" and n == 1 else f"{method}+{search}{n}", "finetune": method,
            "search": search, "particles": n, "train_nfe": comp.get("total_nfe", 0), "train_sampling_nfe": comp.get("sampling_nfe", 0),
            "train_backprop_nfe": comp.get("train_nfe", 0), "train_reward_calls": comp.get("reward_calls", 0) + comp.get("reward_grad_calls", 0),
            "train_seconds": round(comp.get("seconds", 0.0), 1), "accuracy": row["accuracy"], "reward": row["mean_reward"], "nfe": row["nfe"],
            "tasks": row["tasks"], "correct": row["correct"], "eval_seconds": row["seconds"]}


def compare(rows: list[dict]) -> list[dict]:
    """Each row against its model's base (and P-GRAFT against GRAFT), paired on prompts and seeds, for accuracy."""
    out = []
    for r in rows:
        refs = []
        if r["method"] != "base" and r["particles"] == 1:
            refs.append("base")
        if r["finetune"].startswith("pgraft") and r["particles"] == 1:
            refs.append("graft")
        if r["particles"] > 1 and r["finetune"] != "base":
            refs.append(f"base+{r['search']}{r['particles']}")
        for ref_name in refs:
            ref = next((b for b in rows if b["model"] == r["model"] and b["method"] == ref_name), None)
            if ref is None or ref is r or len(ref["correct"]) != len(r["correct"]):
                continue
            d = paired_bootstrap(r["correct"], ref["correct"])
            out.append({"model": r["model"], "method": r["method"], "versus": ref_name, "diff": d["diff"], "low": d["low"], "high": d["high"],
                        "reward_diff": r["reward"] - ref["reward"],
                        "verdict": "tie" if d["low"] <= 0 <= d["high"] else ("better" if d["diff"] > 0 else "worse")})
    return out


def lv_vs_k(runs: Path, model: str, window: int = 20) -> dict | None:
    """DRaFT-LV's training compute to reach DRaFT-K's final reward (moving averages of the training reward)."""
    logs = {}
    for v in ("k", "lv"):
        f = runs / f"{model}_draft_{v}" / "log.json"
        if not f.is_file():
            return None
        logs[v] = json.loads(f.read_text())

    def smooth(log):
        r = np.array([row["reward"] for row in log])
        c = np.array([row["total_nfe"] for row in log])
        m = np.convolve(r, np.ones(window) / window, mode="valid")
        return m, c[window - 1 :]

    k_r, k_c = smooth(logs["k"])
    lv_r, lv_c = smooth(logs["lv"])
    target, k_compute = float(k_r[-1]), float(k_c[-1])
    hit = np.nonzero(lv_r >= target)[0]
    lv_compute = float(lv_c[hit[0]]) if len(hit) else None
    return {"model": model, "window": window, "k_final_reward": target, "k_compute": k_compute, "lv_final_reward": float(lv_r[-1]),
            "lv_compute_to_reach": lv_compute, "ratio": None if lv_compute is None else lv_compute / k_compute,
            "met": lv_compute is not None and lv_compute <= 0.5 * k_compute}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | method | train NFE | train reward calls | train s | accuracy | reward (optimised) | NFE/image |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['train_nfe']:,} | {r['train_reward_calls']:,} | {r['train_seconds']:.0f} | "
                     f"{r['accuracy']:.3f} | {r['reward']:.2f} | {r['nfe']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, m in zip(axes[0], models):
        sel = [r for r in rows if r["model"] == m and r["particles"] == 1]
        ax.scatter([r["reward"] for r in sel], [r["accuracy"] for r in sel])
        for r in sel:
            ax.annotate(r["method"], (r["reward"], r["accuracy"]), fontsize=7)
        ax.set_xlabel("optimised reward (shapes_clip)")
        ax.set_ylabel("exact accuracy")
        ax.set_title(f"{m}: accuracy vs optimised reward")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["sd"], choices=["sd", "flow"])
    p.add_argument("--methods", nargs="+", default=["graft", "pgraft5", "pgraft10", "pgraft15", "draft_k", "draft_lv"],
                   help="graft, pgraftN (P-GRAFT at N_I = N), draft_k, draft_lv")
    p.add_argument("--combine", nargs="*", default=["best_of_n", "smc"], help="search methods run at N = 4 on base and the best fine-tuned model")
    p.add_argument("--combine-n", type=int, default=4)
    p.add_argument("--combine-limit", type=int, default=8, help="eval prompts per task of the combination rows (they cost N times more)")
    p.add_argument("--runs", type=Path, default=Path("runs/finetune"))
    p.add_argument("--train-prompt-set", type=int, default=777)
    p.add_argument("--per-task", type=int, default=32, help="training prompts per task")
    p.add_argument("--trajectories", type=int, default=8)
    p.add_argument("--accept", default="top_k:1")
    p.add_argument("--graft-steps", type=int, default=400)
    p.add_argument("--graft-batch", type=int, default=32)
    p.add_argument("--graft-lr", type=float, default=3e-5, help="3e-5: chosen on held-out prompts (make_prompt_set(seed=555)); 1e-4 and up drifted")
    p.add_argument("--cfg-drop", type=float, default=0.0, help="caption dropout of GRAFT / P-GRAFT (0: train the conditional branch only)")
    p.add_argument("--draft-steps", type=int, default=100)
    p.add_argument("--draft-batch", type=int, default=4)
    p.add_argument("--draft-lr", type=float, default=3e-4)
    p.add_argument("--draft-k", type=int, default=1)
    p.add_argument("--lv-samples", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--prompts", type=Path, help="eval prompts (default: the shipped shapes eval set)")
    p.add_argument("--limit", type=int, default=48, help="eval prompts per task (48: all 288)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--batch-prompts", type=int, default=16)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plot", type=Path)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    for m in a.methods:
        if not (m in ("graft", "draft_k", "draft_lv") or (m.startswith("pgraft") and m[6:].isdigit())):
            p.error(f"unknown method {m!r}: use graft, pgraftN, draft_k or draft_lv")
    records = load_prompts(a.prompts)
    records = [r for t in TASKS for r in [r for r in records if r["tag"] == t][: a.limit]]
    combine_records = [r for t in TASKS for r in [r for r in records if r["tag"] == t][: a.combine_limit]]
    train_prompts = load_prompt_source(None, a.train_prompt_set, a.per_task)
    overlap = {r["prompt"] for r in records} & set(train_prompts)
    a.runs.mkdir(parents=True, exist_ok=True)
    result = json.loads(a.out.read_text()) if a.out.is_file() else {"rows": []}
    result.update(config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, train_eval_prompt_overlap=len(overlap))
    rows = result["rows"]

    def have(model, method):
        return any(r["model"] == model and r["method"] == method for r in rows)

    def save():
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(a.out)

    for model in a.models:
        if not have(model, "base"):
            rows.append(evaluate(model, "base", None, records, a))
            save()
        for method in a.methods:
            if model == "flow" and method.startswith("draft"):
                continue  # not run on flow here: see the README
            if not have(model, method):
                final = train_method(model, method, a.runs, train_prompts, a)
                rows.append(evaluate(model, method, final, records, a))
                save()
            print(markdown([r for r in rows if r["model"] == model]), flush=True)
        tuned = [r for r in rows if r["model"] == model and r["particles"] == 1 and r["method"] != "base"]
        if tuned and a.combine:
            best = max(tuned, key=lambda r: r["accuracy"])["method"]
            result.setdefault("best", {})[model] = best
            for search in a.combine:
                for name, res in (("base", None), (best, a.runs / f"{model}_{best}" / "final")):
                    if not have(model, f"{name}+{search}{a.combine_n}"):
                        rows.append(evaluate(model, name, res, combine_records, a, search=search, n=a.combine_n))
                        save()
        lv = lv_vs_k(a.runs, model)
        if lv:
            result.setdefault("draft_lv_vs_k", {})[model] = lv
    result["comparisons"] = compare(rows)
    save()
    print(markdown(rows))
    for c in result["comparisons"]:
        print(f"{c['model']} {c['method']} vs {c['versus']}: accuracy {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] ({c['verdict']}), "
              f"reward {c['reward_diff']:+.2f}")
    for m, lv in result.get("draft_lv_vs_k", {}).items():
        print(f"{m}: DRaFT-K final reward {lv['k_final_reward']:.2f} at {lv['k_compute']:,.0f} NFE; DRaFT-LV reaches it at "
              f"{lv['lv_compute_to_reach']} NFE (ratio {lv['ratio']}; target <= 0.5: {'met' if lv['met'] else 'not met'})")
    if a.plot:
        plot(rows, a.plot)
    return result


if __name__ == "__main__":
    main()
