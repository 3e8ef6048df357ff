"""How much a rejection rule's accepted set is worth, by the exact evaluator (not the reward).

    python benchmarks/shapes_finetune_accepted.py --samples runs/finetune/sd_round0_samples.pt

Decodes the final latents of a GRAFT / P-GRAFT round (``steer.train.pgraft.round_samples``, made by
``benchmarks/shapes_finetune.py`` on ``make_prompt_set(seed=777, per_task=32)``) and judges all of
them, the accepted ones (top-1 and top-2 of M by the reward) and the per-prompt oracle.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from steer.eval.geneval import TASKS
from steer.models.registry import get_adapter
from steer.shapes import evaluate_image, load_pipeline, make_prompt_set, to_uint8
from steer.train.pgraft import accept

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--samples", type=Path, default=Path("runs/finetune/sd_round0_samples.pt"))
p.add_argument("--prompt-set", type=int, default=777)
p.add_argument("--per-task", type=int, default=32)
p.add_argument("--out", type=Path)
a = p.parse_args()
torch.set_num_threads(1)
recs = make_prompt_set(per_task=a.per_task, seed=a.prompt_set)
s = torch.load(a.samples, weights_only=False)
m = len(s["prompts"]) // len(recs)
ad = get_adapter(load_pipeline())
x = s["states"][:, -1].float()
with torch.no_grad():
    ims = to_uint8(torch.cat([ad.decode(x[i : i + 256]) for i in range(0, len(x), 256)]).permute(0, 2, 3, 1).numpy())
rows = [r for r in recs for _ in range(m)]
ok = np.array([evaluate_image(im, r).correct for im, r in zip(ims, rows)])
rw = s["rewards"].view(len(recs), m)
top1, top2 = accept(rw, "top_k:1").numpy(), accept(rw, "top_k:2").numpy()
res = {"all": ok.mean(), "top_k:1": ok[top1].mean(), "top_k:2": ok[top2].mean(), "oracle": ok.reshape(-1, m).max(1).mean(),
       "tasks": {t: {"all": ok[np.array([r["tag"] == t for r in rows])].mean(),
                     "top_k:1": ok[top1][np.array([rows[i]["tag"] == t for i in top1])].mean()} for t in TASKS}}
res = json.loads(json.dumps(res, default=float))
print(json.dumps(res, indent=1))
if a.out:
    a.out.write_text(json.dumps(res, indent=1))
