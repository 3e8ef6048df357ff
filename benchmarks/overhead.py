"""Overhead of steering: a steered N-particle call against a plain pipeline call on N images.

    python benchmarks/overhead.py --model sd --method best_of_n --particles 16 --steps 25
    python benchmarks/overhead.py --model sd --scheduler EulerDiscreteScheduler DPMSolverMultistepScheduler --out results/overhead_schedulers.json

Both calls use the same prompt, steps, guidance and per-image generators. The reward model's
own time is reported separately and excluded from the ratio; what remains is the engine's
cost (adapter stepping, x̂₀ decodes for rewards, bookkeeping). Prints the ratio last.
``--scheduler`` measures each named diffusers scheduler in turn (built from the pipeline's config),
and records the largest pixel difference between the plain and the steered images.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import steer
from steer.shapes import load_flow_pipeline, load_pipeline, load_reward


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["sd", "flow"], default="sd")
    p.add_argument("--method", default="best_of_n")
    p.add_argument("--particles", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", default="a photo of a red circle and a blue square")
    p.add_argument("--threads", type=int)
    p.add_argument("--collapse-padding", action="store_true",
                   help="flow (SD3) only: let steer collapse the pipeline's 256 zero T5 tokens into one (same result, much faster); "
                        "off by default so both calls do the same denoiser work")
    p.add_argument("--scheduler", nargs="+", help="diffusers scheduler class names to measure, one after another")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = load_pipeline() if a.model == "sd" else load_flow_pipeline()
    pipe.set_progress_bar_config(disable=True)
    steered = steer.wrap(pipe, method=a.method, reward=load_reward())
    if hasattr(steered.adapter, "collapse_padding"):
        steered.adapter.collapse_padding = a.collapse_padding
    results = []
    config = pipe.scheduler.config
    for name in a.scheduler or [type(pipe.scheduler).__name__]:
        import diffusers

        pipe.scheduler = getattr(diffusers, name).from_config(config)
        results.append(measure(pipe, steered, a))
        print(f"{name}: overhead ratio (steered without reward time / plain): {results[-1]['ratio_excluding_reward']:.3f}", flush=True)
    out = results if a.scheduler else results[0]
    print(json.dumps(out, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2))
    return out


def measure(pipe, steered, a) -> dict:
    """Median plain and steered seconds over ``a.repeats`` rounds (after one warm-up round)."""
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(a.particles)]  # noqa: E731
    plain_t, steer_t, reward_t = [], [], []
    for r in range(a.repeats + 1):  # the first round warms up
        t0 = time.perf_counter()
        plain = pipe([a.prompt] * a.particles, num_inference_steps=a.steps, guidance_scale=a.guidance, generator=gens(), output_type="np").images
        t1 = time.perf_counter()
        out = steered(a.prompt, num_inference_steps=a.steps, guidance_scale=a.guidance, num_particles=a.particles, generator=gens(),
                      output_type="np", return_all=True)
        t2 = time.perf_counter()
        if r:
            plain_t.append(t1 - t0), steer_t.append(t2 - t1), reward_t.append(out.trace.reward_seconds)
    plain_s, total, rew = statistics.median(plain_t), statistics.median(steer_t), statistics.median(reward_t)
    return {
        "model": a.model, "method": a.method, "scheduler": type(pipe.scheduler).__name__, "sampler": out.trace.sampler,
        "particles": a.particles, "steps": a.steps, "collapse_padding": bool(getattr(steered.adapter, "collapse_padding", False)),
        "plain_seconds": round(plain_s, 4), "steered_seconds": round(total, 4), "reward_seconds": round(rew, 4),
        "reward_calls": out.trace.reward_calls, "decodes": out.trace.decodes, "nfe": out.trace.nfe,
        "ratio_excluding_reward": round((total - rew) / plain_s, 4), "ratio_total": round(total / plain_s, 4),
        "max_abs_diff_to_plain": float(abs(plain - out.images).max()) if a.method == "best_of_n" else None,
    }


if __name__ == "__main__":
    main()
