"""Inverse noise correction for flow-matching pipelines (the GRAFT / P-GRAFT paper's recipe, written for steer).

    python -m steer.train.noise_correction --model shapes-flow --num-scenes 2000 --invert-steps 25 \\
        --steps 1500 --out runs/noise_corrector --threads 1
    python -m steer.train.noise_correction --model path/or/hub-id --data scenes.npz --out runs/nc --device cuda

A flow sampler started from N(0, I) does not reproduce the data at few steps, partly because the noise
the *reverse* ODE maps real data to is not exactly N(0, I). The recipe:

1. **Invert** (``OUT/inverted.pt``, resumable): encode real images with the pipeline's VAE
   (``(mode - shift_factor) · scaling_factor``) and run :func:`invert` — Euler on the flow's velocity
   from σ = 0 up to σ = 1 on the sampler's own schedule, conditional on each image's caption.
2. **Fit** a :class:`NoiseCorrector` (maximum likelihood) that maps N(0, I) to the inverted noise
   (``OUT/checkpoint.pt`` atomic, ``OUT/log.json`` loss per step, ``OUT/loss.png``; rerunning the same
   command resumes a killed run). The result is ``OUT/final`` (``config.json`` + ``model.safetensors``).
3. **Sample** with the stock pipeline, passing corrected initial latents::

       corrector = NoiseCorrector.from_pretrained("runs/noise_corrector/final")
       g = torch.Generator().manual_seed(0)
       latents = corrector.sample(len(prompts), generator=g)          # (B, 4, 16, 16), float32, CPU
       images = pipe(prompts, latents=latents.to(pipe.device, pipe.transformer.dtype),
                     num_inference_steps=8, guidance_scale=1.0).images

   ``StableDiffusion3Pipeline`` takes ``latents`` of shape ``(B, C, H/8, W/8)`` and uses them unscaled
   (the flow's ``init_noise_sigma`` is 1). ``corrector.correct(noise)`` maps given base noise (e.g.
   ``adapter.initial_noise(generators)``), so corrected and uncorrected runs can share seeds.

The corrector is unconditional (one noise distribution, marginal over the training captions) and
fitted to inversions at guidance 1 (the conditional velocity alone, which is the model of the data
distribution); under stronger guidance the sampler's ODE differs from the one inverted.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import validate
from .shapes_t2i import _save_ckpt

FLOW_FAMILIES = ("sd3", "flux")


# ----------------------------------------------------------------------------------------- inversion


def flow_adapter(adapter_or_pipe):
    """The deterministic (``eta=0``) steer adapter of a flow-matching pipeline; other pipelines are refused."""
    from ..models.base import ModelAdapter
    from ..models.registry import get_adapter

    adapter = adapter_or_pipe if isinstance(adapter_or_pipe, ModelAdapter) else get_adapter(adapter_or_pipe, eta=0.0)
    if adapter.family not in FLOW_FAMILIES:
        raise ValueError(
            f"inverse noise correction needs a flow-matching pipeline (families {FLOW_FAMILIES}), got a "
            f"{adapter.family!r} pipeline ({type(adapter.pipe).__name__}): use e.g. StableDiffusion3Pipeline / FluxPipeline"
        )
    if adapter.eta != 0 or not adapter.native:
        adapter.eta = 0.0
        adapter.prepare(warn=False)
    return adapter


def _check_batch(latents: torch.Tensor, prompts: Sequence[str], num_steps, guidance_scale, shape: tuple[int, ...]) -> list[str]:
    validate.integer("num_steps", num_steps, 1)
    validate.real("guidance_scale", guidance_scale, 1.0)
    prompts = validate.prompts("prompts", prompts)
    if not torch.is_tensor(latents) or tuple(latents.shape[1:]) != tuple(shape) or latents.ndim != len(shape) + 1:
        got = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
        raise ValueError(f"latents must be a tensor of shape (B, {', '.join(map(str, shape))}), got {got}")
    if len(prompts) != latents.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {latents.shape[0]} latents: give one prompt per latent")
    return prompts


@torch.no_grad()
def invert(adapter_or_pipe, latents: torch.Tensor, prompts: Sequence[str], num_steps: int, guidance_scale: float = 1.0,
           *, refine: int = 0, batch: int | None = None) -> torch.Tensor:
    """Map clean latents to noise with the reverse flow ODE (returns float32 on the input's device).

    Schedule: the sampler's own sigmas for ``num_steps`` (``FlowMatchEulerDiscreteScheduler``: σ_0 = 1 > … >
    σ_{n-1} > σ_n = 0, shift as the pipeline applies it) walked backwards. Inverse step i (σ_{i+1} → σ_i)
    is ``x_i = x_{i+1} + (σ_i - σ_{i+1})·v(x_{i+1}, t_i)`` — the velocity at the current state, at the
    timestep of the level being reached (the usual DDIM-inversion approximation, one evaluation per step);
    ``refine`` fixed-point iterations ``x_i ← x_{i+1} + (σ_i - σ_{i+1})·v(x_i, t_i)`` make it the exact
    inverse of the sampler's Euler step (each costs one more evaluation per step).

    ``guidance_scale`` 1.0 (default) inverts the conditional velocity alone: the model of the data
    given the caption, and the ODE whose noise distribution a corrector should match. Larger values
    invert the CFG-guided ODE (two denoiser rows per evaluation).
    """
    adapter = flow_adapter(adapter_or_pipe)
    validate.integer("refine", refine, 0)
    prompts = _check_batch(latents, prompts, num_steps, guidance_scale, adapter.latent_shape())
    out = []
    size = batch or latents.shape[0]
    with adapter.fixed_placement():
        for s in range(0, latents.shape[0], size):
            sl = slice(s, min(latents.shape[0], s + size))
            cond = adapter.encode(prompts[sl], guidance_scale=guidance_scale)
            adapter.set_schedule(num_steps)
            sig = [adapter.noise_level(i) for i in range(adapter.num_steps)] + [0.0]
            x = latents[sl].to(adapter.device, adapter.dtype)
            for i in reversed(range(adapter.num_steps)):
                h = sig[i] - sig[i + 1]
                nxt = x + h * adapter.predict(x, i, cond).to(x.dtype)
                for _ in range(refine):
                    nxt = x + h * adapter.predict(nxt, i, cond).to(x.dtype)
                adapter.counters.nfe += x.shape[0] * (1 + refine)
                x = nxt
            out.append(x.float())
    return torch.cat(out)


@torch.no_grad()
def sample_latents(adapter_or_pipe, noise: torch.Tensor, prompts: Sequence[str], num_steps: int, guidance_scale: float = 1.0,
                   *, batch: int | None = None) -> torch.Tensor:
    """The forward sampler (the pipeline's own Euler steps) from given initial latents: the stock call's latents."""
    adapter = flow_adapter(adapter_or_pipe)
    prompts = _check_batch(noise, prompts, num_steps, guidance_scale, adapter.latent_shape())
    out = []
    size = batch or noise.shape[0]
    with adapter.fixed_placement():
        for s in range(0, noise.shape[0], size):
            sl = slice(s, min(noise.shape[0], s + size))
            cond = adapter.encode(prompts[sl], guidance_scale=guidance_scale)
            adapter.set_schedule(num_steps)
            x = noise[sl].to(adapter.device, adapter.dtype)
            for i in range(adapter.num_steps):
                x = adapter.step(x, i, cond).prev_sample
            out.append(x.float())
    return torch.cat(out)


@torch.no_grad()
def encode_images(pipe, images: np.ndarray | torch.Tensor, batch: int = 256) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` images → the flow's clean latents ``(vae mode - shift_factor) · scaling_factor``."""
    vae = pipe.vae
    shift, scale = vae.config.get("shift_factor") or 0.0, vae.config.scaling_factor
    images = torch.as_tensor(np.asarray(images))
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {tuple(images.shape)} {images.dtype}")
    dev = pipe._execution_device
    out = []
    for s in range(0, len(images), batch):
        x = images[s : s + batch].permute(0, 3, 1, 2).to(dev, vae.dtype) / 127.5 - 1
        out.append(((vae.encode(x).latent_dist.mode() - shift) * scale).float().cpu())
    return torch.cat(out)


def invert_dataset(pipe, images: np.ndarray, prompts: Sequence[str], out: Path, num_steps: int = 25, guidance_scale: float = 1.0,
                   refine: int = 0, batch: int = 64, progress: bool = True) -> torch.Tensor:
    """Inverted noise of every (image, caption), cached in ``out/inverted.pt`` (atomic after each batch; resumes)."""
    from tqdm.auto import tqdm

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts: give one caption per image")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "inverted.pt"
    meta = {"num_steps": num_steps, "guidance_scale": guidance_scale, "refine": refine, "n": len(prompts),
            "prompts_hash": hash_strings(prompts)}
    done: list[torch.Tensor] = []
    if path.exists():
        state = torch.load(path, weights_only=False)
        if state["meta"] != meta:
            raise ValueError(f"{path} was made with {state['meta']}, not {meta}: use another --out or delete it")
        done = list(state["noise"].split(batch)) if len(state["noise"]) else []
    n_done = sum(len(d) for d in done)
    if n_done >= len(prompts):
        return torch.cat(done)
    adapter = flow_adapter(pipe)
    bar = tqdm(total=len(prompts), initial=n_done, desc="inverting", disable=not progress)
    for s in range(n_done, len(prompts), batch):
        sl = slice(s, min(len(prompts), s + batch))
        z = invert(adapter, encode_images(pipe, images[sl]), list(prompts[sl]), num_steps, guidance_scale, refine=refine)
        done.append(z.cpu())
        _save_ckpt(path, noise=torch.cat(done), meta=meta)
        bar.update(z.shape[0])
    bar.close()
    return torch.cat(done)


def hash_strings(strings: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(strings).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- the corrector


@dataclass
class CorrectorConfig:
    """Shape of the noise and size of the flow."""

    channels: int = 4
    height: int = 16
    width: int = 16
    layers: int = 8
    hidden: int = 32
    scale_bound: float = 2.0  # |log-scale| of a coupling stays below this (tanh bound)

    def __post_init__(self):
        for name in ("channels", "height", "width", "layers", "hidden"):
            validate.integer(name, getattr(self, name), 1)
        validate.real("scale_bound", self.scale_bound, 1e-3)


class _Coupling(nn.Module):
    """Affine coupling: positions where ``mask`` is 1 pass through and condition the others' scale and shift."""

    def __init__(self, cfg: CorrectorConfig, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)
        self.bound = cfg.scale_bound
        c, h = cfg.channels, cfg.hidden
        self.net = nn.Sequential(nn.Conv2d(c + 1, h, 3, padding=1), nn.SiLU(), nn.Conv2d(h, h, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(h, 2 * c, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)  # zero output: the layer starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def _st(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp = torch.cat([x * self.mask, self.mask[:, :1].expand(x.shape[0], -1, -1, -1)], 1)
        s, t = self.net(inp).chunk(2, 1)
        s = self.bound * torch.tanh(s / self.bound) * (1 - self.mask)
        return s, t * (1 - self.mask)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # base → data
        s, t = self._st(u)
        return u * torch.exp(s) + t

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # data → base, log|det d(base)/d(data)|
        s, t = self._st(z)
        return (z - t) * torch.exp(-s), -s.flatten(1).sum(1)


class NoiseCorrector(nn.Module):
    """A small Real-NVP flow from N(0, I) to the inverted-noise distribution, fitted by maximum likelihood.

    Why a coupling flow (not a rectified-flow net sampled with a few Euler steps): exact likelihood, so
    training is one stable loss with no inner ODE; sampling is one pass (cheap next to the sampler);
    the map is invertible and, with every coupling's last conv and the element-wise affine zero-initialised,
    *exactly the identity* at initialisation, so a weakly trained model stays close to the base noise
    it is given (corrected and uncorrected samples with the same seed stay comparable).

    Layers (base → data): ``layers`` affine couplings (3×3 conv nets on the masked input and the mask),
    masks cycling checkerboard, inverted checkerboard, first half of the channels, second half; then a
    per-element affine ``z = u·exp(a) + b`` (one scale and shift per latent element).
    """

    def __init__(self, config: CorrectorConfig | None = None):
        super().__init__()
        self.config = cfg = config or CorrectorConfig()
        c, h, w = cfg.channels, cfg.height, cfg.width
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        board = ((ii + jj) % 2).float().view(1, 1, h, w)
        half = torch.zeros(1, c, 1, 1)
        half[:, : max(1, c // 2)] = 1
        half = half.expand(1, c, h, w).contiguous()
        masks = [board.expand(1, c, h, w).contiguous(), 1 - board.expand(1, c, h, w), half, 1 - half]
        if c == 1:
            masks = masks[:2]
        self.couplings = nn.ModuleList(_Coupling(cfg, masks[k % len(masks)].clone()) for k in range(cfg.layers))
        self.log_scale = nn.Parameter(torch.zeros(c, h, w))
        self.shift = nn.Parameter(torch.zeros(c, h, w))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.height, self.config.width)

    def correct(self, noise: torch.Tensor) -> torch.Tensor:
        """Map base noise ``(B, C, H, W)`` ~ N(0, I) to corrected initial latents (same device and dtype)."""
        if tuple(noise.shape[1:]) != self.shape:
            raise ValueError(f"noise must have shape (B, {', '.join(map(str, self.shape))}), got {tuple(noise.shape)}")
        p = self.log_scale
        x = noise.to(p.device, p.dtype)
        for layer in self.couplings:
            x = layer(x)
        return (x * torch.exp(self.log_scale) + self.shift).to(noise.device, noise.dtype)

    forward = correct

    def to_base(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse map (data → base) and ``log|det|`` of it, per sample."""
        u = (z - self.shift) * torch.exp(-self.log_scale)
        logdet = -self.log_scale.sum().expand(z.shape[0])
        for layer in reversed(self.couplings):
            u, ld = layer.inverse(u)
            logdet = logdet + ld
        return u, logdet

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Exact log density of ``z`` (nats, per sample)."""
        u, logdet = self.to_base(z)
        d = u[0].numel()
        return -0.5 * u.flatten(1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` corrected initial latents; the base noise is drawn on CPU float32 (deterministic given ``generator``)."""
        validate.integer("n", n, 1)
        noise = torch.randn((n, *self.shape), generator=generator, dtype=torch.float32)
        return self.correct(noise.to(self.log_scale.device)).float()

    def flops_per_sample(self) -> float:
        """FLOPs of :meth:`correct` for one sample, by ``torch.utils.flop_counter.FlopCounterMode`` (convs; element-wise ops are not counted)."""
        from torch.utils.flop_counter import FlopCounterMode

        p = self.log_scale
        x = torch.zeros((1, *self.shape), device=p.device, dtype=p.dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.correct(x)
        return float(counter.get_total_flops())

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors.tmp"))
        (folder / "model.safetensors.tmp").replace(folder / "model.safetensors")
        tmp = folder / "config.json.tmp"
        tmp.write_text(json.dumps({"class": type(self).__name__, **asdict(self.config)}, indent=1))
        tmp.replace(folder / "config.json")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "NoiseCorrector":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"{folder} is not a NoiseCorrector folder (needs config.json and model.safetensors from save_pretrained)")
        cfg = json.loads((folder / "config.json").read_text())
        cfg.pop("class", None)
        model = cls(CorrectorConfig(**cfg))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model.to(device).eval()


# ----------------------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    steps: int = 1500
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    save_every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch", "save_every"):
            validate.integer(name, getattr(self, name), 1)
        for name in ("lr", "weight_decay", "grad_clip"):
            validate.real(name, getattr(self, name), 0.0)
        validate.real("val_fraction", self.val_fraction, 0.0, 0.5)


def _nll_per_dim(model: NoiseCorrector, z: torch.Tensor) -> torch.Tensor:
    return -model.log_prob(z).mean() / z[0].numel()


def standard_normal_nll(z: torch.Tensor) -> float:
    """NLL per dimension (nats) of ``z`` under N(0, I): what the identity corrector scores."""
    return float(0.5 * z.pow(2).mean() + 0.5 * math.log(2 * math.pi))


def plot_loss(log: list[dict], path: Path, identity: float | None = None) -> None:
    """Training (and validation) NLL per step → PNG (skipped when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=0.8, label="train NLL")
    val = [r for r in log if "val" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val"] for r in val], "o-", ms=3, label="val NLL")
    if identity is not None:
        ax.axhline(identity, color="gray", ls="--", lw=0.8, label="N(0, I) (identity)")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL per dim (nats)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def train_corrector(noise: torch.Tensor, out: str | Path, cfg: TrainConfig | None = None, model_cfg: CorrectorConfig | None = None,
                    device: str = "cpu", stop_after: int | None = None, progress: bool = True) -> NoiseCorrector | None:
    """Fit a :class:`NoiseCorrector` to inverted noise ``(N, C, H, W)`` by maximum likelihood (Adam).

    Writes ``out/checkpoint.pt`` (atomic, every ``save_every`` steps and at the end), ``out/log.json``
    (train NLL per step, validation NLL at each save), ``out/loss.png`` and ``out/final``. Calling again
    with the same arguments resumes from the checkpoint, with the same result as an uninterrupted run.
    ``stop_after``: stop (after saving) at that step and return ``None`` — to test resuming.
    """
    from tqdm.auto import tqdm

    cfg = cfg or TrainConfig()
    out = Path(out)
    if not torch.is_tensor(noise) or noise.ndim != 4 or len(noise) < 2:
        raise ValueError(f"noise must be a tensor (N >= 2, C, H, W), got {tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__}")
    c, h, w = noise.shape[1:]
    model_cfg = model_cfg or CorrectorConfig(channels=c, height=h, width=w)
    if (model_cfg.channels, model_cfg.height, model_cfg.width) != (c, h, w):
        raise ValueError(f"the corrector's shape {(model_cfg.channels, model_cfg.height, model_cfg.width)} differs from the noise's {(c, h, w)}")
    out.mkdir(parents=True, exist_ok=True)
    noise = noise.float()
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(noise), generator=gen)
    n_val = int(len(noise) * cfg.val_fraction)
    val, train = noise[perm[:n_val]].to(device), noise[perm[n_val:]].to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = NoiseCorrector(model_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"train": asdict(cfg), "model": asdict(model_cfg), "n": len(noise), "data": float(noise.double().sum())}
    step, log, elapsed = 0, [], 0.0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["meta"] != meta:
            raise ValueError(f"{ckpt} belongs to another run ({state['meta']}); use another --out or delete it")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, log, elapsed = state["step"], state["log"], state["elapsed"]
    identity = standard_normal_nll(train)

    def save():
        _save_ckpt(ckpt, model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), step=step, log=log,
                   elapsed=elapsed, meta=meta)
        tmp = out / "log.json.tmp"
        tmp.write_text(json.dumps({"meta": meta, "identity_nll": identity, "log": log}))
        tmp.replace(out / "log.json")
        plot_loss(log, out / "loss.png", identity)

    bar = tqdm(total=cfg.steps, initial=step, desc="noise corrector", disable=not progress)
    t0 = time.time() - elapsed
    model.train()
    while step < cfg.steps:
        idx = torch.randint(len(train), (min(cfg.batch, len(train)),), generator=gen)
        loss = _nll_per_dim(model, train[idx.to(train.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        row = {"step": step, "loss": loss.item()}
        bar.update(1)
        bar.set_postfix(nll=f"{row['loss']:.4f}")
        if step % cfg.save_every == 0 or step == cfg.steps or step == stop_after:
            if n_val:
                with torch.no_grad():
                    row["val"] = float(_nll_per_dim(model, val))
            log.append(row)
            elapsed = time.time() - t0
            save()
            if step == stop_after and step < cfg.steps:
                bar.close()
                return None
        else:
            log.append(row)
    bar.close()
    if not log or log[-1]["step"] != step or not (out / "log.json").exists():
        save()
    model.eval()
    model.save_pretrained(out / "final")
    return model


# ----------------------------------------------------------------------------------------- CLI


def shapes_scenes(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Rendered shapes-world scenes and their captions (:func:`steer.shapes.dataset.make_dataset`)."""
    from ..shapes.dataset import make_dataset

    data = make_dataset(n, seed)
    return data["images"], data["prompts"]


def load_scenes(path: Path) -> tuple[np.ndarray, list[str]]:
    """An ``.npz`` with ``images`` (uint8 N×H×W×3) and ``prompts`` (N strings)."""
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file")
    z = np.load(path, allow_pickle=False)
    if "images" not in z or "prompts" not in z:
        raise ValueError(f"{path} must hold arrays 'images' (uint8 N×H×W×3) and 'prompts' (N strings)")
    return z["images"], [str(p) for p in z["prompts"]]


def run(a: argparse.Namespace) -> NoiseCorrector | None:
    from .noise_aware import load_model

    pipe = load_model(a.model, a.device)
    flow_adapter(pipe)  # refuse non-flow pipelines before any work
    if a.data is not None:
        images, prompts = load_scenes(a.data)
    elif a.model == "shapes-flow":
        images, prompts = shapes_scenes(validate.integer("num_scenes", a.num_scenes, 2), a.scene_seed)
    else:
        raise ValueError("give --data scenes.npz (images + captions) for a model other than shapes-flow")
    noise = invert_dataset(pipe, images, prompts, a.out, a.invert_steps, a.guidance, a.refine, a.batch, progress=not a.no_progress)
    cfg = TrainConfig(steps=a.steps, batch=a.train_batch, lr=a.lr, save_every=a.save_every, seed=a.seed)
    mcfg = CorrectorConfig(channels=noise.shape[1], height=noise.shape[2], width=noise.shape[3], layers=a.layers, hidden=a.hidden)
    return train_corrector(noise, a.out, cfg, mcfg, device=a.device, progress=not a.no_progress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m steer.train.noise_correction", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-flow", help="shapes-flow, or a flow-matching diffusers pipeline folder / hub id")
    p.add_argument("--data", type=Path, help="scenes .npz (images uint8 N×H×W×3, prompts); default for shapes-flow: rendered scenes")
    p.add_argument("--num-scenes", type=int, default=2000, help="rendered shapes scenes to invert")
    p.add_argument("--scene-seed", type=int, default=1, help="seed of the rendered scenes (keep it apart from evaluation seeds)")
    p.add_argument("--invert-steps", type=int, default=25, help="steps of the reverse ODE")
    p.add_argument("--refine", type=int, default=1, help="fixed-point iterations per inverse step (exact Euler inverse)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance of the inverted ODE (1 = conditional only)")
    p.add_argument("--batch", type=int, default=64, help="images per inversion batch")
    p.add_argument("--steps", type=int, default=1500, help="training steps of the corrector")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> None:
    a = build_parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = run(a)
    if model is not None:
        log = json.loads((a.out / "log.json").read_text())
        last = [r for r in log["log"] if "val" in r]
        print(f"saved {a.out / 'final'}: val NLL {last[-1]['val'] if last else float('nan'):.4f} nats/dim "
              f"(N(0, I): {log['identity_nll']:.4f}); {model.flops_per_sample() / 1e6:.1f} MFLOPs per sample")


if __name__ == "__main__":
    main()
