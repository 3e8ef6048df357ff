"""What the demo does, apart from the page: models from a fixed list, method options from the method registry,
one steered run that reports its events, the exact evaluator's verdicts, and the plots of a trace."""

from __future__ import annotations

import ast
import inspect
import math
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

import steer
from steer.pipeline import ENGINE_OPTIONS, REWARD_OPTIONS
from steer.search import METHODS

#: the shipped shapes models (always offered); local folders join them with ``--allow``
SHAPES_MODELS = ("shapes-sd", "shapes-flow")
NO_REWARD = "(none)"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for."""

    max_particles: int = 32
    max_steps: int = 100
    max_size: int = 1024
    max_prompt_chars: int = 500
    max_nfe: int = 20000


# --------------------------------------------------------------------------------------------- methods


@dataclass
class OptionSpec:
    """One method option, read from the method class's ``__init__`` signature."""

    name: str
    kind: str  # "bool" | "int" | "float" | "reward" | "text"
    default: Any
    annotation: str

    def parse(self, value):
        """The widget's value as the option's value (``None`` where the widget says to keep the default)."""
        if self.kind == "bool":
            return bool(value)
        if self.kind == "reward":
            return None if value in (None, "", NO_REWARD) else str(value)
        if self.kind in ("int", "float"):
            if value is None or value == "":
                return self.default
            if self.kind == "int":
                if float(value) != int(float(value)):
                    raise ValueError(f"option {self.name} must be a whole number, got {value}")
                return int(float(value))
            return float(value)
        text = "" if value is None else str(value).strip()
        if text in ("", "None"):
            return None if self.default is None else self.default
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text  # a plain word: "max", "auto", "systematic"

    def widget_value(self):
        if self.kind == "reward":
            return self.default if isinstance(self.default, str) else NO_REWARD
        if self.kind == "text":
            return "" if self.default is None else (self.default if isinstance(self.default, str) else repr(self.default))
        return self.default


def _kind(name: str, param: inspect.Parameter) -> str:
    default, ann = param.default, str(param.annotation)
    if name in REWARD_OPTIONS or "Reward" in ann:
        return "reward"
    if isinstance(default, bool) or ann == "bool":
        return "bool"
    if default is None:  # "empty: default" needs a text box (an empty number box reads as 0)
        return "text"
    if ann in ("int", "int | None", "Optional[int]") or (type(default) is int and ann in ("", "int", str(inspect.Parameter.empty))):
        return "int"
    if ann in ("float", "float | None") or type(default) is float and ann in ("float", str(inspect.Parameter.empty)):
        return "float"
    return "text"


def method_options(name: str) -> list[OptionSpec]:
    """The options of method ``name`` (its class's ``__init__`` parameters, as ``steer.wrap`` reads them)."""
    out = []
    for pname, param in inspect.signature(METHODS[name].__init__).parameters.items():
        if pname in ("self", "options") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = None if param.default is inspect.Parameter.empty else param.default
        ann = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", str(param.annotation))
        out.append(OptionSpec(pname, _kind(pname, param), default, "" if param.annotation is inspect.Parameter.empty else ann))
    return out


def method_names() -> list[str]:
    """Every registered method name (aliases included), in registry order."""
    return list(METHODS)


def method_classes() -> dict[str, list[str]]:
    """Class name → the method names (aliases) that run it."""
    out: dict[str, list[str]] = {}
    for name, cls in METHODS.items():
        out.setdefault(cls.__name__, []).append(name)
    return out


def parse_options(method: str, values: dict[str, Any]) -> dict:
    """Widget values → method options, leaving out those equal to the signature's default."""
    specs = {s.name: s for s in method_options(method)}
    out = {}
    for key, value in values.items():
        if key not in specs:
            raise ValueError(f"unknown option {key!r} for method {method!r}; its options: {', '.join(specs) or 'none'}")
        spec = specs[key]
        parsed = spec.parse(value)
        if parsed != spec.default:
            out[key] = parsed
    return out


# ---------------------------------------------------------------------------------------------- models


