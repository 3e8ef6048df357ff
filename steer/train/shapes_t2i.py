"""Train the shapes-world text-to-image models: autoencoder, SD-family UNet, SD3-family flow twin.

Every stage checkpoints and resumes (rerun the same command after an interruption)::

    python -m steer.train.shapes_t2i --run runs/shapes --stage vae
    python -m steer.train.shapes_t2i --run runs/shapes --stage sd
    python -m steer.train.shapes_t2i --run runs/shapes --stage flow
    python -m steer.train.shapes_t2i --run runs/shapes --export steer/shapes/weights
    python -m steer.train.shapes_t2i --run runs/flow2 --stage flow --init steer/shapes/weights/flow \
        --steps 3000 --lr 3e-4 --lr-schedule cosine --sigma-sampling mixed

The ``sd`` stage trains a UNet2DConditionModel + CLIPTextModel (epsilon prediction, DDIM
schedule) and saves a ``StableDiffusionPipeline``; ``flow`` trains an SD3Transformer2DModel +
two CLIPTextModelWithProjection encoders with the rectified-flow objective and saves a
``StableDiffusion3Pipeline`` (no T5: the pipeline feeds zero padding, which training
reproduces exactly through :class:`~steer.models.attention.CollapsedPaddingJointAttnProcessor`).
Both use classifier-free-guidance caption dropout.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..shapes.dataset import load_or_make
from ..shapes.tokenizer import build_tokenizer

CONFIGS = Path(__file__).resolve().parent.parent / "shapes" / "configs"
SD3_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default zero padding without T5


def _cfg(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


class EMA:
    """Exponential moving average of parameters, with the usual warm-up."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, params) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)


def _log(stage_dir: Path, row: dict) -> None:
    with (stage_dir / "log.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _save_ckpt(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", CPU"
    )


# ----------------------------------------------------------------------------------------- components


def make_text_encoder(vocab_size: int, tok, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_cfg("text_encoder"),
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _tokenize(tok, prompts) -> torch.Tensor:
    return tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids


# ----------------------------------------------------------------------------------------- stages


def train_vae(run: Path, data: dict, steps: int, batch: int, lr: float, device: str, save_every: int) -> None:
    from diffusers import AutoencoderKL

    stage = run / "vae"
    stage.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(**_cfg("vae")).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    step, elapsed = 0, 0.0
    ckpt = stage / "ckpt.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        vae.load_state_dict(st["model"]), opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st["elapsed"]
        torch.set_rng_state(st["rng"])
        print(f"resumed vae at step {step}")
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2)
    gen = np.random.default_rng(step)
    t0 = time.time() - elapsed
    while step < steps:
        idx = gen.integers(0, len(images), batch)
        x = images[idx].to(device).float() / 127.5 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == steps:
            _log(stage, {"stage": "vae", "step": step, "loss": round(loss.item(), 5), "kl": round(kl.item(), 3), "seconds": round(time.time() - t0, 1)})
        if step % save_every == 0 or step == steps:
            _save_ckpt(ckpt, model=vae.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - t0, rng=torch.get_rng_state())
    # latent scale: unit variance for the diffusion models
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i : i + 256].to(device).float() / 127.5 - 1).latent_dist.mode() for i in range(0, 4096, 256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()), shift_factor=0.0)
    vae.save_pretrained(stage / "final")
    (stage / "meta.json").write_text(json.dumps({"steps": steps, "batch": batch, "seconds": round(time.time() - t0, 1), "hardware": _hardware()}))


def _latents(vae, images: np.ndarray, device: str) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 512):
            x = torch.from_numpy(images[i : i + 512]).permute(0, 3, 1, 2).to(device).float() / 127.5 - 1
            out.append(vae.encode(x).latent_dist.mode().cpu() * vae.config.scaling_factor)
    return torch.cat(out)


