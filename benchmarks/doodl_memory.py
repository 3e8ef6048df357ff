"""Peak memory of DOODL's backward versus the number of sampler steps (shapes SD model, CPU).

    python benchmarks/doodl_memory.py --out results/doodl_memory.json

Memory is measured as the peak of live bytes of the storages autograd saves for backward
(``torch.autograd.graph.saved_tensors_hooks``; each storage counted once, model weights excluded) during one
DOODL iteration through the steered pipeline (EDICT chain + VAE decode + shapes reward, forward and
backward), and, for contrast, during plain backprop through the same EDICT chain (every step's activations
kept). Weights and the no-grad forward's transient buffers are not included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import steer
from steer.search.doodl import EDICTRunner, saved_tensor_peak
from steer.shapes import load_pipeline, load_prompts, load_reward


def _modules(steered) -> list[torch.nn.Module]:
    return [steered.pipe.unet, steered.pipe.vae, steered.reward]


def doodl_peak(steered, prompt: str, steps: int) -> dict:
    """Saved-tensor peak of one DOODL iteration (plus the final evaluation) through the steered call."""
    t0 = time.perf_counter()
    with saved_tensor_peak(*_modules(steered)) as m:
        out = steered([prompt], num_inference_steps=steps, num_particles=1, iters=1, generator=torch.Generator().manual_seed(0),
                      output_type="latent")
    return {"peak_saved_bytes": m.peak, "nfe": out.trace.nfe, "backward_nfe": out.trace.backward_nfe, "seconds": round(time.perf_counter() - t0, 2)}


def plain_peak(steered, prompt: str, steps: int) -> dict:
    """Saved-tensor peak of plain autograd through the same EDICT chain (no inversion), loss = ‖x₀‖²."""
    ad = steered.adapter
    ad.eta = 0.0
    ad.prepare(warn=False)
    ad.native = False
    cond = ad.encode([prompt], guidance_scale=5.0)
    ad.set_schedule(steps)
    runner = EDICTRunner(ad, cond, 0.93)
    x_T = torch.randn(1, *ad.latent_shape(), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with saved_tensor_peak(*_modules(steered)) as m:
        x, y = x_T, x_T
        for i in range(steps):
            x, y = runner.step(x, y, i)
        (x**2).sum().backward()
    return {"peak_saved_bytes": m.peak}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/doodl_memory.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    steered = steer.wrap(pipe, method="doodl", reward=load_reward())
    prompt = load_prompts()[0]["prompt"]
    rows = []
    for s in a.steps:
        row = {"steps": s, "doodl": doodl_peak(steered, prompt, s), "plain_backprop": plain_peak(steered, prompt, s)}
        rows.append(row)
        print(f"steps={s:3d}  DOODL peak saved {row['doodl']['peak_saved_bytes'] / 2**20:8.2f} MiB "
              f"(nfe {row['doodl']['nfe']}, backward {row['doodl']['backward_nfe']}, {row['doodl']['seconds']}s)   "
              f"plain backprop {row['plain_backprop']['peak_saved_bytes'] / 2**20:8.2f} MiB", flush=True)
    base = rows[0]["doodl"]["peak_saved_bytes"]
    ratios = {str(r["steps"]): r["doodl"]["peak_saved_bytes"] / base for r in rows}
    result = {"config": {"steps": a.steps, "model": "shapes sd", "prompt": prompt, "threads": a.threads,
                         "metric": "peak live bytes of storages autograd saves for backward (saved_tensors_hooks; weights excluded), one DOODL iteration"},
              "rows": rows, "doodl_ratio_to_first": ratios,
              "target": {"ratio_25_over_5_max": 1.5, "met": ratios.get("25", float("inf")) <= 1.5 if "25" in ratios else None}}
    print("DOODL peak relative to", a.steps[0], "steps:", {k: round(v, 3) for k, v in ratios.items()})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
