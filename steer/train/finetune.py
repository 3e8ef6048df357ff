"""What the fine-tuning trainers share: LoRA on the denoiser, the forward process, segment gating,
saving a result a stock pipeline loads, and the run's checkpoint, log and plots.

* :func:`add_lora` puts a ``peft`` LoRA on the pipeline's UNet / transformer (diffusers'
  ``add_adapter``), refusing a rank larger than a targeted layer.
* :class:`ForwardProcess` is ``x_t = a(t)·x₀ + s(t)·ε`` for the denoiser's own timestep ``t``
  (VP diffusion: ``a = √ᾱ_t``, ``s = √(1-ᾱ_t)``; rectified flow: ``a = 1-σ``, ``s = σ``,
  ``t = 1000·σ``), and turns the denoiser's native output (ε, v or x₀; flow velocity) into ε̂.
* :class:`SegmentGate` switches the LoRA on only while the denoiser is called at a timestep
  above a threshold (P-GRAFT's high-noise segment): a forward pre-hook on the denoiser, so the
  stock pipeline call and steer's adapters both honour it.
* :func:`save_result` / :func:`load_result`: the LoRA in diffusers' format
  (``pipe.load_lora_weights(folder)`` loads it into a stock pipeline) plus ``steer_finetune.json``
  (method, gate threshold, training compute); :func:`load_result` also installs the gate.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from .shapes_t2i import _save_ckpt

#: LoRA target modules by name: attention projections and feed-forward layers (UNet and SD3/FLUX transformers)
LORA_TARGETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "attn_ff": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj", "ff.net.2",
                "ff_context.net.0.proj", "ff_context.net.2", "proj_in", "proj_out"],
}
RESULT_FILE = "steer_finetune.json"
FLOW_FAMILIES = ("sd3", "flux")


def denoiser_attr(pipe) -> str:
    """``"unet"`` or ``"transformer"``: the pipeline component that denoises."""
    if getattr(pipe, "unet", None) is not None:
        return "unet"
    if getattr(pipe, "transformer", None) is not None:
        return "transformer"
    raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer to fine-tune")


# ----------------------------------------------------------------------------------------- LoRA


def _targets(denoiser: torch.nn.Module, targets: str | Sequence[str]) -> list[str]:
    names = LORA_TARGETS[targets] if isinstance(targets, str) and targets in LORA_TARGETS else ([targets] if isinstance(targets, str) else list(targets))
    present = [n for n in names if any(m.endswith("." + n) or m == n for m, _ in denoiser.named_modules())]
    if not present:
        raise ValueError(f"LoRA targets {names} match no module of {type(denoiser).__name__}; pass module names it has, or one of {sorted(LORA_TARGETS)}")
    return present


def check_lora_rank(denoiser: torch.nn.Module, rank: int, targets: str | Sequence[str] = "attn_ff") -> list[str]:
    """Target module names; raises if ``rank`` exceeds a targeted layer's smaller dimension."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    names = _targets(denoiser, targets)
    for full, m in denoiser.named_modules():
        if not any(full.endswith("." + n) or full == n for n in names):
            continue
        if isinstance(m, torch.nn.Linear):
            dims = (m.in_features, m.out_features)
        elif isinstance(m, torch.nn.Conv2d):
            dims = (m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels)
        else:
            continue
        if rank > min(dims):
            raise ValueError(f"LoRA rank {rank} is larger than layer {full!r} ({dims[0]} → {dims[1]}): a rank above "
                             f"{min(dims)} adds nothing there; use --rank {min(dims)} or less")
    return names