def _from_pipeline(kind: str, folder: Path, encoders: list, denoiser):
    """The denoiser and text encoders of an exported pipeline folder, in place of fresh ones (``--init``)."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    if kind == "sd":
        denoiser = UNet2DConditionModel.from_pretrained(folder / "unet")
        names = ["text_encoder"]
    else:
        denoiser = SD3Transformer2DModel.from_pretrained(folder / "transformer")
        names = ["text_encoder", "text_encoder_2"]
    encoders = [type(enc).from_pretrained(folder / name) for enc, name in zip(encoders, names)]
    return encoders, denoiser


def _lr_factor(schedule: str, step: int, steps: int, warmup: int = 200, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then constant or cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))


def sample_sigma(kind: str, batch: int, gen: torch.Generator | None = None, device: str = "cpu") -> torch.Tensor:
    """Noise levels for the rectified-flow loss.

    ``logit_normal``: sigmoid of a standard normal, as SD3 (few samples below σ≈0.1 or above 0.9).
    ``mixed``: that for 70 % of the batch and uniform on (0, 1) for 30 %, so the ends of the
    path (layout at high noise, crisp outlines at low noise) are trained too.
    """
    sigma = torch.sigmoid(torch.randn(batch, generator=gen, device=device))
    if kind == "mixed":
        uniform = torch.rand(batch, generator=gen, device=device)
        pick = torch.rand(batch, generator=gen, device=device) < 0.3
        sigma = torch.where(pick, uniform, sigma)
    elif kind != "logit_normal":
        raise ValueError(f"unknown sigma sampling {kind!r}; choose logit_normal or mixed")
    return sigma


def grow_transformer(transformer, extra_layers: int):
    """An SD3 transformer with ``extra_layers`` more joint blocks that computes exactly what ``transformer`` does.

    The new blocks go before the last (context-pre-only) block, with their AdaLN-Zero modulation
    zeroed so every gate is 0 and each new block starts as the identity on both streams; training
    then grows them (more capacity, continued from the trained weights).
    """
    from diffusers import SD3Transformer2DModel

    cfg = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    n = cfg["num_layers"]
    cfg["num_layers"] = n + extra_layers
    torch.manual_seed(3)
    grown = SD3Transformer2DModel(**cfg)
    old = transformer.state_dict()
    new = grown.state_dict()
    remap = {i: i for i in range(n - 1)} | {n - 1: n - 1 + extra_layers}
    for key, value in old.items():
        if key.startswith("transformer_blocks."):
            i = int(key.split(".")[1])
            key = key.replace(f"transformer_blocks.{i}.", f"transformer_blocks.{remap[i]}.", 1)
        new[key] = value
    grown.load_state_dict(new)
    with torch.no_grad():
        for i in range(n - 1, n - 1 + extra_layers):
            block = grown.transformer_blocks[i]
            for norm in (block.norm1, block.norm1_context):
                norm.linear.weight.zero_()
                norm.linear.bias.zero_()
    return grown


def train_denoiser(kind: str, run: Path, data: dict, steps: int, batch: int, lr: float, device: str, save_every: int, cfg_drop: float = 0.1,
                   init: Path | None = None, lr_schedule: str = "constant", sigma_sampling: str = "logit_normal",
                   grow_layers: int = 0) -> None:
    """Train the ``sd`` (UNet, epsilon, DDIM) or ``flow`` (SD3 transformer, rectified flow) model.

    ``init``: an exported pipeline folder (e.g. the shipped weights) to continue from instead of
    random weights; its VAE is used when the run has none. ``steps`` then counts the new steps.
    ``lr_schedule``: ``constant`` after warm-up (the first shipped models) or ``cosine`` decay to
    10 %; ``sigma_sampling`` (flow only): see :func:`sample_sigma`; ``grow_layers`` (flow, with
    ``init``): add that many identity-initialised joint blocks (:func:`grow_transformer`).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, UNet2DConditionModel

    from ..models.attention import CollapsedPaddingJointAttnProcessor

    stage = run / kind
    stage.mkdir(parents=True, exist_ok=True)
    vae_dir = run / "vae" / "final"
    if init is not None and not vae_dir.exists():
        vae_dir = init / "vae"
    vae = AutoencoderKL.from_pretrained(vae_dir).to(device).eval()
    if init is not None:  # the model's own tokenizer: a fresh build may number some words differently
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(init / "tokenizer")
    else:
        tok = build_tokenizer()
    torch.manual_seed(1 if kind == "sd" else 2)
    if kind == "sd":
        encoders = [make_text_encoder(len(tok), tok, with_projection=False)]
        denoiser = UNet2DConditionModel(**_cfg("unet"))
        sched = DDIMScheduler(**_cfg("ddim_scheduler"))
    else:
        encoders = [make_text_encoder(len(tok), tok, with_projection=True) for _ in range(2)]
        denoiser = SD3Transformer2DModel(**_cfg("transformer"))
        sched = FlowMatchEulerDiscreteScheduler(**_cfg("flow_scheduler"))
    if init is not None:
        encoders, denoiser = _from_pipeline(kind, init, encoders, denoiser)
        if grow_layers < 0:
            raise ValueError(f"--grow-layers must be 0 or more, got {grow_layers}")
        if grow_layers:
            if kind != "flow":
                raise ValueError("--grow-layers applies to the flow stage")
            denoiser = grow_transformer(denoiser, grow_layers)
    elif grow_layers:
        raise ValueError("--grow-layers needs --init (it grows a trained model)")
    if kind == "flow":
        denoiser.set_attn_processor(CollapsedPaddingJointAttnProcessor(SD3_MAX_SEQUENCE_LENGTH))
    modules = torch.nn.ModuleList([denoiser, *encoders]).to(device)
    params = [p for p in modules.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = EMA(params, decay=0.999)
    step, elapsed = 0, 0.0
    ckpt = stage / "ckpt.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        modules.load_state_dict(st["model"]), opt.load_state_dict(st["opt"])
        for s, v in zip(ema.shadow, st["ema"]):
            s.copy_(v)
        step, elapsed = st["step"], st["elapsed"]
        torch.set_rng_state(st["rng"])
        print(f"resumed {kind} at step {step}")
    latents = _latents(vae, data["images"], device)
    ids = _tokenize(tok, data["prompts"])
    empty = _tokenize(tok, [""])[0]
    alphas = sched.alphas_cumprod.to(device) if kind == "sd" else None
    gen = np.random.default_rng(1000 + step)
    t0 = time.time() - elapsed
    warmup = 200
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr * _lr_factor(lr_schedule, step, steps, warmup)
        idx = gen.integers(0, len(latents), batch)
        x0 = latents[idx].to(device)
        tokens = ids[idx].clone()
        tokens[torch.from_numpy(gen.random(batch) < cfg_drop)] = empty
        tokens = tokens.to(device)
        noise = torch.randn_like(x0)
        if kind == "sd":
            ctx = encoders[0](tokens)[0]
            t = torch.randint(0, sched.config.num_train_timesteps, (batch,), device=device)
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            pred = denoiser(xt, t, ctx).sample
            loss = F.mse_loss(pred, noise)
        else:
            outs = [enc(tokens, output_hidden_states=True) for enc in encoders]
            ctx = torch.cat([o.hidden_states[-2] for o in outs], -1)
            ctx = torch.cat([ctx, ctx.new_zeros(batch, 1, ctx.shape[-1])], 1)  # the collapsed T5 padding
            pooled = torch.cat([o.text_embeds for o in outs], -1)
            sigma = sample_sigma(sigma_sampling, batch, device=device)
            s = sigma.view(-1, 1, 1, 1)
            xt = (1 - s) * x0 + s * noise
            pred = denoiser(hidden_states=xt, timestep=sigma * sched.config.num_train_timesteps, encoder_hidden_states=ctx, pooled_projections=pooled).sample
            loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        step += 1
        if step % 50 == 0 or step == steps:
            _log(stage, {"stage": kind, "step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - t0, 1)})
        if step % save_every == 0 or step == steps:
            _save_ckpt(ckpt, model=modules.state_dict(), opt=opt.state_dict(), ema=ema.shadow, step=step, elapsed=time.time() - t0, rng=torch.get_rng_state())
        if step % 1000 == 0:  # EMA milestones, to compare training lengths
            _save_ckpt(stage / f"ema_{step}.pt", ema=ema.shadow, step=step)
    ema.copy_to(params)
    _export_pipeline(kind, stage / "final", vae, tok, denoiser, encoders, sched)
    meta = {"steps": steps, "batch": batch, "lr": lr, "lr_schedule": lr_schedule, "seconds": round(time.time() - t0, 1), "hardware": _hardware()}
    if kind == "flow":
        meta["sigma_sampling"] = sigma_sampling
        meta["grow_layers"] = grow_layers
    if init is not None:
        meta["init"] = str(init)
        for previous in (init / "training.json", init.parent / "meta.json"):  # an exported folder, or a run's final/
            if previous.exists():
                meta["before_init"] = json.loads(previous.read_text())
                break
    (stage / "meta.json").write_text(json.dumps(meta))


def _export_pipeline(kind, out: Path, vae, tok, denoiser, encoders, sched) -> None:
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    if kind == "sd":
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=encoders[0], tokenizer=tok, unet=denoiser, scheduler=sched,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        denoiser.set_attn_processor(JointAttnProcessor2_0())
        pipe = StableDiffusion3Pipeline(
            transformer=denoiser, scheduler=sched, vae=vae,
            text_encoder=encoders[0], tokenizer=tok, text_encoder_2=encoders[1], tokenizer_2=tok,
            text_encoder_3=None, tokenizer_3=None,
        )
    pipe.to("cpu").save_pretrained(out)


def export(run: Path, dest: Path) -> None:
    """Copy the trained pipelines into the package's weights folder."""
    for kind in ("sd", "flow"):
        src = run / kind / "final"
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: train the {kind!r} stage first")
        if (dest / kind).exists():
            shutil.rmtree(dest / kind)
        shutil.copytree(src, dest / kind)
        shutil.copy(run / kind / "meta.json", dest / kind / "training.json")
    print(f"exported to {dest}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/shapes"), help="run folder (checkpoints, logs, outputs)")
    p.add_argument("--stage", choices=["vae", "sd", "flow"], help="what to train")
    p.add_argument("--export", type=Path, help="copy trained pipelines to this folder")
    p.add_argument("--steps", type=int, help="optimizer steps (default: vae 1500, sd 3000, flow 5000: the shipped models)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, help="learning rate (default: vae 1e-3, sd/flow 5e-4)")
    p.add_argument("--data", type=int, default=100_000, help="number of training scenes")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant", help="after the 200-step warm-up")
    p.add_argument("--sigma-sampling", choices=["logit_normal", "mixed"], default="logit_normal", help="flow noise levels (see sample_sigma)")
    p.add_argument("--grow-layers", type=int, default=0, help="flow with --init: add this many identity-initialised transformer blocks")
    p.add_argument("--init", type=Path, help="continue from an exported pipeline folder (e.g. steer/shapes/weights/flow) instead of random weights")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.export:
        return export(a.run, a.export)
    if not a.stage:
        p.error("give --stage or --export")
    data = load_or_make(a.run / f"data_{a.data}.npz", a.data, seed=0)
    (a.run / a.stage).mkdir(parents=True, exist_ok=True)
    (a.run / a.stage / "command.txt").write_text(" ".join([Path(sys.executable).name, "-m", "steer.train.shapes_t2i", *(argv or sys.argv[1:])]))
    if a.stage == "vae":
        train_vae(a.run, data, 1500 if a.steps is None else a.steps, a.batch, 1e-3 if a.lr is None else a.lr, a.device, a.save_every)
    else:
        if a.init is not None and not (a.init / "model_index.json").exists():
            p.error(f"--init {a.init}: not an exported pipeline folder (no model_index.json)")
        steps = {"sd": 3000, "flow": 5000}[a.stage] if a.steps is None else a.steps
        train_denoiser(a.stage, a.run, data, steps, a.batch, 5e-4 if a.lr is None else a.lr, a.device, a.save_every, init=a.init,
                       lr_schedule=a.lr_schedule, sigma_sampling=a.sigma_sampling, grow_layers=a.grow_layers)


if __name__ == "__main__":
    main()
