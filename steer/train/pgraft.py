"""GRAFT and P-GRAFT: fine-tuning by rejection sampling, on final or on intermediate states.

    python -m steer.train.pgraft --model shapes-sd --method pgraft --n-i 10 --prompt-set 99 --out runs/pgraft_sd
    python -m steer.train.pgraft --model path/or/hub-id --method graft --reward pickscore --prompts p.jsonl --device cuda

After "Fine-Tuning Diffusion Models via Intermediate Distribution Shaping" (GRAFT / P-GRAFT).
Each round:

1. **Sample** ``--trajectories`` M trajectories per prompt with the current model (the pipeline's
   own scheduler, ``--eta`` 0 by default: the stock call), keeping each trajectory's state at
   schedule position ``N_I`` (P-GRAFT) or its final latent (GRAFT), and score the final images
   with ``--reward``.
2. **Accept** by a rejection rule over each prompt's M samples: ``top_k:K`` (the K best),
   ``best_of_n`` (= ``top_k:1``), ``threshold:X`` (reward ≥ X) or ``top_fraction:F`` (the best
   fraction F of all samples, across prompts).
3. **Train** a LoRA on the accepted states. GRAFT: the usual denoising loss on the accepted final
   latents (all noise levels). P-GRAFT: only the high-noise segment ``t > t_I`` (``t_I`` = the
   timestep at ``N_I``), with the denoising loss whose minimiser is the score of the accepted
   states pushed forward from ``t_I`` (:func:`~steer.train.finetune.shaped_denoising_loss`).

Sampling with the result runs the fine-tuned model above ``t_I`` and the base model below it
(:class:`~steer.train.finetune.SegmentGate`, a pre-hook on the denoiser), so the stock pipeline
call and ``steer.wrap`` use it unchanged::

    pipe = StableDiffusionPipeline.from_pretrained(base)
    steer.train.finetune.load_result(pipe, "runs/pgraft_sd/final")   # load_lora_weights + the gate

Samples, checkpoints and logs are written atomically; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import validate
from ..models.registry import get_adapter
from .finetune import (Compute, ForwardProcess, RunFiles, SegmentGate, Timer, add_common_arguments, add_lora, denoiser_attr, lora_state, parse_targets,
                       result_meta, save_result, set_lora_state, shaped_denoising_loss)

METHODS = ("graft", "pgraft")


@dataclass
class PGraftConfig:
    """Settings of a GRAFT / P-GRAFT run (see the module docstring)."""

    method: str = "pgraft"
    n_i: int | None = 10  # P-GRAFT's intermediate schedule position (steps from pure noise); ignored by GRAFT
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    eta: float = 0.0
    trajectories: int = 8
    accept: str = "top_k:1"
    rounds: int = 1
    train_steps: int = 400  # per round
    batch: int = 32
    lr: float = 5e-4
    rank: int = 8
    alpha: float | None = None
    targets: str = "attn_ff"
    cfg_drop: float = 0.1
    sample_batch: int = 128  # trajectories per sampling call
    seed: int = 0
    save_every: int = 100

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("num_inference_steps", "trajectories", "rounds", "train_steps", "batch", "sample_batch", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.method == "pgraft":
            if self.n_i is None or not 1 <= self.n_i < self.num_inference_steps:
                raise ValueError(f"N_I = {self.n_i} is outside the schedule: P-GRAFT needs 1 <= N_I < num_inference_steps "
                                 f"({self.num_inference_steps}); N_I counts steps from pure noise (N_I = {self.num_inference_steps} would be GRAFT)")
        validate.real("eta", self.eta, 0)
        validate.real("guidance_scale", self.guidance_scale, 0)
        if validate.real("lr", self.lr) <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.cfg_drop < 1:
            raise ValueError(f"cfg_drop must be in [0, 1), got {self.cfg_drop}")
        parse_rule(self.accept)

    @property
    def keep_position(self) -> int:
        """The schedule position whose states are kept (``num_inference_steps`` = final latents)."""
        return self.n_i if self.method == "pgraft" else self.num_inference_steps


# ----------------------------------------------------------------------------------------- rejection rules


def parse_rule(rule: str) -> tuple[str, float]:
    """``"top_k:K"``, ``"best_of_n"``, ``"threshold:X"`` or ``"top_fraction:F"`` → (kind, value)."""
    kind, _, value = rule.partition(":")
    if kind == "best_of_n" and not value:
        return "top_k", 1.0
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if kind == "top_k" and v >= 1 and v.is_integer():
        return kind, v
    if kind == "threshold" and math.isfinite(v):
        return kind, v
    if kind == "top_fraction" and 0 < v <= 1:
        return kind, v
    raise ValueError(f"rejection rule {rule!r} not understood: use top_k:K (K >= 1), best_of_n, threshold:X or top_fraction:F (0 < F <= 1)")


def accept(rewards: torch.Tensor, rule: str) -> torch.Tensor:
    """Indices of accepted samples; ``rewards`` is ``(prompts, M)``. Raises if nothing is accepted."""
    kind, v = parse_rule(rule)
    P, M = rewards.shape
    flat = torch.arange(P * M).view(P, M)
    if kind == "top_k":
        k = min(int(v), M)
        idx = flat.gather(1, rewards.topk(k, dim=1).indices).flatten()
    elif kind == "threshold":
        idx = flat[rewards >= v]
    else:
        k = max(1, int(round(v * P * M)))
        idx = rewards.flatten().topk(k).indices
    if idx.numel() == 0:
        best = float(rewards.max()) if rewards.numel() else math.nan
        raise ValueError(f"the rejection rule {rule!r} accepted none of {P * M} samples (best reward {best:.4g}): loosen it, "
                         f"e.g. a lower threshold, top_k:1 or top_fraction:0.25")
    return idx.sort().values


# ----------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_states(adapter, prompts: Sequence[str], seeds: Sequence[int], cfg: PGraftConfig, reward, progress=None) -> dict:
    """Trajectories for ``prompts[j]`` from ``seeds[j]``: every schedule position's state as the denoiser sees it
    (``states``: ``(B, steps + 1, *latent)``, float16; the last is the final latent) and the final image's reward.

    Keeping every position lets GRAFT and P-GRAFT at any ``N_I`` train on the very same samples (equal sampling budget).
    """
    adapter.eta = cfg.eta
    adapter.prepare(warn=False)
    states, rewards, nfe0 = [], [], adapter.counters.nfe
    for s in range(0, len(prompts), cfg.sample_batch):
        chunk, chunk_seeds = list(prompts[s : s + cfg.sample_batch]), list(seeds[s : s + cfg.sample_batch])
        cond = adapter.encode(chunk, guidance_scale=cfg.guidance_scale)
        adapter.set_schedule(cfg.num_inference_steps)
        gens = [torch.Generator().manual_seed(int(x)) for x in chunk_seeds]
        x = adapter.initial_noise(gens)
        kept = []
        for i in range(adapter.num_steps):
            kept.append((adapter._stepper.scale_model_input(x, i) if adapter.native else x).half().cpu())
            x = adapter.step(x, i, cond, gens).prev_sample
            if progress is not None:
                progress.update(len(chunk))
        kept.append(x.half().cpu())
        images = adapter.decode(x)
        rewards.append(reward(images, chunk).float().cpu())
        states.append(torch.stack(kept, 1))
    return {"states": torch.cat(states), "rewards": torch.cat(rewards), "nfe": adapter.counters.nfe - nfe0}


def round_samples(adapter, prompts: Sequence[str], cfg: PGraftConfig, reward, r: int, path: Path, progress: bool = True) -> dict:
    """Round ``r``'s samples (M per prompt), made once and stored atomically at ``path`` (reused when there)."""
    from tqdm.auto import tqdm

    rows = [p for p in prompts for _ in range(cfg.trajectories)]
    seeds = [cfg.seed * 1_000_003 + r * 100_003 + j for j in range(len(rows))]
    key = {"prompts": rows, "seeds": seeds, "steps": cfg.num_inference_steps, "guidance": cfg.guidance_scale, "eta": cfg.eta}
    if path.is_file():
        samples = torch.load(path, weights_only=False)
        if samples.get("key") != key:
            raise ValueError(f"{path} holds samples of other prompts or settings; use another --out or delete it")
        return samples
    with tqdm(total=len(rows) * cfg.num_inference_steps, desc=f"round {r}: sampling", disable=not progress) as bar:
        samples = sample_states(adapter, rows, seeds, cfg, reward, bar)
    samples.update(key=key, prompts=rows, reward_name=getattr(reward, "name", type(reward).__name__))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(samples, tmp)
    tmp.replace(path)
    return samples