def add_lora(denoiser: torch.nn.Module, rank: int = 8, alpha: float | None = None, targets: str | Sequence[str] = "attn_ff",
             adapter_name: str = "default", seed: int = 0) -> list[torch.nn.Parameter]:
    """Freeze ``denoiser`` and add a LoRA (peft, diffusers' ``add_adapter``); returns its trainable parameters.

    ``alpha`` defaults to ``rank`` (scale 1). The LoRA's up-projections start at zero, so the model is
    unchanged at first; the down-projections' random init is drawn from ``seed`` (runs are repeatable).
    """
    from peft import LoraConfig

    names = check_lora_rank(denoiser, rank, targets)
    denoiser.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=names, init_lora_weights="gaussian"), adapter_name)
    params = [p for n, p in denoiser.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights in peft's naming (what ``save_lora_weights`` stores)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(denoiser).items()}


def set_lora_state(denoiser: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    res = set_peft_model_state_dict(denoiser, state)
    unexpected = getattr(res, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA state does not fit this model: unexpected keys {unexpected[:3]}...")


# ----------------------------------------------------------------------------------------- forward process


class ForwardProcess:
    """``x_t = a(t)·x₀ + s(t)·ε`` in the denoiser's timestep units, and ε̂ from its output."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.flow = adapter.family in FLOW_FAMILIES
        pipe = adapter.pipe
        if self.flow:
            self.t_max = 1000.0
        else:
            sched = pipe.scheduler
            if not hasattr(sched, "alphas_cumprod"):
                raise ValueError(f"{type(sched).__name__} has no alphas_cumprod: fine-tuning needs a VP (DDPM-family) scheduler")
            self.alphas_cumprod = sched.alphas_cumprod.double().cpu()
            self.t_max = float(len(self.alphas_cumprod) - 1)
            self.prediction_type = sched.config.get("prediction_type", "epsilon")

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, s)`` per row (float64 CPU tensors); ``t < 0`` is the clean end (a = 1, s = 0)."""
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        if self.flow:
            sigma = (t / 1000.0).clamp(0, 1)
            return 1 - sigma, sigma
        ac = torch.where(t < 0, torch.ones_like(t), self.alphas_cumprod[t.clamp(min=0).round().long()])
        return ac.sqrt(), (1 - ac).sqrt()

    def timestep_at(self, i: int) -> float:
        """The denoiser timestep of schedule position ``i`` of the adapter's current schedule (−1 for the clean end)."""
        ad = self.adapter
        if i >= ad.num_steps:
            return -1.0
        if self.flow:
            return float(ad.noise_level(i)) * 1000.0
        return float(ad._t[i])

    def sample_t(self, n: int, t_low: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` training timesteps uniform in ``(t_low, t_max]`` (integers for VP schedules)."""
        if t_low >= self.t_max:
            raise ValueError(f"no training timesteps above {t_low} (the schedule ends at {self.t_max})")
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        if self.flow:  # σ in (max(σ_low, 0), 1]: σ = 0 is the clean end, where ε is not identifiable
            lo = max(t_low, 0.0)
            return lo + (self.t_max - lo) * (1 - u)
        lo = int(math.floor(t_low)) + 1
        return (lo + (u * (self.t_max - lo + 1)).floor()).clamp(max=self.t_max)

    def eps_hat(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ from the denoiser's native output ``out`` at ``x_t``."""
        a, s = (c.to(x.device, x.dtype).view(-1, *[1] * (x.ndim - 1)) for c in self.coefficients(t))
        if self.flow:  # v = ε − x₀  →  ε = x + (1 − σ)·v
            return x + a * out
        if self.prediction_type == "epsilon":
            return out
        if self.prediction_type == "v_prediction":
            return s * x + a * out
        if self.prediction_type == "sample":
            return (x - a * out) / s.clamp(min=1e-8)
        raise ValueError(f"prediction_type {self.prediction_type!r} is not supported")

    def predict_eps(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """ε̂ of the (conditional) denoiser at per-row timesteps ``t`` (differentiable; ``cond`` without CFG)."""
        ad = self.adapter
        saved = ad._t
        ad._t = [t.to(ad.device, torch.float32)]
        try:
            out = ad.predict(x, 0, cond)
        finally:
            ad._t = saved
        return self.eps_hat(out.to(x.dtype), x, t)


def shaped_denoising_loss(process: ForwardProcess, cond, x_i: torch.Tensor, t_i: float, generator: torch.Generator | None = None,
                          t: torch.Tensor | None = None) -> torch.Tensor:
    """Denoising loss whose minimiser's score is that of the data ``x_i`` (states at timestep ``t_i``) pushed forward to ``t > t_i``.

    With ``x_t = r·x_i + q·ε`` (``r = a_t/a_i``, ``q² = s_t² − r²·s_i²``, exact for both VP and flow
    paths), the denoising-score-matching target for ε̂ is ``s_t·ε/q``; the loss
    ``‖(q/s_t)·ε̂ − ε‖²`` is that regression weighted to stay bounded as ``t → t_i``. At
    ``t_i = −1`` (clean data: GRAFT) it is the usual ε-loss.
    """
    n = x_i.shape[0]
    if t is None:
        t = process.sample_t(n, t_i, generator)
    a_t, s_t = process.coefficients(t)
    a_i, s_i = process.coefficients(torch.full((n,), float(t_i), dtype=torch.float64))
    r = a_t / a_i
    q = (s_t**2 - (r * s_i) ** 2).clamp(min=1e-12).sqrt()
    eps = torch.randn(x_i.shape, generator=generator, dtype=torch.float32).to(x_i.device, x_i.dtype)
    view = (-1, *[1] * (x_i.ndim - 1))
    x_t = r.to(x_i).view(view) * x_i + q.to(x_i).view(view) * eps
    eps_hat = process.predict_eps(x_t, t, cond)
    w = (q / s_t.clamp(min=1e-8)).to(x_i).view(view)
    return ((w * eps_hat.float() - eps) ** 2).mean()


# ----------------------------------------------------------------------------------------- segment gate


class SegmentGate:
    """Enable the denoiser's LoRA only at timesteps above ``t_switch`` (``None``: always on).

    A forward pre-hook reads the ``timestep`` argument; every row of one call must be on the same side.
    """

    def __init__(self, denoiser: torch.nn.Module, t_switch: float | None):
        self.denoiser, self.t_switch = denoiser, t_switch
        self.scale = 1000.0 if type(denoiser).__name__.startswith("Flux") else 1.0  # FLUX's transformer takes σ, not 1000·σ
        self._on = True
        self.handle = None if t_switch is None else denoiser.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is None:
            raise ValueError("SegmentGate: the denoiser was called without a timestep")
        above = torch.as_tensor(t).float().flatten() * self.scale > self.t_switch
        if bool(above.any()) != bool(above.all()):
            raise ValueError("SegmentGate: one denoiser call mixes timesteps above and below the switch; call the segments separately")
        on = bool(above.all())
        if on != self._on:
            (module.enable_adapters if on else module.disable_adapters)()
            self._on = on

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if not self._on:
            self.denoiser.enable_adapters()
            self._on = True


# ----------------------------------------------------------------------------------------- results


def save_result(pipe, folder: str | Path, meta: dict) -> Path:
    """The LoRA as diffusers' ``pytorch_lora_weights.safetensors`` (stock ``pipe.load_lora_weights(folder)``) + ``steer_finetune.json``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    attr = denoiser_attr(pipe)
    type(pipe).save_lora_weights(save_directory=str(tmp), **{f"{attr}_lora_layers": lora_state(getattr(pipe, attr))})
    (tmp / RESULT_FILE).write_text(json.dumps(meta, indent=2))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def read_result(folder: str | Path) -> dict:
    folder = Path(folder)
    f = folder / RESULT_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{folder}: no {RESULT_FILE}; not a steer fine-tuning result (train one with python -m steer.train.pgraft or steer.train.draft)")
    return json.loads(f.read_text())


def load_result(pipe, folder: str | Path, adapter_name: str = "steer"):
    """Load a fine-tuning result into a stock pipeline (``load_lora_weights``) and install its segment gate.

    Returns the pipeline (``pipe.steer_gate`` holds the gate; ``pipe.steer_finetune`` the metadata).
    """
    meta = read_result(folder)
    pipe.load_lora_weights(str(folder), adapter_name=adapter_name)
    denoiser = getattr(pipe, denoiser_attr(pipe))
    pipe.steer_gate = SegmentGate(denoiser, meta.get("t_switch"))
    pipe.steer_finetune = meta
    return pipe


# ----------------------------------------------------------------------------------------- run bookkeeping


@dataclass
class Compute:
    """Training compute: sampling NFE, training NFE (forward 1 + backward 2 per denoiser row-call), reward calls."""

    sampling_nfe: int = 0
    train_nfe: int = 0
    reward_calls: int = 0
    reward_grad_calls: int = 0
    seconds: float = 0.0

    @property
    def total_nfe(self) -> int:
        return self.sampling_nfe + self.train_nfe


class RunFiles:
    """A run folder: ``checkpoint.pt`` (atomic), ``log.json`` (one row per step), ``log.png``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt = self.out / "checkpoint.pt"

    def load(self) -> dict | None:
        return torch.load(self.ckpt, weights_only=False) if self.ckpt.is_file() else None

    def save(self, **state) -> None:
        _save_ckpt(self.ckpt, **state)

    def write_log(self, log: list[dict], keys: Sequence[str] = ("loss", "reward")) -> None:
        tmp = self.out / "log.json.tmp"
        tmp.write_text(json.dumps(log, indent=1))
        tmp.replace(self.out / "log.json")
        plot_log(log, self.out / "log.png", keys)


def plot_log(log: list[dict], path: Path, keys: Sequence[str] = ("loss", "reward")) -> None:
    """One panel per key present in the log, against the step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional (pip install steer-diffusion[bench])
        return
    keys = [k for k in keys if any(k in row for row in log)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        rows = [r for r in log if k in r]
        ax.plot([r["step"] for r in rows], [r[k] for r in rows], lw=1)
        ax.set_xlabel("step")
        ax.set_title(k)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


class Timer:
    def __init__(self, start: float = 0.0):
        self.start, self.t0 = start, time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.start + time.perf_counter() - self.t0


def result_meta(method: str, cfg, compute: Compute, *, reward, base_model: str, prompts: int, t_switch: float | None = None, **extra) -> dict:
    """``steer_finetune.json``'s contents: method, gate threshold, config and the training compute spent."""
    return {"method": method, "t_switch": t_switch, **extra, "num_inference_steps": cfg.num_inference_steps, "base_model": base_model,
            "reward": getattr(reward, "name", type(reward).__name__), "config": asdict(cfg),
            "compute": {**asdict(compute), "total_nfe": compute.total_nfe}, "prompts": prompts}


# ----------------------------------------------------------------------------------------- CLI


def add_common_arguments(p: argparse.ArgumentParser, reward_help: str) -> None:
    """The trainers' shared options: model, reward, prompt source, LoRA, seed, device, threads, output."""
    p.add_argument("--model", required=True, help="shapes-sd, shapes-flow, or a diffusers pipeline folder / hub id")
    p.add_argument("--reward", default="shapes_clip", help=reward_help)
    p.add_argument("--reward-kwargs", type=json.loads, default={})
    p.add_argument("--prompts", type=Path, help="GenEval-style JSONL of training prompts")
    p.add_argument("--prompt-set", type=int, help="or: make_prompt_set(seed=...) shapes prompts (never the eval seed)")
    p.add_argument("--per-task", type=int, default=32)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--targets", default="attn_ff", help="LoRA targets: attn, attn_ff, or comma-separated module names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")


def parse_targets(text: str) -> str | list[str]:
    """``--targets``: a named set of :data:`LORA_TARGETS` or comma-separated module names."""
    return text if text in LORA_TARGETS else text.split(",")
