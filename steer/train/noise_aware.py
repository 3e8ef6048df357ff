"""Train a noise-aware reward by self-distillation (TTSnap's recipe, written for steer).

    python -m steer.train.noise_aware --model shapes-sd --teacher shapes_clip --prompt-set 99 \\
        --trajectories 8 --out runs/noise_aware_sd
    python -m steer.train.noise_aware --model path/or/hub-id --teacher pickscore --prompts my_prompts.jsonl --device cuda

1. **Data** (``OUT/data/shard_*.pt``): for each prompt, ``--trajectories`` trajectories of the
   pipeline (half on the deterministic sampler, half on the stochastic one SMC uses, by
   default); at each kept step the decoded x̂₀ and its noise level; the teacher's reward of the
   trajectory's *final* image is every one of its rows' target. Images are stored as the
   student sees them (its own resize, 8-bit).
2. **Student**: a copy of a CLIP-family reward with noise-level conditioning
   (:class:`steer.rewards.noise_aware.NoiseAwareReward`: a level embedding added to the image
   tokens and a level-dependent affine head). Loss: MSE to the standardised teacher reward +
   ``--rank-weight`` × a within-prompt pairwise ranking term (RankNet over pairs of one
   prompt's trajectories at the same step).
3. **Curriculum**: stage 0 fits clean images; each later stage adds the next band of noise
   levels (low to high), starting from the previous stage's weights.

Data shards and training checkpoints are written atomically; rerunning the same command resumes
where a killed run stopped. The result (``OUT/final``) loads with
``steer.rewards.get_reward("noise_aware:OUT/final")``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import validate
from ..models.registry import get_adapter
from ..rewards.noise_aware import NoiseAwareReward, model_signature
from ..rewards.registry import get_reward
from .shapes_t2i import _save_ckpt


@dataclass
class DataConfig:
    """What the dataset holds (stored with it; a resumed run must match)."""

    trajectories: int = 8
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    keep_steps: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 21])
    eta: str = "both"  # deterministic | stochastic | both (alternating trajectories)
    prompts_per_shard: int = 16
    seed: int = 0
    height: int | None = None
    width: int | None = None


@dataclass
class TrainConfig:
    stages: int = 4
    stage_steps: int = 500
    clean_steps: int = 100
    batch_prompts: int = 16
    lr: float = 5e-5
    head_lr: float = 1e-3
    rank_weight: float = 0.5
    weight_decay: float = 0.01
    tune_base: str = "vision"
    val_fraction: float = 0.1
    save_every: int = 100
    seed: int = 0

    def __post_init__(self):
        """Bad settings fail here with the setting's name, not as a silently different training run."""
        for name in ("stages", "batch_prompts", "save_every"):
            validate.integer(name, getattr(self, name), 1)
        for name in ("stage_steps", "clean_steps"):
            validate.integer(name, getattr(self, name), 0)
        for name in ("lr", "head_lr", "rank_weight", "weight_decay"):
            validate.real(name, getattr(self, name), 0.0)
        validate.real("val_fraction", self.val_fraction, 0.0, 0.5)
        if self.tune_base not in ("vision", "none"):
            raise ValueError(f"tune_base must be 'vision' or 'none', got {self.tune_base!r}")


