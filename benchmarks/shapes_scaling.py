"""Accuracy (exact evaluator) and mean reward versus compute for best-of-N, SMC, Fleming-Viot, pruning,
tree search (DTS / DTS*) and initial-noise optimisation (ReNO, DOODL).

    python benchmarks/shapes_scaling.py --out results/shapes_scaling.json --plot results/shapes_scaling.png

Only the tree-search and noise-optimisation rows, on the seeds of the 24-prompt study, compared with its
best-of-N rows on the same prompts:

    python benchmarks/shapes_scaling.py --limit 8 --seeds 1 --seed-layout 24 --bon --smc --smc-noise-aware --prune \
        --reference results/shapes_scaling.json --out results/shapes_scaling_search2.json

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
from steer.eval.scaling import area_ratio, fraction_to_oracle, interpolate, relative_area_gain
from steer.shapes import evaluate_image, load_flow_pipeline, load_noise_aware_reward, load_pipeline, load_prompts, load_reward, to_uint8


EVAL_SEED = 2026  # make_prompt_set seed of the shipped eval prompts; tuning uses other seeds


def judged_records(records: list[dict], seeds: int) -> list[dict]:
    """The record of each judged image, in the order :func:`_generate` yields them (seed-major)."""
    return [rec for _ in range(seeds) for rec in records]


#: seed position of each record (index into the records list unless --seed-layout says otherwise)
SEED_POSITIONS: list[int] | None = None


def _generate(steered, records, seeds: int, steps: int, guidance: float, n: int, batch_prompts: int, seed_offset: int = 0, **opts):
    """Yield (record, images (k, H, W, 3) uint8, rewards (k,)) per prompt and seed, plus running NFE / reward calls."""
    stats = {"nfe": 0, "reward_calls": 0, "verifier_calls": 0, "backward_nfe": 0, "reward_grad_calls": 0}
    pos = SEED_POSITIONS or list(range(len(records)))

    def gen():
        for s in range(seeds):
            for start in range(0, len(records), batch_prompts):
                chunk = records[start : start + batch_prompts]
                gens = [torch.Generator().manual_seed(10_000 * s + seed_offset + pos[start + i]) for i in range(len(chunk))]
                out = steered([r["prompt"] for r in chunk], num_inference_steps=steps, guidance_scale=guidance, num_particles=n,
                              generator=gens, output_type="np", **opts)
                stats["nfe"] += out.trace.nfe
                stats["reward_calls"] += out.trace.reward_calls
                stats["verifier_calls"] += getattr(out.trace, "verifier_calls", 0)
                stats["backward_nfe"] += getattr(out.trace, "backward_nfe", 0)
                stats["reward_grad_calls"] += getattr(out.trace, "reward_grad_calls", 0)
                imgs = to_uint8(out.images)
                k = len(imgs) // len(chunk)
                for i, rec in enumerate(chunk):
                    yield rec, imgs[i * k : (i + 1) * k], np.asarray(out.rewards[i * k : (i + 1) * k])

    return gen(), stats


def _verdicts(images, records, jobs: int = 1) -> list:
    """``evaluate_image`` of each (image, record) pair, over ``jobs`` processes."""
    pairs = list(zip(images, records, strict=True))
    if jobs <= 1:
        return [evaluate_image(im, rec) for im, rec in pairs]
    from multiprocessing import get_context

    with get_context("spawn").Pool(jobs) as pool:
        return pool.starmap(evaluate_image, pairs, chunksize=64)


def judge_selected(records: list[dict], images: np.ndarray, jobs: int = 1) -> dict:
    """Accuracy of one returned image per (prompt × seed) record, by the exact evaluator."""
    verdicts = _verdicts(images, records, jobs)
    s = summarize(verdicts)
    return {"accuracy": s["overall"], "tasks": s["tasks"], "correct": [int(v.correct) for v in verdicts]}


def run_config(steered, records, seeds: int, steps: int, guidance: float, n: int, batch_prompts: int, seed_offset: int = 0,
               keep: dict | None = None, **opts) -> dict:
    """Run one method at N particles; the returned image of every prompt × seed is judged by the exact evaluator.

    ``keep`` (a dict) receives the judged ``images`` and ``rewards``, to judge them again later (``--rejudge``).
    """
    t0 = time.perf_counter()
    it, stats = _generate(steered, records, seeds, steps, guidance, n, batch_prompts, seed_offset, **opts)
    recs, images, rewards = [], [], []
    for rec, imgs, r in it:
        recs.append(rec), images.append(imgs[0]), rewards.append(float(r[0]))
    seconds = round(time.perf_counter() - t0, 2)
    if keep is not None:
        keep.update(images=np.stack(images), rewards=np.array(rewards))
    extra = {k: stats[k] / len(recs) for k in ("backward_nfe", "reward_grad_calls") if stats[k]}
    return {"nfe": stats["nfe"] / len(recs), "reward_calls": stats["reward_calls"] / len(recs), "verifier_calls": stats["verifier_calls"] / len(recs),
            **extra, **judge_selected(recs, images),
            "mean_reward": float(np.mean(rewards)), "seconds": seconds}


def judge_pool(records: list[dict], pool_images: np.ndarray, pool_rewards: np.ndarray, ns: list[int], jobs: int = 1) -> list[dict]:
    """Best-of-N accuracy and reward for each N from a pool ``(records, big, H, W, 3)``: disjoint groups of N, averaged."""
    big = pool_images.shape[1]
    flat = _verdicts(pool_images.reshape(-1, *pool_images.shape[2:]), [rec for rec in records for _ in range(big)], jobs)
    ok = np.array([v.correct for v in flat]).reshape(len(records), big)
    pool = [(rec["tag"], ok[i], r) for i, (rec, r) in enumerate(zip(records, pool_rewards))]
    rows = []
    for n in ns:
        per_prompt, best_rewards, any_ok = [], [], []
        for tag, ok, r in pool:
            groups = np.arange(big).reshape(-1, n)
            pick = groups[np.arange(len(groups)), r[groups].argmax(1)]
            per_prompt.append((tag, float(ok[pick].mean())))
            any_ok.append((tag, float(ok[groups].any(1).mean())))
            best_rewards.append(float(r[pick].mean()))
        s, o = summarize(per_prompt), summarize(any_ok)
        rows.append({"accuracy": s["overall"], "tasks": s["tasks"], "mean_reward": float(np.mean(best_rewards)),
                     "correct": [c for _, c in per_prompt],
                     "oracle": {"accuracy": o["overall"], "tasks": o["tasks"], "correct": [c for _, c in any_ok]}})
    return rows


def oracle_rows(bon_rows: list[dict]) -> list[dict]:
    """The ceiling a perfect verifier would reach: per best-of-N row of a pool, the share of prompt × seed where any
    of the N particles is correct (same NFE as best-of-N; no reward calls are needed to know it, but a verifier would)."""
    out = []
    for r in bon_rows:
        if "oracle" not in r:
            continue
        o = r["oracle"]
        out.append({"model": r["model"], "method": "oracle", "options": dict(r["options"]), "nfe": r["nfe"], "reward_calls": r["reward_calls"],
                    "accuracy": o["accuracy"], "tasks": o["tasks"], "correct": o["correct"], "mean_reward": float("nan"),
                    "seconds": r["seconds"], "estimate": r.get("estimate", "")})
    return out


def run_best_of_n_pool(steered, records, seeds: int, steps: int, guidance: float, ns: list[int], batch_prompts: int,
                       seed_offset: int = 0, keep: dict | None = None, **opts) -> list[dict]:
    """Best-of-N for every N in ``ns`` from one pool of max(ns) independent particles per prompt and seed.

    The pool is split into max(ns)/N disjoint groups; each group's best-reward particle is judged, and
    the group results are averaged (an unbiased, lower-variance estimate of best-of-N accuracy). NFE
    and reward calls are exact per N; seconds are the pool's time pro rata.
    """
    big = max(ns)
    if any(big % n for n in ns):
        raise ValueError(f"every best-of-N count must divide the largest ({big}), got {ns}")
    t0 = time.perf_counter()
    it, stats = _generate(steered, records, seeds, steps, guidance, big, batch_prompts, seed_offset, return_all=True, **opts)
    recs, images, rewards = [], [], []
    for rec, imgs, r in it:
        recs.append(rec), images.append(imgs), rewards.append(r)
    seconds = time.perf_counter() - t0
    images, rewards = np.stack(images), np.stack(rewards)
    if keep is not None:
        keep.update(images=images, rewards=rewards)
    rows = []
    for n, judged in zip(ns, judge_pool(recs, images, rewards, ns)):
        rows.append({"nfe": stats["nfe"] / len(recs) * n / big, "reward_calls": stats["reward_calls"] / len(recs) * n / big,
                     **judged, "seconds": round(seconds * n / big, 2), "estimate": f"pool of {big}"})
    return rows


def comparisons(rows: list[dict]) -> list[dict]:
    """Each resampling row at N particles against best-of-N at 2N (the equal-compute target: 4× vs 8× the base NFE)
    and at N, paired on the same prompts and seeds, with a bootstrap 95 % interval (rows need ``correct``)."""
    from steer.eval.stats import paired_bootstrap

    out = []
    for r in rows:
        if r["method"] in ("best_of_n", "oracle") or "correct" not in r:
            continue
        n = r["options"]["num_particles"]
        refs = (8, 32) if r["method"].startswith("prune") else (2 * n, n)  # pruning's targets: best-of-8 and best-of-32
        for m in refs:
            ref = next((b for b in rows if b["model"] == r["model"] and b["method"] == "best_of_n" and b["options"].get("eta") is None
                        and b["options"]["num_particles"] == m and "correct" in b), None)
            if ref is None:
                continue
            d = paired_bootstrap(r["correct"], ref["correct"])
            out.append({"model": r["model"], "method": r["method"], "particles": n, "nfe": r.get("nfe"), "versus": f"best_of_n N={m}",
                        "versus_nfe": ref.get("nfe"), "diff": d["diff"],
                        "low": d["low"], "high": d["high"], "pairs": d["n"],
                        "verdict": "tie" if d["low"] <= 0 <= d["high"] else ("better" if d["diff"] > 0 else "worse")})
        if r["method"].endswith("_noise_aware"):  # the verifier's own effect: the same method with the plain reward
            plain = next((b for b in rows if b["model"] == r["model"] and b["method"] == r["method"].removesuffix("_noise_aware")
                          and b["options"]["num_particles"] == n and "correct" in b), None)
            if plain is not None:
                d = paired_bootstrap(r["correct"], plain["correct"])
                out.append({"model": r["model"], "method": r["method"], "particles": n, "nfe": r.get("nfe"), "versus": f"{plain['method']} N={n}",
                            "versus_nfe": plain.get("nfe"), "diff": d["diff"], "low": d["low"], "high": d["high"], "pairs": d["n"],
                            "verdict": "tie" if d["low"] <= 0 <= d["high"] else ("better" if d["diff"] > 0 else "worse")})
    return out


def analyse(rows: list[dict]) -> dict:
    """Per model: each search row's fraction of the way from best-of-1 to the oracle at its NFE, each method's area
    under accuracy-versus-NFE relative to best-of-N, and how far the best row is from the moonshot (best-of-32's
    accuracy at ≤ 1/8 of its NFE)."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        bon = sorted((r["nfe"], r["accuracy"]) for r in mine if r["method"] == "best_of_n" and r["options"].get("eta") is None)
        oracle = sorted((r["nfe"], r["accuracy"]) for r in mine if r["method"] == "oracle")
        if not bon:
            continue
        base = bon[0][1]
        entry = {"best_of_1": base, "rows": [], "area_vs_best_of_n": {}}
        methods: dict[str, list] = {}
        for r in mine:
            if r["method"] in ("oracle",):
                continue
            frac = fraction_to_oracle(r["accuracy"], r["nfe"], base, oracle) if oracle else float("nan")
            entry["rows"].append({"method": r["method"], "num_particles": r["options"]["num_particles"], "nfe": r["nfe"], "accuracy": r["accuracy"],
                                  "best_of_n_at_nfe": interpolate(bon, r["nfe"]), "oracle_at_nfe": interpolate(oracle, r["nfe"]) if oracle else float("nan"),
                                  "fraction_to_oracle": frac})
            methods.setdefault(r["method"], []).append((r["nfe"], r["accuracy"]))
        entry["area_vs_best_of_n"] = {m: area_ratio(pts, bon) for m, pts in methods.items()}
        # TTSnap's metric: relative gain in area above best-of-N's smallest-budget score, linear NFE axis
        bon_reward = sorted((r["nfe"], r["mean_reward"]) for r in mine if r["method"] == "best_of_n" and r["options"].get("eta") is None)
        rewards: dict[str, list] = {}
        for r in mine:
            if r["method"] not in ("oracle", "best_of_n"):
                rewards.setdefault(r["method"], []).append((r["nfe"], r.get("mean_reward", float("nan"))))
        entry["ttsnap_relative_area"] = {m: {"reward": relative_area_gain(rewards[m], bon_reward), "accuracy": relative_area_gain(pts, bon)}
                                         for m, pts in methods.items() if m != "best_of_n"}
        b32 = next((r for r in mine if r["method"] == "best_of_n" and r["options"]["num_particles"] == 32 and r["options"].get("eta") is None), None)
        if b32 is not None:
            cheap = [r for r in mine if r["method"] not in ("oracle",) and r["nfe"] <= b32["nfe"] / 8 + 1e-9]
            best = max(cheap, key=lambda r: r["accuracy"]) if cheap else None
            entry["moonshot"] = {"target_accuracy": b32["accuracy"], "max_nfe": b32["nfe"] / 8,
                                 "best": None if best is None else {"method": best["method"], "num_particles": best["options"]["num_particles"],
                                                                    "nfe": best["nfe"], "accuracy": best["accuracy"], "gap": b32["accuracy"] - best["accuracy"]}}
        out[model] = entry
    return out


