"""DRaFT: fine-tune a LoRA by backpropagating a differentiable reward through the sampling chain.

    python -m steer.train.draft --model shapes-sd --variant k --k 1 --prompt-set 99 --out runs/draft_sd
    python -m steer.train.draft --model path/or/hub-id --variant lv --reward aesthetic --prompts p.jsonl --device cuda

After "Directly Fine-Tuning Diffusion Models on Differentiable Rewards" (Clark et al. 2024).
Each optimiser step samples a batch of prompts with the deterministic sampler (η = 0, the
pipeline's own scheduler), decodes the final latent and ascends the reward:

* ``full``: gradients through every step, with the denoiser's gradient checkpointing
  (diffusers' ``enable_gradient_checkpointing``) so activations are recomputed per block;
* ``k`` (DRaFT-K): the first ``steps − K`` steps run without gradients, the last K with them;
* ``lv`` (DRaFT-LV): the chain runs without gradients to x₀; it is re-noised ``--lv-samples``
  times to the last step's noise level and each copy is denoised in one step with gradients
  (``adapter.predict_x0``); the loss averages their rewards (a lower-variance K = 1 estimate).

Compute (in the trace's units): forward denoiser calls are NFE; a backward through the denoiser
counts 2 NFE (3 with checkpointing's recomputation); reward gradient calls are counted apart.
Checkpoints and logs are written atomically; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import validate
from ..models.registry import get_adapter
from .finetune import (Compute, ForwardProcess, RunFiles, Timer, add_common_arguments, add_lora, denoiser_attr, lora_state, parse_targets, result_meta,
                       save_result, set_lora_state)

VARIANTS = ("full", "k", "lv")


@dataclass
class DraftConfig:
    """Settings of a DRaFT run (see the module docstring)."""

    variant: str = "k"
    k: int = 1
    lv_samples: int = 2
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    steps: int = 200  # optimiser steps
    batch: int = 8  # prompts per step
    lr: float = 3e-4
    rank: int = 8
    alpha: float | None = None
    targets: str = "attn_ff"
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 25

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("num_inference_steps", "steps", "batch", "save_every", "lv_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        validate.real("guidance_scale", self.guidance_scale, 0)
        for name in ("lr", "grad_clip"):
            if validate.real(name, getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.variant == "k" and not 1 <= self.k <= self.num_inference_steps:
            raise ValueError(f"DRaFT-K needs 1 <= K <= num_inference_steps ({self.num_inference_steps}), got K = {self.k}")

    @property
    def grad_steps(self) -> int:
        return {"full": self.num_inference_steps, "k": self.k, "lv": 1}[self.variant]


def check_reward(reward) -> None:
    """Raise unless gradients flow from ``reward``'s score to its input pixels."""
    if not getattr(reward, "differentiable", False):
        from ..rewards import available_rewards

        raise ValueError(f"DRaFT needs a differentiable reward; {getattr(reward, 'name', type(reward).__name__)!r} is not. "
                         f"The registered rewards are ({', '.join(available_rewards())}), and weighted sums of them; "
                         f"rank-sum composites and rewards with differentiable = False are not")


def draft_loss(adapter, process: ForwardProcess, reward, prompts: Sequence[str], cfg: DraftConfig, generators: Sequence[torch.Generator],
               compute: Compute | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, rewards)`` of one batch: ``loss = −mean reward`` with gradients through the variant's steps."""
    cond = adapter.encode(list(prompts), guidance_scale=cfg.guidance_scale)
    adapter.eta = 0.0
    adapter.prepare(warn=False)
    adapter.set_schedule(cfg.num_inference_steps)
    n = adapter.num_steps
    x = adapter.initial_noise(generators)
    first_grad = {"full": 0, "k": n - cfg.k, "lv": n}[cfg.variant]
    for i in range(n):
        with torch.set_grad_enabled(i >= first_grad):
            x = adapter.step(x, i, cond, generators).prev_sample
    rows = len(prompts)
    forward = rows * n
    if cfg.variant == "lv":
        x0 = x.detach()
        t_last = torch.full((rows,), process.timestep_at(n - 1), dtype=torch.float64)
        a, s = (c.to(x0).view(-1, *[1] * (x0.ndim - 1)) for c in process.coefficients(t_last))
        noise = torch.stack([torch.randn((cfg.lv_samples, *x0.shape[1:]), generator=g) for g in generators], 1).to(x0)  # (S, rows, ...)
        xs = torch.cat([a * x0 + s * noise[j] for j in range(cfg.lv_samples)])
        cond_lv = cond.select(torch.arange(rows).repeat(cfg.lv_samples))
        x = adapter.predict_x0(xs, n - 1, cond_lv)
        forward += rows * cfg.lv_samples
        prompts = list(prompts) * cfg.lv_samples
    images = adapter.decode(x)
    r = reward(images, list(prompts))
    if compute is not None:
        backward = rows * cfg.lv_samples if cfg.variant == "lv" else rows * cfg.grad_steps
        recompute = backward if cfg.variant == "full" else 0
        compute.sampling_nfe += forward
        compute.train_nfe += 2 * backward + recompute
        compute.reward_grad_calls += len(prompts)
    return -r.mean(), r.detach()


