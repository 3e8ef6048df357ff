"""Accuracy (exact evaluator) of shapes flow pipelines on held-out prompts, one image each (no search).

    python benchmarks/shapes_heldout_eval.py shipped runs/flow_grow/flow/final

Prompts ``make_prompt_set(per_task=16, seed=4242)`` (never the eval set), 25 steps, CFG 5, one seed:
how the ``flow`` retraining runs in the README's "Open work" were compared.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_scaling import run_config  # noqa: E402

import steer  # noqa: E402
from steer.shapes import load_flow_pipeline, load_reward, make_prompt_set  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("models", nargs="+", help="'shipped' or exported flow pipeline folders")
p.add_argument("--per-task", type=int, default=16)
p.add_argument("--prompt-set", type=int, default=4242)
a = p.parse_args()
torch.set_num_threads(1)
recs = make_prompt_set(per_task=a.per_task, seed=a.prompt_set)
for name in a.models:
    pipe = load_flow_pipeline(None if name == "shipped" else name)
    pipe.set_progress_bar_config(disable=True)
    r = run_config(steer.wrap(pipe, method="best_of_n", reward=load_reward()), recs, 1, 25, 5.0, 1, 16)
    print(name, json.dumps({k: r[k] for k in ("accuracy", "tasks", "mean_reward", "seconds")}), flush=True)
