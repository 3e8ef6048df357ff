"""Train the shapes-world reward: a small open_clip model, contrastive with hard negatives.

    python -m steer.train.shapes_reward --run runs/shapes [--steps 3000]
    python -m steer.train.shapes_reward --run runs/shapes --export steer/shapes/weights

Each image is contrasted with the other captions of its batch and with ``K`` hard-negative
captions of its own task that are *false* for its scene by the GenEval rules (another
colour, count, shape, or the relation swapped). Images are augmented (blur, colour gain,
noise, small shifts) towards what a generative model draws. The result is saved as an
open_clip ``local-dir`` checkpoint (``open_clip_config.json``, ``open_clip_model.safetensors``,
tokenizer files), the format real open_clip checkpoints use, and is scored through
:class:`steer.rewards.clip.OpenCLIPScore`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..eval.geneval import Detection, evaluate_detections
from ..shapes.prompts import all_args, make_record, sample_record
from ..shapes.render import render
from ..shapes.tokenizer import build_tokenizer
from ..shapes.world import scene_for_record
from .shapes_t2i import CONFIGS, EMA, _hardware, _log, _save_ckpt

K_NEGATIVES = 3


def write_checkpoint_dir(out: Path, state_dict: dict | None = None) -> None:
    """Write the open_clip local-dir folder: config (vocab size filled in), tokenizer, weights."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    cfg = json.loads((CONFIGS / "reward.json").read_text())
    cfg["model_cfg"]["text_cfg"]["vocab_size"] = len(tok)
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(out)
    if state_dict is not None:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, out / "open_clip_model.safetensors")


def _gt_detections(scene) -> list[Detection]:
    return [Detection(o.shape, 1.0, o.box, o.color) for o in scene.objects]


def hard_negatives(record: dict, scene, rng: np.random.Generator, k: int = K_NEGATIVES) -> list[str]:
    """Up to ``k`` prompts of the record's task that are false for ``scene``."""
    args = all_args(record["tag"])
    dets = _gt_detections(scene)
    out: list[str] = []
    for i in rng.permutation(len(args)):
        cand = make_record(record["tag"], *args[i])
        if cand["prompt"] != record["prompt"] and not evaluate_detections(cand, dets).correct:
            out.append(cand["prompt"])
            if len(out) == k:
                break
    return out


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, per-channel gain, noise and a one-pixel shift, on [0, 1] images ``(B, 3, H, W)``."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * 1.2
    k = torch.arange(-2, 3, dtype=x.dtype)
    kern = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kern = kern / kern.sum(1, keepdim=True)  # (B, 5)
    xs = x.reshape(1, b * 3, *x.shape[2:])
    kx = kern.repeat_interleave(3, 0)
    xs = F.conv2d(F.pad(xs, (2, 2, 0, 0), mode="replicate"), kx.view(b * 3, 1, 1, 5), groups=b * 3)
    xs = F.conv2d(F.pad(xs, (0, 0, 2, 2), mode="replicate"), kx.view(b * 3, 1, 5, 1), groups=b * 3)
    x = xs.view_as(x)
    x = x * (1 + 0.12 * (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1))
    x = x + torch.randn(x.shape, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) * 0.04)
    shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    return x.clamp(0, 1)


def train(run: Path, steps: int, batch: int, lr: float, device: str, save_every: int) -> None:
    import open_clip

    stage = run / "reward"
    init_dir = stage / "init"
    write_checkpoint_dir(init_dir)
    torch.manual_seed(3)
    model = open_clip.create_model(f"local-dir:{init_dir.resolve()}", device=device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{init_dir.resolve()}")
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1).to(device)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1).to(device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    ema = EMA(params, 0.998)
    step, elapsed = 0, 0.0
    ckpt = stage / "ckpt.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(st["model"]), opt.load_state_dict(st["opt"])
        for s, v in zip(ema.shadow, st["ema"]):
            s.copy_(v)
        step, elapsed = st["step"], st["elapsed"]
        print(f"resumed reward at step {step}")
    rng = np.random.default_rng(2000 + step)
    gen = torch.Generator().manual_seed(2000 + step)
    t0 = time.time() - elapsed
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + np.cos(np.pi * step / steps))
        recs = [sample_record(rng) for _ in range(batch)]  # fresh scenes every step
        scenes = [scene_for_record(r, rng) for r in recs]
        x = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
        x = augment(x, gen).to(device)
        negs = [hard_negatives(r, s, rng) for r, s in zip(recs, scenes)]
        texts = [r["prompt"] for r in recs] + [n for ns in negs for n in ns]
        img = model.encode_image((x - mean) / std, normalize=True)
        txt = model.encode_text(tokenizer(texts).to(device), normalize=True)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # (B, B + negatives)
        # an image's own hard negatives plus the batch's positives are its candidates
        mask = torch.full_like(logits, float("-inf"))
        mask[:, :batch] = 0
        start = batch
        for i, ns in enumerate(negs):
            mask[i, start : start + len(ns)] = 0
            start += len(ns)
        target = torch.arange(batch, device=device)
        loss_i = F.cross_entropy(logits + mask, target)
        loss_t = F.cross_entropy(logits[:, :batch].T, target)
        loss = 0.5 * (loss_i + loss_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        step += 1
        if step % 50 == 0 or step == steps:
            _log(stage, {"stage": "reward", "step": step, "loss": round(loss.item(), 4), "scale": round(scale.item(), 2), "seconds": round(time.time() - t0, 1)})
        if step % save_every == 0 or step == steps:
            _save_ckpt(ckpt, model=model.state_dict(), opt=opt.state_dict(), ema=ema.shadow, step=step, elapsed=time.time() - t0)
    ema.copy_to(params)
    write_checkpoint_dir(stage / "final", model.state_dict())
    (stage / "meta.json").write_text(json.dumps({"steps": steps, "batch": batch, "lr": lr, "negatives": K_NEGATIVES, "seconds": round(time.time() - t0, 1), "hardware": _hardware()}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/shapes"))
    p.add_argument("--export", type=Path, help="copy the trained reward to FOLDER/reward")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-every", type=int, default=250)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.export:
        src = a.run / "reward" / "final"
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: train the reward first")
        shutil.rmtree(a.export / "reward", ignore_errors=True)
        shutil.copytree(src, a.export / "reward")
        shutil.copy(a.run / "reward" / "meta.json", a.export / "reward" / "training.json")
        print(f"exported to {a.export / 'reward'}")
        return
    train(a.run, a.steps, a.batch, a.lr, a.device, a.save_every)


if __name__ == "__main__":
    main()