def reference_subset(reference: dict, records: list[dict], seeds: int, layout: int, models: list[str]) -> dict:
    """Accuracy of a finished study's rows (with ``correct`` per prompt × seed) on this run's prompts and seeds.

    The reference must have been run with ``--limit layout`` and at least ``seeds`` seeds, offset 0, so that its
    judged image ``s·(6·layout) + position`` is this run's prompt at that seed position."""
    per_task = {t: [r for r in records if r["tag"] == t] for t in TASKS}
    index = [s * len(TASKS) * layout + ti * layout + j for s in range(seeds) for ti, t in enumerate(TASKS) for j in range(len(per_task[t]))]
    tags = [t for _ in range(seeds) for t in TASKS for _ in per_task[t]]
    out: dict = {}
    for r in reference["rows"]:
        if r["model"] not in models or "correct" not in r or r["method"] not in ("best_of_n", "smc", "fleming_viot", "oracle"):
            continue
        if len(r["correct"]) < max(index) + 1:
            continue
        eta = r["options"].get("eta")
        key = f"{r['method']}{'' if eta is None else f'(eta={eta:g})'} N={r['options']['num_particles']}"
        s = summarize([(tag, float(r["correct"][i])) for tag, i in zip(tags, index)])
        out.setdefault(r["model"], {})[key] = {"accuracy": s["overall"], "tasks": s["tasks"], "nfe": r["nfe"]}
    return out


