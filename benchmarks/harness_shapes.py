"""The benchmark harness end to end on the shapes models: GenEval layout, shapes evaluator, report.

Runs (or resumes) five GenEval runs on the shipped shapes eval prompts (288 lines, 4 images each, 25 steps, CFG 5)
through exactly the code a user runs on SD / FLUX (``python -m steer.harness``), then one report:

    shapes-sd   plain (seeds 0–3, GenEval's protocol), plain with --distinct-seeds (= benchmarks/shapes_baseline.py's
                seeds), best-of-4, SMC×4;  shapes-flow plain

    python benchmarks/harness_shapes.py --runs runs/harness --out results/harness_shapes

and pairs SMC×4 with best-of-4 at equal NFE (``smc4_vs_bon4.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steer.harness.cli import main as harness

RUNS = {
    "sd_plain": ["--model", "shapes-sd", "--method", "none", "--reward", "shapes_clip"],
    "sd_plain_distinct": ["--model", "shapes-sd", "--method", "none", "--reward", "shapes_clip", "--distinct-seeds"],
    "sd_bon4": ["--model", "shapes-sd", "--method", "best_of_n", "--particles", "4"],
    "sd_smc4": ["--model", "shapes-sd", "--method", "smc", "--particles", "4"],
    "flow_plain": ["--model", "shapes-flow", "--method", "none", "--reward", "shapes_clip"],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs/harness"), help="folder of the run folders (resumed when present)")
    p.add_argument("--out", type=Path, default=Path("results/harness_shapes"))
    p.add_argument("--only", nargs="*", choices=list(RUNS), help="run only these")
    p.add_argument("--per-task", type=int, help="first N prompts of each task (default: all 288 lines)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    names = a.only or list(RUNS)
    for name in names:
        extra = ["--per-task", str(a.per_task)] if a.per_task else []
        rc = harness(["geneval", "run", "--metadata", "shapes", *RUNS[name], "--steps", "25", "--guidance", "5", *extra,
                      "--threads", str(a.threads), "--no-progress", "--out", str(a.runs / name)])
        if rc:
            return rc
    rc = harness(["report", *[str(a.runs / n) for n in names], "--out", str(a.out)])
    if rc or not {"sd_smc4", "sd_bon4"} <= set(names):
        return rc
    # the equal-compute comparison (the report pairs every run with the first, the plain one)
    from steer.harness import files
    from steer.harness.report import paired_difference

    runs = {}
    for n in ("sd_smc4", "sd_bon4"):
        runs[n] = {**files.read_json(a.runs / n / "results" / "shapes.json"), "run": str(a.runs / n)}
    pair = paired_difference(runs["sd_smc4"], runs["sd_bon4"])
    files.write_json(a.out / "smc4_vs_bon4.json", pair)
    print(f"SMC×4 − best-of-4 at equal NFE: {pair['diff']:+.3f} [{pair['low']:+.3f}, {pair['high']:+.3f}] ({pair['verdict']}, "
          f"{pair['prompts']} distinct prompts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