def _to_student_pixels(student_base, images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → uint8 at the student's input size (its own resize/crop, without normalisation)."""
    x = student_base.preprocess(images.float())
    mean, std = student_base.mean.reshape(1, 3, 1, 1), student_base.std.reshape(1, 3, 1, 1)
    return ((x * std.to(x) + mean.to(x)).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _check_data_config(cfg: DataConfig, num_steps: int) -> None:
    if cfg.trajectories < 2:
        raise ValueError(f"trajectories={cfg.trajectories}: the ranking term needs at least 2 trajectories per prompt")
    if cfg.eta not in ("deterministic", "stochastic", "both"):
        raise ValueError(f"eta must be deterministic, stochastic or both, got {cfg.eta!r}")
    bad = [s for s in cfg.keep_steps if not 1 <= s < num_steps]
    if bad or sorted(set(cfg.keep_steps)) != list(cfg.keep_steps):
        raise ValueError(f"keep_steps must be increasing steps in 1..{num_steps - 1}, got {cfg.keep_steps}")


@torch.no_grad()
def trajectories(adapter, prompts: Sequence[str], cfg: DataConfig, student_base, seeds: Sequence[Sequence[int]], eta: float,
                 bar=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one trajectory per seed of ``seeds[p]`` (the same count for every prompt ``p``) at step noise ``eta``.

    Returns (images ``(P, T, K+1, 3, s, s)`` uint8: x̂₀ at each kept step, then the final image;
    noise levels ``(K+1,)``; final images ``(P·T, 3, H, W)`` in [0, 1] for the teacher).
    """
    adapter.eta = eta
    adapter.prepare(warn=False)
    cond = adapter.encode(list(prompts), guidance_scale=cfg.guidance_scale, height=cfg.height, width=cfg.width)
    adapter.set_schedule(cfg.num_inference_steps, height=cfg.height, width=cfg.width)
    P, T = len(prompts), len(seeds[0])
    idx = torch.arange(P).repeat_interleave(T)
    c = cond.select(idx)
    gens = [torch.Generator().manual_seed(int(s)) for row in seeds for s in row]
    x = adapter.initial_noise(gens, cfg.height, cfg.width)
    kept = []
    for i in range(adapter.num_steps):
        out = adapter.step(x, i, c, gens)
        x = out.prev_sample
        if i + 1 in cfg.keep_steps:
            kept.append(_to_student_pixels(student_base, adapter.decode(out.pred_original_sample)))
        if bar is not None:
            bar.update(P * T)
    final = adapter.decode(x)
    kept.append(_to_student_pixels(student_base, final))
    levels = torch.tensor([adapter.noise_level(s - 1) for s in cfg.keep_steps] + [0.0])
    images = torch.stack(kept, 1)  # (P·T, K+1, ...)
    return images.view(P, T, *images.shape[1:]), levels, final


def build_dataset(pipe, teacher, student_base, prompts: Sequence[str], out: Path, cfg: DataConfig, progress: bool = True) -> Path:
    """Write the data shards under ``out/data`` (resumes: finished shards are kept)."""
    from tqdm.auto import tqdm

    adapter = get_adapter(pipe)
    _check_data_config(cfg, cfg.num_inference_steps)
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    meta_file = folder / "config.json"
    meta = {"data": asdict(cfg), "prompts": list(prompts), "signature": model_signature(adapter, cfg.height, cfg.width),
            "teacher": getattr(teacher, "name", type(teacher).__name__)}
    if meta_file.exists():
        old = json.loads(meta_file.read_text())
        if old["data"] != meta["data"] or old["prompts"] != meta["prompts"] or old["teacher"] != meta["teacher"]:
            raise ValueError(f"{folder} holds data made with other settings (prompts, teacher or sampling); use a new --out or delete it")
    else:
        meta_file.write_text(json.dumps(meta, indent=2))
    T = cfg.trajectories
    etas = {"deterministic": [0.0] * T, "stochastic": [adapter.stochastic_eta] * T,
            "both": [0.0 if t % 2 == 0 else adapter.stochastic_eta for t in range(T)]}[cfg.eta]
    shards = [list(range(s, min(len(prompts), s + cfg.prompts_per_shard))) for s in range(0, len(prompts), cfg.prompts_per_shard)]
    todo = [k for k in range(len(shards)) if not (folder / f"shard_{k:05d}.pt").exists()]
    bar = tqdm(total=len(todo) * cfg.prompts_per_shard * T * cfg.num_inference_steps, desc="trajectories", disable=not progress)
    for k in todo:
        ps = [prompts[i] for i in shards[k]]
        parts, finals, order = [], [], []
        for eta in sorted(set(etas)):
            ts = [t for t in range(T) if etas[t] == eta]
            seeds = [[cfg.seed * 1_000_003 + i * 101 + t for t in ts] for i in shards[k]]
            imgs, levels, final = trajectories(adapter, ps, cfg, student_base, seeds, eta, bar)
            parts.append(imgs)
            finals.append(final.view(len(ps), len(ts), *final.shape[1:]))
            order += ts
        perm = torch.tensor(np.argsort(order))
        images = torch.cat(parts, 1)[:, perm]
        final = torch.cat(finals, 1)[:, perm].reshape(-1, *finals[0].shape[2:])
        with torch.no_grad():
            target = teacher(final.to(teacher.device), [p for p in ps for _ in range(T)]).float().cpu().view(len(ps), T)
        _save_ckpt(folder / f"shard_{k:05d}.pt", images=images, levels=levels, teacher=target, prompts=ps, eta=torch.tensor(etas))
    bar.close()
    return folder


def load_dataset(folder: Path) -> dict:
    """All shards of a dataset folder, concatenated: images ``(P, T, K+1, ...)``, levels, teacher ``(P, T)``, prompts."""
    files = sorted(folder.glob("shard_*.pt"))
    if not files:
        raise FileNotFoundError(f"no data shards in {folder}: build the dataset first")
    shards = [torch.load(f, weights_only=False) for f in files]
    return {
        "images": torch.cat([s["images"] for s in shards]),
        "levels": shards[0]["levels"],
        "teacher": torch.cat([s["teacher"] for s in shards]),
        "prompts": [p for s in shards for p in s["prompts"]],
        "meta": json.loads((folder / "config.json").read_text()),
    }


def curriculum(levels: torch.Tensor, stages: int) -> list[list[int]]:
    """Level indices available at each stage: stage 0 the clean images (level 0), then bands of the
    intermediate levels from low to high noise, cumulatively."""
    order = [int(i) for i in torch.argsort(levels, stable=True)]
    clean = [i for i in order if float(levels[i]) == 0.0]
    rest = [i for i in order if float(levels[i]) > 0.0]
    stages = max(1, min(stages, len(rest)))
    bands = [list(b) for b in np.array_split(rest, stages)]
    out, seen = [list(clean)], list(clean)
    for b in bands:
        seen = seen + [int(i) for i in b]
        out.append(list(seen))
    return out


def ranking_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RankNet loss over all pairs within each row of ``(G, T)``: softplus(-(p_i - p_j)) for target_i > target_j."""
    dt = target[:, :, None] - target[:, None, :]
    dp = pred[:, :, None] - pred[:, None, :]
    mask = dt > 1e-6
    if not mask.any():
        return pred.sum() * 0.0
    return F.softplus(-dp[mask]).mean()


def _split(num_prompts: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_prompts)
    nval = int(round(val_fraction * num_prompts))
    return np.sort(perm[nval:]), np.sort(perm[:nval])


def _batch(data: dict, train_idx: np.ndarray, allowed: list[int], newest: list[int], step: int, cfg: TrainConfig):
    """(images (G·T, 3, s, s) float, levels (G·T,), targets (G, T), prompts) of one batch, a pure function of ``step``."""
    rng = np.random.default_rng([cfg.seed, step])
    ps = rng.choice(train_idx, size=min(cfg.batch_prompts, len(train_idx)), replace=False)
    pick_new = rng.random(len(ps)) < 0.5
    lv = np.where(pick_new, rng.choice(newest, len(ps)), rng.choice(allowed, len(ps)))
    imgs = data["images"][torch.as_tensor(ps), :, torch.as_tensor(lv)]  # (G, T, 3, s, s)
    T = imgs.shape[1]
    levels = data["levels"][torch.as_tensor(lv)].repeat_interleave(T)
    prompts = [data["prompts"][p] for p in ps for _ in range(T)]
    return imgs.reshape(-1, *imgs.shape[2:]).float() / 255, levels, data["teacher"][torch.as_tensor(ps)], prompts


@torch.no_grad()
def evaluate(student: NoiseAwareReward, data: dict, prompt_idx: np.ndarray, plain=None, batch: int = 256) -> list[dict]:
    """Per kept level: mean within-prompt Spearman correlation of the student's (and the plain reward's) score
    with the teacher's final reward, on the prompts ``prompt_idx``."""
    from scipy.stats import spearmanr

    rows = []
    T = data["images"].shape[1]
    for j, level in enumerate(data["levels"].tolist()):
        imgs = data["images"][torch.as_tensor(prompt_idx), :, j].reshape(-1, *data["images"].shape[3:]).float() / 255
        prompts = [data["prompts"][p] for p in prompt_idx for _ in range(T)]
        scores = {"noise_aware": [], "plain": []}
        for s in range(0, len(imgs), batch):
            x, pr = imgs[s : s + batch].to(student.device), prompts[s : s + batch]
            scores["noise_aware"].append(student(x, pr, noise_level=level).cpu())
            if plain is not None:
                scores["plain"].append(plain(x, pr).float().cpu())
        row = {"level_index": j, "noise_level": round(level, 4)}
        for key, parts in scores.items():
            if not parts:
                continue
            sc = torch.cat(parts).view(len(prompt_idx), T).numpy()
            tg = data["teacher"][torch.as_tensor(prompt_idx)].numpy()
            rho = [spearmanr(a, b).statistic for a, b in zip(sc, tg) if np.ptp(a) > 0 and np.ptp(b) > 0]
            row[f"spearman_{key}"] = float(np.mean(rho)) if rho else float("nan")
        rows.append(row)
    return rows


def make_student(student_name: str, student_kwargs: dict, data: dict, teacher_name: str, device: str, batch: int = 256,
                 seed: int = 0) -> NoiseAwareReward:
    """The student at initialisation (the level modules drawn from ``seed``): its base reward, with statistics
    from the dataset's clean images."""
    base = get_reward(student_name, device=device, **student_kwargs)
    clean = data["images"][:, :, -1].reshape(-1, *data["images"].shape[3:])
    prompts = [p for p in data["prompts"] for _ in range(data["images"].shape[1])]
    with torch.no_grad():
        raw = torch.cat([base(clean[s : s + batch].float().to(device) / 255, prompts[s : s + batch]).float().cpu() for s in range(0, len(clean), batch)])
    t = data["teacher"].reshape(-1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = NoiseAwareReward(
            base, {"name": student_name, "kwargs": student_kwargs}, (float(t.mean()), float(t.std().clamp_min(1e-6))),
            (float(raw.mean()), float(raw.std().clamp_min(1e-6))), data["meta"]["signature"], teacher_name,
        )
    return student.to(device)


def train(out: Path, student_name: str, teacher_name: str, cfg: TrainConfig, student_kwargs: dict | None = None, device: str = "cpu",
          progress: bool = True, stop_after: int | None = None) -> NoiseAwareReward | None:
    """Curriculum training on ``out/data``; checkpoints in ``out/ckpt.pt``; the result in ``out/final``.

    ``stop_after``: return after this many optimiser steps of this call (simulates a killed run in tests).
    """
    from tqdm.auto import tqdm

    data = load_dataset(out / "data")
    student = make_student(student_name, student_kwargs or {}, data, teacher_name, device, seed=cfg.seed)
    stages = curriculum(data["levels"], cfg.stages)
    plan = [(0, cfg.clean_steps)] + [(s, cfg.stage_steps) for s in range(1, len(stages))]
    total = sum(n for _, n in plan)
    train_idx, val_idx = _split(len(data["prompts"]), cfg.val_fraction, cfg.seed)
    head = list(student.level_tokens.parameters()) + list(student.level_head.parameters())
    body = [p for p in student.trainable_parameters(cfg.tune_base) if all(p is not h for h in head)]
    for p in head + body:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": head, "lr": cfg.head_lr}, {"params": body, "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    step, log = 0, []
    ckpt = out / "ckpt.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        if st["config"] != asdict(cfg):
            raise ValueError(f"{ckpt} was written with other training settings; use a new --out or delete it")
        student.load_state_dict(st["student"])
        opt.load_state_dict(st["opt"])
        step, log = st["step"], st["log"]
    bar = tqdm(total=total, initial=step, desc="noise-aware reward", disable=not progress)
    t0 = time.perf_counter() - (log[-1]["seconds"] if log else 0.0)
    ran = 0
    student.train()
    while step < total:
        stage, start = 0, 0
        for s, n in plan:
            if step < start + n:
                stage = s
                break
            start += n
        allowed = stages[stage]
        newest = [i for i in allowed if i not in (stages[stage - 1] if stage else [])] or allowed
        images, levels, target, prompts = _batch(data, train_idx, allowed, newest, step, cfg)
        z = student.standardized(images.to(device), prompts, levels.to(device)).view(target.shape)
        zt = ((target - student.teacher_stats[0].cpu()) / student.teacher_stats[1].cpu()).to(device)
        mse = F.mse_loss(z, zt)
        rank = ranking_loss(z, zt)
        loss = mse + cfg.rank_weight * rank
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head + body, 1.0)
        opt.step()
        step += 1
        ran += 1
        bar.update()
        bar.set_postfix(stage=stage, loss=f"{loss.item():.3f}")
        if step % 10 == 0 or step == total:
            log.append({"step": step, "stage": stage, "loss": loss.item(), "mse": mse.item(), "rank": rank.item(), "seconds": round(time.perf_counter() - t0, 2)})
        if step % cfg.save_every == 0 or step == total or (stop_after is not None and ran >= stop_after):
            _save_ckpt(ckpt, student=student.state_dict(), opt=opt.state_dict(), step=step, log=log, config=asdict(cfg))
        if stop_after is not None and ran >= stop_after and step < total:
            bar.close()
            return None
    bar.close()
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    student.info = {"train": asdict(cfg), "data": data["meta"]["data"], "prompts": len(data["prompts"]),
                    "seconds": log[-1]["seconds"] if log else 0.0, "steps": total}
    val = evaluate(student, data, val_idx if len(val_idx) else train_idx, student.frozen)  # the frozen branch is the plain reward
    student.info["validation"] = val
    student.save_pretrained(out / "final")
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps({"validation": val, "log": log, "config": asdict(cfg)}, indent=2))
    tmp.replace(out / "report.json")
    return student


# ----------------------------------------------------------------------------------------- CLI


def load_model(name: str, device: str):
    """``shapes-sd`` / ``shapes-flow`` (the shipped shapes models) or a diffusers folder / hub id
    (:func:`steer.harness.load_pipeline`: one loader for the trainers, the CLI and the benchmark harness)."""
    from ..harness import load_pipeline

    return load_pipeline(name, device)


def load_prompt_source(prompts: Path | None, prompt_set: int | None, per_task: int) -> list[str]:
    """Prompts from a GenEval-style JSONL (``{"prompt": ...}`` per line) or ``make_prompt_set(seed=prompt_set)``."""
    if (prompts is None) == (prompt_set is None):
        raise ValueError("give exactly one prompt source: --prompts FILE.jsonl or --prompt-set SEED")
    if prompts is not None:
        if not prompts.is_file():
            raise FileNotFoundError(f"--prompts {prompts}: no such file")
        out = []
        for n, line in enumerate(prompts.read_text().splitlines(), 1):
            if line.strip():
                rec = json.loads(line)
                if "prompt" not in rec:
                    raise ValueError(f"{prompts}:{n}: a record without a 'prompt' field")
                out.append(rec["prompt"])
        return out
    from ..shapes import make_prompt_set

    return [r["prompt"] for r in make_prompt_set(per_task=per_task, seed=prompt_set)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="shapes-sd, shapes-flow, or a diffusers pipeline folder / hub id")
    p.add_argument("--teacher", default="shapes_clip", help="clean teacher reward (a steer.rewards name)")
    p.add_argument("--teacher-kwargs", type=json.loads, default={}, help="JSON kwargs of the teacher")
    p.add_argument("--student", help="CLIP-family reward the student copies (default: the teacher)")
    p.add_argument("--student-kwargs", type=json.loads, help="JSON kwargs of the student's base (default: the teacher's when the same)")
    p.add_argument("--prompts", type=Path, help="GenEval-style JSONL of prompts")
    p.add_argument("--prompt-set", type=int, help="or: make_prompt_set(seed=...) shapes prompts")
    p.add_argument("--per-task", type=int, default=48, help="prompts per task of --prompt-set")
    p.add_argument("--trajectories", type=int, default=8)
    p.add_argument("--steps", type=int, default=25, help="sampling steps of the trajectories")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--keep-steps", type=int, nargs="+", help="steps whose x̂₀ are kept (default: 1-6, 8, 10, 12, 15, 18, 21)")
    p.add_argument("--eta", choices=["deterministic", "stochastic", "both"], default="both")
    p.add_argument("--stages", type=int, default=4, help="curriculum stages after the clean one")
    p.add_argument("--stage-steps", type=int, default=500)
    p.add_argument("--clean-steps", type=int, default=100)
    p.add_argument("--batch-prompts", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate of the trained vision tower")
    p.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the noise-level modules")
    p.add_argument("--rank-weight", type=float, default=0.5)
    p.add_argument("--tune-base", choices=["vision", "none"], default="vision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    prompts = load_prompt_source(a.prompts, a.prompt_set, a.per_task)
    student = a.student or a.teacher
    student_kwargs = a.student_kwargs if a.student_kwargs is not None else (a.teacher_kwargs if student == a.teacher else {})
    dcfg = DataConfig(trajectories=a.trajectories, num_inference_steps=a.steps, guidance_scale=a.guidance, eta=a.eta, seed=a.seed)
    if a.keep_steps:
        dcfg.keep_steps = list(a.keep_steps)
    else:
        dcfg.keep_steps = [s for s in dcfg.keep_steps if s < a.steps]
    tcfg = TrainConfig(stages=a.stages, stage_steps=a.stage_steps, clean_steps=a.clean_steps, batch_prompts=a.batch_prompts, lr=a.lr,
                       head_lr=a.head_lr, rank_weight=a.rank_weight, tune_base=a.tune_base, seed=a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "command.json").write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, indent=2))
    t0 = time.perf_counter()
    pipe = load_model(a.model, a.device)
    teacher = get_reward(a.teacher, device=a.device, **a.teacher_kwargs)
    base = get_reward(student, device=a.device, **student_kwargs)
    build_dataset(pipe, teacher, base, prompts, a.out, dcfg, progress=not a.no_progress)
    data_seconds = time.perf_counter() - t0
    del pipe
    result = train(a.out, student, a.teacher, tcfg, student_kwargs, a.device, progress=not a.no_progress)
    print(f"data {data_seconds:.0f}s; wrote {a.out / 'final'}")
    print(f"{'level':>7} {'plain':>7} {'noise-aware':>12}   (within-prompt Spearman with the final teacher reward, held-out prompts)")
    for row in result.info["validation"]:
        print(f"{row['noise_level']:>7.3f} {row.get('spearman_plain', math.nan):>7.3f} {row['spearman_noise_aware']:>12.3f}")


if __name__ == "__main__":
    main()