class ModelStore:
    """Pipelines by name, loaded on first use and kept: the shapes models and the allow-listed folders only."""

    def __init__(self, allow: list[str] | tuple[str, ...] = (), device: str = "cpu"):
        self.device = device
        self.paths: dict[str, Path] = {}
        for raw in allow:
            path = Path(raw).expanduser().resolve()
            if not (path / "model_index.json").is_file():
                raise ValueError(f"--allow {raw}: not a diffusers pipeline folder (no model_index.json)")
            self.paths[str(path)] = path
        self._pipes: dict[str, Any] = {}
        self._rewards: dict[str, Any] = {}
        self._steered: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return [*SHAPES_MODELS, *self.paths]

    def is_shapes(self, name: str) -> bool:
        return name in SHAPES_MODELS

    def pipe(self, name: str):
        if name not in self.names:
            raise ValueError(f"unknown model {name!r}: choose one of {', '.join(self.names)}")
        with self._lock:
            if name not in self._pipes:
                if name == "shapes-sd":
                    from steer.shapes import load_pipeline as load
                elif name == "shapes-flow":
                    from steer.shapes import load_flow_pipeline as load
                else:
                    from diffusers import DiffusionPipeline

                    def load(path=self.paths[name]):
                        return DiffusionPipeline.from_pretrained(str(path))
                pipe = load()
                pipe.set_progress_bar_config(disable=True)
                self._pipes[name] = pipe.to(self.device)
            return self._pipes[name]

    def reward(self, name: str):
        from steer.rewards import available_rewards, get_reward

        if name not in available_rewards():
            raise ValueError(f"unknown reward {name!r}: choose one of {', '.join(available_rewards())}")
        with self._lock:
            if name not in self._rewards:
                self._rewards[name] = get_reward(name, device=self.device)
            return self._rewards[name]

    def steered(self, model: str, method: str, reward: str):
        """One :class:`steer.SteeredPipeline` per (model, method, reward), sharing the model's pipeline."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
        key = (model, method, reward)
        pipe, r = self.pipe(model), self.reward(reward)
        with self._lock:
            if key not in self._steered:
                self._steered[key] = steer.wrap(pipe, method=method, reward=r)
            return self._steered[key]


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class Request:
    prompt: str
    model: str = "shapes-sd"
    method: str = "smc"
    reward: str = "shapes_clip"
    particles: int = 4
    steps: int = 10
    guidance: float = 5.0
    seed: int = 0
    max_nfe: int | None = None
    size: int | None = None  # height = width; None: the model's default
    options: dict = field(default_factory=dict)  # method options, already parsed

    def check(self, store: ModelStore, limits: Limits) -> None:
        """Bounds and names; raises ``ValueError`` with a message for the page."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("type a prompt")
        if len(self.prompt) > limits.max_prompt_chars:
            raise ValueError(f"the prompt is {len(self.prompt)} characters long; the limit is {limits.max_prompt_chars}")
        if self.model not in store.names:
            raise ValueError(f"unknown model {self.model!r}: choose one of {', '.join(store.names)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        for name, value, hi in (("particles", self.particles, limits.max_particles), ("steps", self.steps, limits.max_steps)):
            if not isinstance(value, int) or not 1 <= value <= hi:
                raise ValueError(f"{name} must be a whole number from 1 to {hi}, got {value}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {self.seed}")
        if not (isinstance(self.guidance, (int, float)) and math.isfinite(self.guidance) and 0 <= self.guidance <= 50):
            raise ValueError(f"guidance must be between 0 and 50, got {self.guidance}")
        if self.max_nfe is not None and not (isinstance(self.max_nfe, int) and 1 <= self.max_nfe <= limits.max_nfe):
            raise ValueError(f"budget (max NFE) must be empty or a whole number from 1 to {limits.max_nfe}, got {self.max_nfe}")
        if self.size is not None and not (isinstance(self.size, int) and 8 <= self.size <= limits.max_size):
            raise ValueError(f"image size must be empty (the model's default) or from 8 to {limits.max_size}, got {self.size}")
        if self.model in SHAPES_MODELS and self.size not in (None, 32):
            raise ValueError("the shapes models make 32×32 images: leave the image size empty")
        bad = sorted(set(self.options) & set(ENGINE_OPTIONS))
        if bad:
            raise ValueError(f"{', '.join(bad)} are engine settings, not method options")


def to_uint8(images) -> list[np.ndarray]:
    """(B, 3, H, W) tensors in [0, 1] or (B, H, W, 3) arrays → uint8 arrays (H, W, 3)."""
    if isinstance(images, torch.Tensor):
        images = images.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [np.clip(np.round(np.asarray(im) * 255), 0, 255).astype(np.uint8) for im in images]


def thumbnail(image: np.ndarray, size: int = 128) -> Image.Image:
    """A small image scaled up with nearest neighbour (pixels stay sharp) or down to ``size``."""
    im = Image.fromarray(image)
    scale = size / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST if scale >= 1 else Image.LANCZOS)


def verdict(store: ModelStore, model: str, prompt: str, image: np.ndarray) -> dict | None:
    """The shapes world's exact evaluator on ``image`` (``None`` off the shapes models or for prompts outside its grammar)."""
    if not store.is_shapes(model):
        return None
    from steer.shapes import evaluate_image, parse_prompt

    try:
        record = parse_prompt(prompt)
    except ValueError as e:
        return {"correct": None, "reasons": [f"not a shapes-world prompt: {e}"]}
    v = evaluate_image(image, record)
    return {"correct": bool(v.correct), "tag": v.tag, "reasons": list(v.reasons)}


def verdict_text(v: dict | None) -> str:
    if v is None:
        return "no exact evaluator for this model"
    if v["correct"] is None:
        return "n/a (" + "; ".join(v["reasons"]) + ")"
    return "correct" if v["correct"] else "wrong: " + "; ".join(v["reasons"])