# ----------------------------------------------------------------------------------------- training


def train(pipe, reward, prompts: Sequence[str], cfg: PGraftConfig, out: str | Path, progress: bool = True, stop_after: int | None = None,
          base_model: str = "", shared_samples: str | Path | None = None) -> Path | None:
    """Run ``cfg.rounds`` rounds of sample → accept → train on ``pipe`` (modified in place: LoRA + gate).

    ``shared_samples``: a file for round 0's samples that other runs with the same prompts and sampling
    settings reuse (GRAFT and P-GRAFT at several ``N_I`` on the same samples: equal sampling budget).
    The sampling compute is counted in every run that uses them.

    Returns ``out/final`` (a result :func:`~steer.train.finetune.load_result` loads), or ``None`` when
    ``stop_after`` optimiser steps were taken first (for tests of resuming).
    """
    from tqdm.auto import tqdm

    files = RunFiles(out)
    (files.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no training prompts")
    adapter = get_adapter(pipe)
    denoiser = getattr(pipe, denoiser_attr(pipe))
    device = adapter.device
    params = add_lora(denoiser, cfg.rank, cfg.alpha, cfg.targets, seed=cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    process = ForwardProcess(adapter)
    adapter.set_schedule(cfg.num_inference_steps)
    t_i = process.timestep_at(cfg.keep_position)
    gate = SegmentGate(denoiser, t_i if cfg.method == "pgraft" else None)
    state = files.load() or {"round": 0, "step": 0, "log": [], "compute": asdict(Compute()), "seconds": 0.0}
    if "lora" in state:
        set_lora_state(denoiser, state["lora"])
        opt.load_state_dict(state["opt"])
    compute = Compute(**state["compute"])
    log, timer, ran = state["log"], Timer(state["seconds"]), 0
    empty = adapter.encode([""], guidance_scale=1.0)
    try:
        while state["round"] < cfg.rounds:
            r = state["round"]
            samples_file = files.out / f"round_{r}_samples.pt"
            if r == 0 and shared_samples is not None:
                samples_file = Path(shared_samples)
            fresh = not samples_file.is_file()
            denoiser.eval()
            samples = round_samples(adapter, prompts, cfg, reward, r, samples_file, progress)
            rw = samples["rewards"].view(len(prompts), cfg.trajectories)
            samples["accepted"] = accept(rw, cfg.accept)
            if state["step"] == r * cfg.train_steps and not any(row.get("round") == r and "sample_reward" in row for row in log):
                compute.sampling_nfe += samples["nfe"]
                compute.reward_calls += len(samples["prompts"])
                log.append({"step": state["step"], "round": r, "sample_reward": float(samples["rewards"].mean()), "fresh": fresh,
                            "accepted_reward": float(samples["rewards"][samples["accepted"]].mean()), "accepted": int(samples["accepted"].numel())})
            acc = samples["accepted"]
            x_acc = samples["states"][acc, cfg.keep_position].float()
            p_acc = [samples["prompts"][int(j)] for j in acc]
            uniq = sorted(set(p_acc))
            cond_all = adapter.encode(uniq, guidance_scale=1.0)
            cond_idx = torch.tensor([uniq.index(p) for p in p_acc])
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + r)
            if state.get("gen") is not None and state["step"] > r * cfg.train_steps:  # resume mid-round: same draws as an unbroken run
                gen.set_state(state["gen"])
            denoiser.train()
            end = (r + 1) * cfg.train_steps
            bar = tqdm(total=end, initial=state["step"], desc=f"round {r}: training", disable=not progress)
            while state["step"] < end:
                b = torch.randint(0, len(acc), (cfg.batch,), generator=gen)
                t = process.sample_t(cfg.batch, t_i, gen)
                cond = cond_all.select(cond_idx[b])
                drop = torch.rand(cfg.batch, generator=gen) < cfg.cfg_drop
                if drop.any():
                    e = empty.select([0] * int(drop.sum()))
                    for k in cond.cond:
                        cond.cond[k] = cond.cond[k].clone()
                        cond.cond[k][drop.to(cond.cond[k].device)] = e.cond[k].to(cond.cond[k].dtype)
                loss = shaped_denoising_loss(process, cond, x_acc[b].to(device, adapter.dtype), t_i, gen, t=t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                state["step"] += 1
                ran += 1
                compute.train_nfe += 3 * cfg.batch  # forward + backward (2)
                row = {"step": state["step"], "round": r, "loss": loss.item()}
                log.append(row)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}", reward=f"{float(samples['rewards'][acc].mean()):.3f}")
                last = state["step"] == end
                if state["step"] % cfg.save_every == 0 or last or (stop_after is not None and ran >= stop_after):
                    if last:
                        state["round"] += 1
                    compute.seconds = timer.seconds
                    files.save(lora=lora_state(denoiser), opt=opt.state_dict(), round=state["round"], step=state["step"], log=log,
                               compute=asdict(compute), seconds=timer.seconds, gen=gen.get_state())
                    files.write_log(log, ("loss", "sample_reward", "accepted_reward"))
                if stop_after is not None and ran >= stop_after and not last:
                    bar.close()
                    return None
            bar.close()
    finally:
        denoiser.eval()
    compute.seconds = timer.seconds
    pgraft = cfg.method == "pgraft"
    meta = result_meta(cfg.method, cfg, compute, reward=reward, base_model=base_model, prompts=len(prompts), t_switch=t_i if pgraft else None,
                       n_i=cfg.n_i if pgraft else None)
    pipe.steer_gate = gate  # the result's own gate: the LoRA acts above t_I only (P-GRAFT), everywhere (GRAFT)
    return save_result(pipe, files.out / "final", meta)


# ----------------------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    from ..rewards import get_reward
    from .noise_aware import load_model, load_prompt_source

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "reward that scores the final images (a steer.rewards name)")
    p.add_argument("--method", choices=METHODS, default="pgraft")
    p.add_argument("--n-i", type=int, default=10, help="P-GRAFT: intermediate schedule position N_I (steps from pure noise)")
    p.add_argument("--trajectories", type=int, default=8, help="M: samples per prompt per round")
    p.add_argument("--accept", default="top_k:1", help="top_k:K | best_of_n | threshold:X | top_fraction:F")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=400, help="optimiser steps per round")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--eta", type=float, default=0.0, help="sampler noise of the trajectories (0: the stock deterministic call)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--cfg-drop", type=float, default=0.1, help="caption dropout while training (keeps the unconditional branch in step)")
    p.add_argument("--shared-samples", type=Path, help="file for round 0's samples, shared by runs with the same prompts and sampling settings")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    targets = parse_targets(a.targets)
    try:
        cfg = PGraftConfig(method=a.method, n_i=a.n_i, num_inference_steps=a.steps, guidance_scale=a.guidance, eta=a.eta, trajectories=a.trajectories,
                           accept=a.accept, rounds=a.rounds, train_steps=a.train_steps, batch=a.batch, lr=a.lr, rank=a.rank, targets=targets,
                           cfg_drop=a.cfg_drop, seed=a.seed)
        prompts = load_prompt_source(a.prompts, a.prompt_set, a.per_task)
    except (ValueError, TypeError, FileNotFoundError) as e:
        p.error(str(e))
    pipe = load_model(a.model, a.device)
    reward = get_reward(a.reward, device=a.device, **a.reward_kwargs)
    final = train(pipe, reward, prompts, cfg, a.out, progress=not a.no_progress, base_model=a.model,
                  shared_samples=a.shared_samples)
    print(f"wrote {final}: load it with steer.train.finetune.load_result(pipe, {str(final)!r})")


if __name__ == "__main__":
    main()
