"""Inverse noise correction of the shapes flow model: accuracy and distribution distance vs sampling steps.

    python benchmarks/shapes_noise_correction.py --out results/shapes_noise_correction.json --threads 1
    python benchmarks/shapes_noise_correction.py --corrector runs/shapes_noise_correction/final --out ...

1. **Corrector**: trained here (``steer.train.noise_correction``: ``--num-scenes`` rendered scenes from
   ``make_dataset(seed=--scene-seed)``, a seed the evaluation does not use, inverted with ``--invert-steps``
   reverse Euler steps at guidance 1, then a maximum-likelihood coupling flow), or loaded with ``--corrector``.
   Training resumes from ``--run`` when the run was killed.
2. **Evaluation**: every prompt of the shipped eval file (288) at ``--seeds`` images per prompt; image ``k``
   of prompt ``i`` starts from the base noise of seed ``i * seeds + k`` — the *same* base noise with and
   without correction (the corrector maps it). The sampler is the pipeline's own Euler steps (the stock
   call's result, through steer's adapter with collapsed T5 padding) at each of ``--steps-grid``.
   Reported per row: the exact evaluator's accuracy, the Fréchet distance (shapes reward's open_clip image
   tower, :mod:`steer.eval.frechet`) to rendered ground-truth scenes of the same records (one scene per
   generated image, ``scene_for_record`` with seed ``--ref-seed``), the corrector's FLOPs per image and the
   sampler's (denoiser FLOPs per step × steps; VAE decode listed apart). ``reference_floor``: the distance
   between two independent sets of rendered scenes of the same records (what sampling noise alone gives).
3. **Target** ("inverse noise correction lowers the flow model's distribution distance at ≤ 2/3 of the
   steps it needs without correction for the same distance"): for each step count s of the grid, the fewest
   steps s' at which the corrected sampler reaches the uncorrected distance at s; the corrected distance is
   interpolated linearly in the step count between grid points, s' is the first crossing from the fewest
   steps up (s' = min grid when even that is below). Met at s when s' ≤ 2/3 · s; the headline is s = max grid.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from steer.eval.frechet import frechet_distance, shapes_features
from steer.shapes import evaluate_image, load_flow_pipeline, load_prompts, load_reward, scene_for_record, to_uint8
from steer.shapes.render import render
from steer.train import noise_correction as nc


def reference_images(records: list[dict], seeds: int, seed: int) -> np.ndarray:
    """One rendered scene per (record, k), prompt-major, ``scene_for_record`` with rng ``(seed, i, k)``."""
    return np.stack([render(scene_for_record(r, np.random.default_rng([seed, i, k]))) for i, r in enumerate(records) for k in range(seeds)])


def denoiser_flops(adapter, cond, guidance_rows: int) -> float:
    """FLOPs of one denoiser evaluation for one image (``FlopCounterMode``; CFG counts two rows)."""
    from torch.utils.flop_counter import FlopCounterMode

    adapter.set_schedule(2)
    x = torch.zeros((1, *adapter.latent_shape()), device=adapter.device, dtype=adapter.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        adapter.predict(x, 0, cond.select([0]))
    return float(counter.get_total_flops())


def decode_flops(adapter) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *adapter.latent_shape()), device=adapter.device, dtype=adapter.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        adapter.decode(x)
    return float(counter.get_total_flops())


def steps_to_reach(grid: list[int], dist: list[float], target: float) -> float | None:
    """Fewest (interpolated) steps at which the piecewise-linear curve ``dist(grid)`` is ≤ ``target``."""
    order = np.argsort(grid)
    g, d = np.asarray(grid, float)[order], np.asarray(dist, float)[order]
    if d[0] <= target:
        return float(g[0])
    for j in range(1, len(g)):
        if d[j] <= target:
            return float(g[j - 1] + (g[j] - g[j - 1]) * (d[j - 1] - target) / (d[j - 1] - d[j]))
    return None


def generate(adapter, corrector, records, seeds: int, steps: int, guidance: float, batch: int) -> tuple[np.ndarray, float]:
    """uint8 images (prompt-major) and seconds; ``corrector=None``: the plain N(0, I) start."""
    jobs = [(i, k) for i in range(len(records)) for k in range(seeds)]
    images, t0 = [], time.time()
    for s in range(0, len(jobs), batch):
        chunk = jobs[s : s + batch]
        gens = [torch.Generator().manual_seed(i * seeds + k) for i, k in chunk]
        noise = adapter.initial_noise(gens).float()
        if corrector is not None:
            with torch.no_grad():
                noise = corrector.correct(noise)
        x = nc.sample_latents(adapter, noise, [records[i]["prompt"] for i, _ in chunk], steps, guidance)
        with torch.no_grad():
            images.append(to_uint8(adapter.decode(x.to(adapter.dtype)).permute(0, 2, 3, 1).cpu().numpy()))
    return np.concatenate(images), time.time() - t0


def plot(rows: list[dict], floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guid = sorted({r["guidance"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for g in guid:
        for corr, style in ((False, "o--"), (True, "s-")):
            rr = sorted((r for r in rows if r["guidance"] == g and r["corrected"] == corr), key=lambda r: r["steps"])
            label = f"{'corrected' if corr else 'N(0, I)'}" + (f", cfg {g:g}" if len(guid) > 1 else "")
            axes[0].plot([r["steps"] for r in rr], [r["frechet"] for r in rr], style, label=label)
            axes[1].plot([r["steps"] for r in rr], [r["accuracy"] for r in rr], style, label=label)
    axes[0].axhline(floor, color="gray", ls=":", lw=1, label="render vs render")
    axes[0].set(xlabel="sampling steps", ylabel="Fréchet distance (shapes CLIP)", title="distance to rendered scenes")
    axes[1].set(xlabel="sampling steps", ylabel="exact-evaluator accuracy", title="accuracy")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corrector", type=Path, help="a trained NoiseCorrector folder (default: train one in --run)")
    p.add_argument("--run", type=Path, default=Path("runs/shapes_noise_correction"), help="training folder (resumes)")
    p.add_argument("--num-scenes", type=int, default=2000)
    p.add_argument("--scene-seed", type=int, default=1, help="seed of the training scenes (not an evaluation seed)")
    p.add_argument("--invert-steps", type=int, default=25)
    p.add_argument("--refine", type=int, default=1, help="fixed-point iterations per inverse step")
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--steps-grid", type=int, nargs="+", default=[25, 12, 8, 6, 4])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="sampling guidance scales to evaluate")
    p.add_argument("--seeds", type=int, default=2, help="images per eval prompt")
    p.add_argument("--ref-seed", type=int, default=12345, help="seed of the rendered reference scenes")
    p.add_argument("--limit", type=int, help="only the first N eval prompts (quick runs)")
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plot", type=Path, help="PNG (default: --out with .png)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.time()
    pipe = load_flow_pipeline().to(a.device)
    pipe.set_progress_bar_config(disable=True)
    adapter = nc.flow_adapter(pipe)

    train_info: dict = {}
    if a.corrector is None:
        targs = nc.build_parser().parse_args([
            "--model", "shapes-flow", "--num-scenes", str(a.num_scenes), "--scene-seed", str(a.scene_seed),
            "--invert-steps", str(a.invert_steps), "--refine", str(a.refine), "--steps", str(a.train_steps),
            "--out", str(a.run), "--device", a.device,
        ])
        t0 = time.time()
        images, prompts = nc.shapes_scenes(a.num_scenes, a.scene_seed)
        noise = nc.invert_dataset(pipe, images, prompts, a.run, a.invert_steps, 1.0, a.refine, targs.batch)
        t_inv = time.time() - t0
        corrector = nc.train_corrector(noise, a.run, nc.TrainConfig(steps=a.train_steps), device=a.device)
        log = json.loads((a.run / "log.json").read_text())
        val = [r["val"] for r in log["log"] if "val" in r]
        train_info = {"scenes": a.num_scenes, "scene_seed": a.scene_seed, "invert_steps": a.invert_steps, "refine": a.refine,
                      "train_steps": a.train_steps, "invert_and_train_seconds_this_call": round(time.time() - t0, 1),
                      "invert_seconds_this_call": round(t_inv, 1), "val_nll": val[-1] if val else None, "identity_nll": log["identity_nll"],
                      "inverted_noise": {"mean": float(noise.mean()), "std": float(noise.std()),
                                         "channel_std": [round(float(v), 4) for v in noise.std((0, 2, 3))]},
                      "folder": str(a.run / "final")}
    else:
        corrector = nc.NoiseCorrector.from_pretrained(a.corrector)
        train_info = {"folder": str(a.corrector)}
    corrector = corrector.to(a.device).eval()

    records = load_prompts()
    if a.limit:
        records = records[: a.limit]
    reward = load_reward(device=a.device)
    ref = reference_images(records, a.seeds, a.ref_seed)
    ref_feats = shapes_features(ref, reward)
    floor = frechet_distance(ref_feats, shapes_features(reference_images(records, a.seeds, a.ref_seed + 1), reward))
    c_flops = corrector.flops_per_sample()
    d_flops = decode_flops(adapter)

    rows = []
    for g in a.guidance:
        cond = adapter.encode([records[0]["prompt"]], guidance_scale=g)
        step_flops = denoiser_flops(adapter, cond, 2 if g > 1 else 1)
        for steps in a.steps_grid:
            for corrected in (False, True):
                imgs, secs = generate(adapter, corrector if corrected else None, records, a.seeds, steps, g, a.batch)
                acc = float(np.mean([evaluate_image(im, records[j // a.seeds]).correct for j, im in enumerate(imgs)]))
                fd = frechet_distance(shapes_features(imgs, reward), ref_feats)
                row = {"model": "flow", "guidance": g, "steps": steps, "corrected": corrected, "accuracy": round(acc, 4),
                       "frechet": round(fd, 4), "corrector_flops": c_flops if corrected else 0.0, "sampler_flops": step_flops * steps,
                       "decode_flops": d_flops, "images": len(imgs), "seconds": round(secs, 1)}
                rows.append(row)
                print(f"cfg {g:g} steps {steps:3d} {'corrected' if corrected else 'plain    '} acc {acc:.3f} frechet {fd:.4f} ({secs:.0f}s)", flush=True)

    targets = []
    for g in a.guidance:
        grid = sorted(a.steps_grid)
        plain = {r["steps"]: r["frechet"] for r in rows if r["guidance"] == g and not r["corrected"]}
        corr = {r["steps"]: r["frechet"] for r in rows if r["guidance"] == g and r["corrected"]}
        for s in sorted(grid, reverse=True):
            need = steps_to_reach(grid, [corr[k] for k in grid], plain[s])
            targets.append({"guidance": g, "plain_steps": s, "plain_frechet": plain[s], "corrected_steps_needed": need,
                            "at_grid_minimum": need == grid[0],  # the crossing may lie below the grid: s' is an upper bound
                            "ratio": None if need is None else round(need / s, 4), "met": need is not None and need <= 2 / 3 * s})
    head = [t for t in targets if t["plain_steps"] == max(a.steps_grid)]
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "corrector": {**train_info, "flops_per_sample": c_flops, "config": vars(corrector.config)},
        "eval_images_per_row": len(records) * a.seeds,
        "feature_network": "steer.shapes.load_reward() open_clip image tower, 128-d unnormalised embedding",
        "reference_floor": round(floor, 4),
        "rows": rows,
        "target": {"claim": "corrected sampler reaches the uncorrected distance at <= 2/3 of the steps",
                   "interpolation": "linear in steps between grid points; first crossing from the fewest steps",
                   "per_steps": targets, "headline": head, "met": bool(head) and all(t["met"] for t in head)},
        "seconds": round(time.time() - t_start, 1),
        "hardware": f"{torch.get_num_threads()} threads, {a.device}",
    }
    print("\nmodel  cfg  steps  corrected  accuracy  frechet  corrector MFLOPs  sampler MFLOPs")
    for r in rows:
        print(f"flow  {r['guidance']:4.1f}  {r['steps']:5d}  {str(r['corrected']):9s}  {r['accuracy']:8.3f}  {r['frechet']:7.4f}  "
              f"{r['corrector_flops'] / 1e6:16.1f}  {r['sampler_flops'] / 1e6:14.1f}")
    print(f"render-vs-render floor: {floor:.4f}")
    for t in targets:
        need = "never" if t["corrected_steps_needed"] is None else f"{t['corrected_steps_needed']:.2f}"
        print(f"cfg {t['guidance']:g}: plain {t['plain_steps']} steps (frechet {t['plain_frechet']:.4f}) -> corrected needs {need} steps; met={t['met']}")
    print(f"target met (headline, {max(a.steps_grid)} steps): {result['target']['met']}; total {result['seconds']:.0f}s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    plot(rows, floor, a.plot or a.out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