def run(store: ModelStore, req: Request, callback: Callable[[dict], None] | None = None, **extra):
    """One steered call with every particle returned; ``extra`` are engine options (e.g. ``eta``)."""
    steered = store.steered(req.model, req.method, getattr(req, "reward"))
    kwargs = dict(num_inference_steps=req.steps, guidance_scale=req.guidance, num_particles=req.particles, return_all=True,
                  generator=torch.Generator().manual_seed(req.seed), output_type="np", callback=callback, **req.options, **extra)
    if req.max_nfe is not None:
        kwargs["max_nfe"] = req.max_nfe
    if req.size is not None:
        kwargs["height"] = kwargs["width"] = req.size
    return steered(req.prompt, **kwargs)


def run_events(store: ModelStore, req: Request, **extra) -> Iterator[tuple[str, Any]]:
    """:func:`run` in a worker thread: yields ``("event", dict)`` as the search goes, then ``("done", output)``
    (or re-raises the run's error)."""
    q: queue.Queue = queue.Queue()
    result: dict = {}

    def work():
        try:
            result["out"] = run(store, req, callback=lambda e: q.put(("event", e)), **extra)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e
        finally:
            q.put(("end", None))

    threading.Thread(target=work, daemon=True, name="steer-run").start()
    while True:
        kind, item = q.get()
        if kind == "end":
            break
        yield kind, item
    if "error" in result:
        raise result["error"]
    yield "done", result["out"]


def summarize(store: ModelStore, req: Request, out) -> dict:
    """Final particles (rewards, verdicts, which was selected) and the compute spent, as plain data."""
    trace = out.trace
    images = to_uint8(out.images)
    n = req.particles
    selected = trace.selected[0] if trace.selected else 0
    rows = []
    for k in range(n):
        r = out.rewards[k]
        if not math.isfinite(r):  # pruned before the end
            continue
        v = verdict(store, req.model, req.prompt, images[k])
        rows.append({"particle": k, "reward": round(float(r), 4), "selected": k == selected, "verdict": v})
    return {
        "particles": rows,
        "selected": selected,
        "compute": {"nfe": trace.nfe, "reward_calls": trace.reward_calls, "verifier_calls": trace.verifier_calls,
                    "seconds": trace.seconds, "nfe_saved": trace.nfe_saved},
    }


# ----------------------------------------------------------------------------------------------- plots


def _first_prompt(value):
    """A per-prompt trace value for the (only) prompt."""
    if isinstance(value, list) and value and isinstance(value[0], (list, type(None))):
        return value[0]
    return None


def lineage(trace) -> list[tuple[int, list[int]]]:
    """(step, parent slot of each slot after the step) per trace row that moved or kept particles."""
    out = []
    for row in trace.steps:
        rewards = _first_prompt(row.get("rewards"))
        if rewards is None:
            continue
        anc = _first_prompt(row.get("ancestors")) if "ancestors" in row else None
        if anc is None and "kept" in row:
            anc = _first_prompt(row["kept"])
        out.append((int(row.get("step", len(out) + 1)), list(anc) if anc is not None else list(range(len(rewards)))))
    return out


def plot_trace(trace, final_rewards: list[float]):
    """A matplotlib figure: rewards per step (each particle, and the final ones), ESS per step, and the lineage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    steps, rewards, ess_steps, ess = [], [], [], []
    for row in trace.steps:
        r = _first_prompt(row.get("rewards"))
        if r is not None:
            steps.append(row.get("step", len(steps) + 1))
            rewards.append([x for x in r if x is not None and math.isfinite(x)])
        e = row.get("ess")
        if isinstance(e, list) and e:
            ess_steps.append(row.get("step"))
            ess.append(e[0])
    ax = axes[0]
    for s, rs in zip(steps, rewards):
        ax.scatter([s] * len(rs), rs, s=12, color="tab:blue", alpha=0.6)
    if rewards:
        ax.plot(steps, [max(r) if r else float("nan") for r in rewards], color="tab:blue", label="best particle")
        ax.plot(steps, [float(np.mean(r)) if r else float("nan") for r in rewards], color="tab:blue", ls="--", label="mean")
    fin = [x for x in final_rewards if math.isfinite(x)]
    if fin:
        ax.scatter([trace.num_steps] * len(fin), fin, s=24, color="tab:red", marker="*", label="final")
    ax.set(title="reward of x̂₀ per step", xlabel="step", ylabel="reward")
    ax.legend(fontsize=7)
    ax = axes[1]
    if ess:
        ax.plot(ess_steps, ess, marker="o")
        ax.axhline(trace.num_particles, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, trace.num_particles * 1.05)
    else:
        ax.text(0.5, 0.5, "this method has no weights (no ESS)", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="effective sample size", xlabel="step", ylabel="ESS")
    ax = axes[2]
    rows = lineage(trace)
    prev_step, width = 0, trace.num_particles
    for k in range(width):
        ax.scatter([0], [k], s=10, color="k")
    for step, parents in rows:
        for child, parent in enumerate(parents):
            ax.plot([prev_step, step], [parent, child], color="tab:green", lw=1)
        ax.scatter([step] * len(parents), range(len(parents)), s=10, color="k")
        prev_step = step
    if rows:
        last = len(rows[-1][1])
        for k in range(last):
            ax.plot([prev_step, trace.num_steps], [k, k], color="tab:green", lw=1)
    ax.set(title="lineage (slot ← parent slot)", xlabel="step", ylabel="particle")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