def report(result: dict) -> None:
    """Print the comparisons and the analysis."""
    for c in result.get("comparisons", []):
        print(f"{c['model']:5s} {c['method']:24s} N={c['particles']} vs {c['versus']:15s}: {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] {c['verdict']}")
    for model, e in result.get("analysis", {}).items():
        print(f"\n{model}: fraction of the way from best-of-1 ({e['best_of_1']:.3f}) to the oracle at the same NFE")
        for r in e["rows"]:
            print(f"  {r['method']:24s} N={r['num_particles']:<3d} nfe={r['nfe']:6.1f} acc={r['accuracy']:.3f} oracle={r['oracle_at_nfe']:.3f} "
                  f"fraction={r['fraction_to_oracle']:.2f}")
        print("  area under accuracy-vs-log2(NFE) relative to best-of-N: " + ", ".join(f"{m} {v:.3f}" for m, v in e["area_vs_best_of_n"].items()))
        print("  TTSnap relative area gain over best-of-N (reward; accuracy): " + ", ".join(
            f"{m} {v['reward']:+.1%}; {v['accuracy']:+.1%}" for m, v in e.get("ttsnap_relative_area", {}).items()))
        if e.get("moonshot"):
            m = e["moonshot"]
            b = m["best"]
            print(f"  moonshot: best-of-32's {m['target_accuracy']:.3f} at <= {m['max_nfe']:.0f} NFE; best there: "
                  + ("none" if b is None else f"{b['method']} N={b['num_particles']} {b['accuracy']:.3f} (gap {b['gap']:+.3f})"))


