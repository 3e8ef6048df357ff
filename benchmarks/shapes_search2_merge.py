"""Merge the tree-search / noise-optimisation study pieces (runs/issue12/*.json, see the README) into results/shapes_scaling_search2.json with paired comparisons."""
import argparse
import json
import sys
from pathlib import Path

argparse.ArgumentParser(description=__doc__).parse_args()
sys.path.insert(0, "benchmarks")
import shapes_scaling as s
from steer.eval.stats import paired_bootstrap

parts = ["runs/issue12/search2_sd.json", "runs/issue12/search2_flow.json", "runs/issue12/doodl0_sd_10.json",
         "runs/issue12/doodl0_sd_25.json", "runs/issue12/doodl_sd_25.json"]
res = [json.loads(Path(p).read_text()) for p in parts if Path(p).exists()]
out = s.merge(res)
out["reference"] = {}
for r in res:
    for m, rows in r.get("reference", {}).items():
        out["reference"].setdefault(m, {}).update(rows)
# paired bootstrap on the same prompts and seed: search rows vs best-of-N (reference subset) and ReNO/DOODL vs their base
ref_full = json.loads(Path("results/shapes_scaling.json").read_text())
from steer.eval.geneval import TASKS
from steer.shapes import load_prompts
recs = load_prompts(); recs = [r for t in TASKS for r in [r for r in recs if r["tag"] == t][:8]]
index = [ti * 24 + j for ti in range(len(TASKS)) for j in range(8)]
cmp = []
for row in out["rows"]:
    m = row["model"]
    for n in (4, 8, 32):
        ref = next((b for b in ref_full["rows"] if b["model"] == m and b["method"] == "best_of_n" and b["options"]["num_particles"] == n and "correct" in b), None)
        if ref is None or row["method"] not in ("dts", "dts_star"):
            continue
        d = paired_bootstrap(row["correct"], [ref["correct"][i] for i in index])
        cmp.append({"model": m, "row": f"{row['method']} nfe={row['options']['nfe']}", "nfe": row["nfe"], "versus": f"best_of_n N={n} (same prompts, seed 0)",
                    "versus_nfe": ref["nfe"], "diff": d["diff"], "low": d["low"], "high": d["high"]})
    if row["method"] in ("reno", "doodl") and row["options"]["iters"] > 0:
        base = next((b for b in out["rows"] if b["model"] == m and b["method"] == row["method"] and b["options"]["iters"] == 0
                     and b["options"]["steps"] == row["options"]["steps"]), None)
        if base is None and row["method"] == "doodl":  # ReNO iters=0 is the DDIM / Euler base on the same noise
            base = None
        for b, label in ((base, "own iters=0"), (next((b for b in out["rows"] if b["model"] == m and b["method"] == "reno" and b["options"]["iters"] == 0
                                                          and b["options"]["steps"] == row["options"]["steps"]), None), "base sampler (reno iters=0)")):
            if b is None or b is row or (label.startswith('base') and b is base):
                continue
            d = paired_bootstrap(row["correct"], b["correct"])
            cmp.append({"model": m, "row": f"{row['method']} iters={row['options']['iters']} steps={row['options']['steps']}", "nfe": row["nfe"],
                        "versus": label, "versus_nfe": b["nfe"], "diff": d["diff"], "low": d["low"], "high": d["high"]})
out["paired"] = cmp
out["note"] = ("48 prompts (8 per task, the first 8 of each task of the shipped eval set), seed 0 of results/shapes_scaling.json's seed layout "
               "(--seed-layout 24), 25 steps for DTS; ReNO / DOODL at --noise-opt-steps (10 unless stated in the row's options). "
               "'reference' = rows of results/shapes_scaling.json restricted to the same prompts and seed.")
Path("results/shapes_scaling_search2.json").write_text(json.dumps(out, indent=2))
print(s.markdown(out["rows"]))
for c in cmp:
    print(f"{c['model']:5s} {c['row']:28s} ({c['nfe']:.0f} NFE) vs {c['versus']:40s} ({c['versus_nfe']:.0f} NFE): {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]")