def train(pipe, reward, prompts: Sequence[str], cfg: DraftConfig, out: str | Path, progress: bool = True, stop_after: int | None = None,
          base_model: str = "") -> Path | None:
    """DRaFT on ``pipe`` (modified in place: LoRA). Returns ``out/final`` or ``None`` if stopped by ``stop_after``."""
    from tqdm.auto import tqdm

    check_reward(reward)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no training prompts")
    files = RunFiles(out)
    (files.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    adapter = get_adapter(pipe)
    denoiser = getattr(pipe, denoiser_attr(pipe))
    params = add_lora(denoiser, cfg.rank, cfg.alpha, cfg.targets, seed=cfg.seed)
    if cfg.variant == "full" and getattr(denoiser, "_supports_gradient_checkpointing", False):
        denoiser.enable_gradient_checkpointing()
    for module in (getattr(pipe, "vae", None), *(getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))):
        if module is not None:
            module.requires_grad_(False)
    reward.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    process = ForwardProcess(adapter)
    state = files.load() or {"step": 0, "log": [], "compute": asdict(Compute()), "seconds": 0.0}
    if "lora" in state:
        set_lora_state(denoiser, state["lora"])
        opt.load_state_dict(state["opt"])
    compute, log, timer, ran = Compute(**state["compute"]), state["log"], Timer(state["seconds"]), 0
    gen = torch.Generator().manual_seed(cfg.seed)
    if state.get("gen") is not None:
        gen.set_state(state["gen"])
    denoiser.train()
    bar = tqdm(total=cfg.steps, initial=state["step"], desc=f"DRaFT-{cfg.variant}", disable=not progress)
    try:
        while state["step"] < cfg.steps:
            idx = torch.randint(0, len(prompts), (cfg.batch,), generator=gen)
            seeds = torch.randint(0, 2**62, (cfg.batch,), generator=gen)
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
            loss, r = draft_loss(adapter, process, reward, [prompts[i] for i in idx], cfg, gens, compute)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            state["step"] += 1
            ran += 1
            log.append({"step": state["step"], "loss": loss.item(), "reward": float(r.mean()), "grad_norm": float(gnorm),
                        "train_nfe": compute.train_nfe, "total_nfe": compute.total_nfe})
            bar.update()
            bar.set_postfix(reward=f"{float(r.mean()):.3f}")
            last = state["step"] == cfg.steps
            if state["step"] % cfg.save_every == 0 or last or (stop_after is not None and ran >= stop_after):
                compute.seconds = timer.seconds
                files.save(lora=lora_state(denoiser), opt=opt.state_dict(), step=state["step"], log=log, compute=asdict(compute),
                           seconds=timer.seconds, gen=gen.get_state())
                files.write_log(log, ("loss", "reward", "grad_norm"))
            if stop_after is not None and ran >= stop_after and not last:
                return None
    finally:
        bar.close()
        denoiser.eval()
        if getattr(denoiser, "gradient_checkpointing", False):
            denoiser.disable_gradient_checkpointing()
    compute.seconds = timer.seconds
    meta = result_meta(f"draft_{cfg.variant}", cfg, compute, reward=reward, base_model=base_model, prompts=len(prompts))
    return save_result(pipe, files.out / "final", meta)


def main(argv=None) -> None:
    from ..rewards import get_reward
    from .noise_aware import load_model, load_prompt_source

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "a differentiable steer reward")
    p.add_argument("--variant", choices=VARIANTS, default="k")
    p.add_argument("--k", type=int, default=1, help="DRaFT-K: steps with gradients (the last K)")
    p.add_argument("--lv-samples", type=int, default=2, help="DRaFT-LV: re-noisings of x0 per prompt")
    p.add_argument("--train-steps", type=int, default=200, help="optimiser steps")
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=3e-4)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    targets = parse_targets(a.targets)
    try:
        cfg = DraftConfig(variant=a.variant, k=a.k, lv_samples=a.lv_samples, num_inference_steps=a.steps, guidance_scale=a.guidance,
                          steps=a.train_steps, batch=a.batch, lr=a.lr, rank=a.rank, targets=targets, seed=a.seed)
        prompts = load_prompt_source(a.prompts, a.prompt_set, a.per_task)
        reward = get_reward(a.reward, device=a.device, **a.reward_kwargs)
        check_reward(reward)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        p.error(str(e))
    pipe = load_model(a.model, a.device)
    final = train(pipe, reward, prompts, cfg, a.out, progress=not a.no_progress, base_model=a.model)
    print(f"wrote {final}: load it with steer.train.finetune.load_result(pipe, {str(final)!r})")


if __name__ == "__main__":
    main()