def _budget_label(o: dict) -> str:
    """The budget option of a tree-search / noise-optimisation row, for tables."""
    if "nfe" in o:
        return f" nfe={o['nfe']}"
    if "iters" in o:
        return f" iters={o['iters']} steps={o.get('steps')}"
    return ""


def _print(row: dict) -> None:
    n = row["options"]["num_particles"]
    print(f"{row['model']:5s} {row['method'] + _budget_label(row['options']):24s} N={n:<3d} nfe/img={row['nfe']:7.1f} reward_calls/img={row['reward_calls']:6.1f} "
          f"acc={row['accuracy']:.3f} reward={row['mean_reward']:.2f} {row['seconds']:.0f}s", flush=True)


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (per-task accuracy included)."""
    head = "| model | method | N | NFE/img | reward calls/img | verifier calls/img | " + " | ".join(TASKS) + " | accuracy | mean reward | seconds |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        o = r["options"]
        name = r["method"] + (f" (eta={o['eta']:g})" if o.get("eta") is not None else "") + _budget_label(o)
        tasks = " | ".join(f"{r['tasks'].get(t, float('nan')):.3f}" for t in TASKS)
        lines.append(f"| {r['model']} | {name} | {o['num_particles']} | {r['nfe']:.0f} | {r['reward_calls']:.0f} | {r.get('verifier_calls', 0):.0f} | {tasks} | "
                     f"**{r['accuracy']:.3f}** | {r['mean_reward']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        labels: dict[str, list] = {}
        for r in rows:
            if r["model"] == model:
                eta = r["options"].get("eta")
                labels.setdefault(r["method"] + (f" (eta={eta:g})" if eta is not None else ""), []).append((r["nfe"], r["accuracy"]))
        for label, pts in labels.items():
            ax.plot(*zip(*sorted(pts)), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set(title=f"shapes {model}", xlabel="NFE per image", ylabel="accuracy (exact evaluator)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def merge(results: list[dict]) -> dict:
    """Combine runs over disjoint prompt slices (``--offset``: per-task accuracies weighted by prompts × seeds),
    or runs of different models on the same prompts (their rows side by side)."""
    if len(results) == 1:
        return results[0]
    models = [{r["model"] for r in res["rows"]} for res in results]
    if sum(len(m) for m in models) == len(set().union(*models)):
        return {"config": {"merged": [r["config"] for r in results]}, "rows": [row for res in results for row in res["rows"]]}
    keys = [{(r["model"], r["method"], json.dumps(r["options"], sort_keys=True)) for r in res["rows"]} for res in results]
    same = ("limit", "offset", "seeds", "steps", "guidance", "prompts")
    cfgs = [{k: c.get(k) for k in same} for res in results for c in res["config"].get("merged", [res["config"]])]
    if sum(len(k) for k in keys) == len(set().union(*keys)) and all(c == cfgs[0] for c in cfgs):
        # different rows on the same prompts and seeds (e.g. new methods added to a study): side by side
        return {"config": {"merged": [r["config"] for r in results]}, "rows": [row for res in results for row in res["rows"]]}
    groups: dict[tuple, list[tuple[float, dict]]] = {}
    for res in results:
        w = res["config"]["limit"] * res["config"]["seeds"]
        for row in res["rows"]:
            groups.setdefault((row["model"], row["method"], json.dumps(row["options"], sort_keys=True)), []).append((w, row))
    rows = []
    for (model, method, _), parts in groups.items():
        if len(parts) != len(results):
            raise ValueError(f"{model} {method} {parts[0][1]['options']} is missing from some of the merged files")
        total = sum(w for w, _ in parts)
        avg = lambda key: sum(w * r[key] for w, r in parts) / total  # noqa: E731
        tasks = {t: sum(w * r["tasks"][t] for w, r in parts) / total for t in parts[0][1]["tasks"]}
        row = {**parts[0][1], "nfe": avg("nfe"), "reward_calls": avg("reward_calls"), "mean_reward": avg("mean_reward"),
               "tasks": tasks, "accuracy": float(np.mean(list(tasks.values()))), "seconds": round(sum(r["seconds"] for _, r in parts), 2)}
        rows.append(row)
    return {"config": {"merged": [r["config"] for r in results]}, "rows": rows}


def _image_file(folder: Path, row: dict) -> Path:
    if row.get("estimate", "").startswith("pool"):
        return folder / f"{row['model']}_best_of_n_pool.npz"
    eta = row["options"].get("eta")
    return folder / f"{row['model']}_{row['method']}_{row['options']['num_particles']}{'' if eta is None else f'_eta{eta:g}'}.npz"


def save_images(folder: Path, row: dict, records: list[dict], keep: dict) -> None:
    """The images a row judged (and their rewards), so a later evaluator can judge them again (``--rejudge``)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(_image_file(folder, row), images=keep["images"], rewards=keep["rewards"], records=json.dumps(records))


def rejudge(result: dict, folder: Path, jobs: int = 1) -> dict:
    """The rows of an earlier run judged again by today's evaluator, from its saved images (compute figures kept)."""
    rows, pools = [], {}
    for row in result["rows"]:
        if row["method"] == "oracle":
            continue
        f = _image_file(folder, row)
        if not f.exists():
            raise FileNotFoundError(f"{f} not found: rerun the study with --images {folder}")
        data = np.load(f)
        records = json.loads(str(data["records"]))
        if row.get("estimate", "").startswith("pool"):
            if f not in pools:
                ns = [r["options"]["num_particles"] for r in result["rows"] if _image_file(folder, r) == f]
                pools[f] = dict(zip(ns, judge_pool(records, data["images"], data["rewards"], ns, jobs)))
            judged = pools[f][row["options"]["num_particles"]]
        else:
            judged = {**judge_selected(records, data["images"], jobs), "mean_reward": float(np.mean(data["rewards"]))}
        rows.append({**row, **judged})
        _print(rows[-1])
    rows = [r for r in rows if r["method"] != "oracle"]
    rows += oracle_rows([r for r in rows if r["method"] == "best_of_n"])
    return {"config": {**result["config"], "rejudged": True}, "rows": rows}


def _config(a: argparse.Namespace) -> dict:
    """The arguments as JSON values (paths as strings)."""
    def value(v):
        return str(v) if isinstance(v, Path) else [value(e) for e in v] if isinstance(v, list) else v

    return {k: value(v) for k, v in vars(a).items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, help="GenEval-style JSONL (default: the shipped shapes eval set)")
    p.add_argument("--limit", type=int, default=8, help="prompts per task")
    p.add_argument("--offset", type=int, default=0, help="skip this many prompts per task (to split a study into slices)")
    p.add_argument("--merge", type=Path, nargs="+", help="combine the JSON results of runs on disjoint slices into --out/--plot")
    p.add_argument("--models", nargs="+", default=["sd", "flow"], choices=["sd", "flow"])
    p.add_argument("--bon", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32], help="best-of-N particle counts (none: skip; the oracle rows come from this pool)")
    p.add_argument("--bon-eta", type=float, help="step noise of the best-of-N particles (default 0: the deterministic sampler)")
    p.add_argument("--smc", type=int, nargs="*", default=[4, 8], help="SMC and Fleming-Viot particle counts (none: best-of-N only)")
    p.add_argument("--smc-noise-aware", type=int, nargs="*", default=[4, 8],
                   help="SMC and Fleming-Viot particle counts with the noise-aware reward as potential (none: skip)")
    p.add_argument("--prune", type=int, nargs="*", default=[4, 8, 12], help="pruning candidate counts (none: skip)")
    p.add_argument("--prune-schedule", type=json.loads, help="JSON list of [step, keep_fraction] (default: the method's)")
    p.add_argument("--verifiers", nargs="+", default=["plain", "noise_aware"], choices=["plain", "noise_aware"],
                   help="pruning verifiers: plain (the shapes reward on x̂₀) and noise_aware (the shipped noise-aware reward)")
    p.add_argument("--dts", type=int, nargs="*", default=[50, 100, 160],
                   help="DTS and DTS* NFE budgets per image (none: skip); 160 = 1/5 of best-of-32's NFE at 25 steps")
    p.add_argument("--dts-methods", nargs="+", default=["dts", "dts_star"], choices=["dts", "dts_star"])
    p.add_argument("--dts-lam", type=float, default=1.0, help="DTS λ (selection ∝ exp(λ·v̂), soft backup) on the reward's 100·cosine scale")
    p.add_argument("--dts-children", type=int, default=2, help="children per branching node")
    p.add_argument("--dts-roots", type=int, default=4, help="initial noises (children of the root); 4 beat 2 and 3 (children 3) on held-out "
                   "prompts (offset 16, 3 per task, runs/issue12/tune_*.json)")
    p.add_argument("--dts-interval", type=int, help="steps between branching levels (default: the method's, S/5)")
    p.add_argument("--dts-eta", type=float, help="step noise of the tree's transitions (default: the adapter's stochastic one)")
    p.add_argument("--reno", type=int, nargs="*", default=[0, 4, 8],
                   help="ReNO iteration counts (none: skip; 0 is the base model's deterministic sample on the same noise)")
    p.add_argument("--reno-lr", type=float, default=5.0)
    p.add_argument("--reno-backprop-steps", type=int, help="ReNO: backward through the last K steps only (default: all, checkpointed)")
    p.add_argument("--doodl", type=int, nargs="*", default=[2, 4], help="DOODL iteration counts (none: skip)")
    p.add_argument("--doodl-lr", type=float, default=0.1)
    p.add_argument("--noise-opt-steps", type=int, default=10, help="sampler steps of the ReNO / DOODL rows (few-step setting)")
    p.add_argument("--seed-layout", type=int,
                   help="seed each prompt as in a study with this many prompts per task (e.g. 24: the seeds of results/shapes_scaling.json)")
    p.add_argument("--reference", type=Path, nargs="+", help="a finished study (e.g. results/shapes_scaling.json): its best-of-N accuracy on the same "
                   "prompts and seeds goes into the result (needs the same --seed-layout as that study's --limit)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--bon-mode", default="pool", choices=["pool", "run"],
                   help="pool: every best-of-N from one pool of max(--bon) particles (disjoint groups); run: one call per N")
    p.add_argument("--lam", type=float, default=0.1,
                   help="λ of SMC / Fleming-Viot on the shapes reward's 100·cosine scale (0.1: tuned on held-out prompts, shapes_tune.py)")
    p.add_argument("--interval", type=int, help="steps between SMC / Fleming-Viot potentials (default: the method's)")
    p.add_argument("--eta", type=float, help="step noise of SMC / Fleming-Viot (default: the adapter's)")
    p.add_argument("--potential", default="max")
    p.add_argument("--batch-prompts", type=int, default=8)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--images", type=Path, help="save every judged image (and its reward) here, for --rejudge")
    p.add_argument("--rejudge", type=Path, nargs=2, metavar=("RESULT_JSON", "IMAGES"),
                   help="judge a finished run's saved images again with today's evaluator (no generation)")
    p.add_argument("--jobs", type=int, default=1, help="processes for --rejudge")
    a = p.parse_args(argv)
    if a.rejudge or a.merge:  # no generation: judge saved images again, or combine finished runs
        if a.rejudge:
            result = rejudge(json.loads(a.rejudge[0].read_text()), a.rejudge[1], a.jobs)
        else:
            result = merge([json.loads(f.read_text()) for f in a.merge])
        print(markdown(result["rows"]))
        result["comparisons"] = comparisons(result["rows"])
        result["analysis"] = analyse(result["rows"])
        report(result)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=2))
        if a.plot:
            plot(result["rows"], sorted({r["model"] for r in result["rows"]}, key=["sd", "flow"].index), a.plot)
        return result
    if a.threads:
        torch.set_num_threads(a.threads)
    records = load_prompts(a.prompts)
    records = [r for t in TASKS for r in [r for r in records if r["tag"] == t][a.offset : a.offset + a.limit]]
    global SEED_POSITIONS
    layout = a.seed_layout or a.limit
    SEED_POSITIONS = [ti * layout + j for ti in range(len(TASKS)) for j in range(a.limit)] if a.seed_layout else None
    if SEED_POSITIONS is not None and len(SEED_POSITIONS) != len(records):
        raise ValueError("--seed-layout needs --limit prompts in every task")
    seed0 = a.offset * len(TASKS)  # a later slice's prompts get seeds of their own
    reward = load_reward()
    rows = []
    for model in a.models:
        pipe = load_pipeline() if model == "sd" else load_flow_pipeline()
        pipe.set_progress_bar_config(disable=True)
        if a.bon_mode == "pool":
            steered = steer.wrap(pipe, method="best_of_n", reward=reward)
            bon_opts = {"eta": a.bon_eta} if a.bon_eta is not None else {}
            keep: dict = {}
            pool = run_best_of_n_pool(steered, records, a.seeds, a.steps, a.guidance, a.bon, a.batch_prompts, seed0, keep=keep, **bon_opts) if a.bon else []
            for n, row in zip(a.bon, pool):
                rows.append({"model": model, "method": "best_of_n", "options": {"num_particles": n, **bon_opts}, **row})
                _print(rows[-1])
            rows += oracle_rows(rows[len(rows) - len(pool):])
            if a.images and pool:
                save_images(a.images, rows[-1 - len(pool)], judged_records(records, a.seeds), keep)
            configs = []
        else:
            configs = [("best_of_n", n, {"eta": a.bon_eta} if a.bon_eta is not None else {}) for n in a.bon]
        search = {"lam": a.lam, "interval": a.interval, **({"eta": a.eta} if a.eta is not None else {})}
        configs += [("smc", n, {"potential": a.potential, **search}) for n in a.smc]
        configs += [("fleming_viot", n, dict(search)) for n in a.smc]
        noise_aware = load_noise_aware_reward(model) if (a.smc_noise_aware or (a.prune and "noise_aware" in a.verifiers)) else None
        schedule = {"schedule": a.prune_schedule} if a.prune_schedule else {}
        for verifier in a.verifiers:
            configs += [("prune" if verifier == "plain" else "prune_noise_aware", n, dict(schedule)) for n in a.prune]
        # noise-aware potentials: λ chosen by the ESS target (lam="auto"), as the reward's units differ in spread
        for n in a.smc_noise_aware:
            configs += [("smc_noise_aware", n, {"potential": a.potential, "interval": a.interval, "lam": "auto"}),
                        ("fleming_viot_noise_aware", n, {"interval": a.interval, "lam": "auto"})]
        dts_opts = {"lam": a.dts_lam, "children": a.dts_children, "roots": a.dts_roots, "interval": a.dts_interval}
        dts_opts.update({"eta": a.dts_eta} if a.dts_eta is not None else {})
        configs += [(m, 1, {"nfe": b, **dts_opts}) for b in a.dts for m in a.dts_methods]
        configs += [("reno", 1, {"iters": k, "lr": a.reno_lr, "backprop_steps": a.reno_backprop_steps, "steps": a.noise_opt_steps}) for k in a.reno]
        configs += [("doodl", 1, {"iters": k, "lr": a.doodl_lr, "steps": a.noise_opt_steps}) for k in a.doodl]
        for method, n, opts in configs:
            base = method.replace("_noise_aware", "")
            call_opts = dict(opts)
            if method in ("smc_noise_aware", "fleming_viot_noise_aware"):
                call_opts["potential_reward"] = noise_aware
            elif method == "prune_noise_aware":
                call_opts["verifier"] = noise_aware
            steps = call_opts.pop("steps", a.steps)
            steered = steer.wrap(pipe, method=base, reward=reward)
            row = {"model": model, "method": method, "options": {"num_particles": n, **opts}}
            keep = {}
            row.update(run_config(steered, records, a.seeds, steps, a.guidance, n, a.batch_prompts, seed0, keep=keep, **call_opts))
            rows.append(row)
            _print(row)
            if a.out:  # a partial result after every row, so a stopped run keeps what it measured
                a.out.parent.mkdir(parents=True, exist_ok=True)
                partial = {"config": _config(a), "rows": rows, "partial": True}
                tmp = a.out.with_suffix(".tmp")
                tmp.write_text(json.dumps(partial, indent=2))
                tmp.replace(a.out)
            if a.images:
                save_images(a.images, row, judged_records(records, a.seeds), keep)
    result = {"config": _config(a), "rows": rows}
    result["comparisons"] = comparisons(rows)
    result["analysis"] = analyse(rows)
    if a.reference:
        result["reference"] = {}
        for f in a.reference:
            for model, rows_ in reference_subset(json.loads(f.read_text()), records, a.seeds, layout, a.models).items():
                result["reference"].setdefault(model, {}).update(rows_)
    print(markdown(rows))
    report(result)
    for model, ref in result.get("reference", {}).items():
        print(f"{model}: on these prompts and seeds, {', '.join(str(f) for f in a.reference)}: " + ", ".join(f"{k} {v['accuracy']:.3f} ({v['nfe']:.0f} NFE)" for k, v in ref.items()))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
    if a.plot:
        plot(rows, a.models, a.plot)
    return result


if __name__ == "__main__":
    main()
