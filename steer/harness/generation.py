"""Generate benchmark images with any diffusers pipeline × any steer method, one atomic file at a time.

A run is a list of :class:`Job` (one prompt, several image slots). Each slot has a fixed seed and fixed file
names, so a killed run resumes by skipping the slots whose record file exists (the record is written after
the image: it marks the slot done) and nothing is lost or written twice. Slots are generated in fixed chunks
of ``batch_size``, so a resumed run makes the same images as an unbroken one.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from . import files

SHAPES_MODELS = ("shapes-sd", "shapes-flow")


class HarnessError(ValueError):
    """Bad harness input (named problem and fix)."""


@dataclass
class GenerationSettings:
    """How images are made; stored in the run's ``run.json`` and checked when a run resumes.

    ``method="none"`` calls the unmodified pipeline (the benchmarks' reference numbers); any other name is a
    steer search method (``steer.search.METHODS``) run through :func:`steer.wrap` with ``reward``.
    ``max_nfe`` is a per-image budget. ``seed``: image ``k`` of every prompt uses seed ``seed + k`` (the benchmarks'
    protocol: repeated prompts then give identical images); with ``distinct_seeds`` image ``k`` of prompt ``i`` (its line
    in the prompt file) uses ``seed + i · images_per_prompt + k``.
    ``scheduler``: a diffusers scheduler class name (e.g. ``DDIMScheduler``) built from the pipeline's scheduler config.
    """

    model: str
    method: str = "none"
    reward: str | None = None
    particles: int = 4
    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None
    max_nfe: int | None = None
    options: dict = field(default_factory=dict)
    images_per_prompt: int = 4
    seed: int = 0
    batch_size: int = 1
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    dtype: str | None = None
    scheduler: str | None = None
    distinct_seeds: bool = False

    def __post_init__(self):
        from ..search import METHODS

        if self.method != "none" and self.method not in METHODS:
            raise HarnessError(f"unknown method {self.method!r}: use none (the plain pipeline) or one of {', '.join(METHODS)}")
        from .. import validate

        try:  # the engine's checks, as harness errors
            for name, lo in (("particles", 1), ("images_per_prompt", 1), ("batch_size", 1), ("seed", 0), ("steps", 1), ("max_nfe", 1),
                             ("height", 1), ("width", 1)):
                if getattr(self, name) is not None:
                    validate.integer(name, getattr(self, name), lo)
            for name, lo in (("guidance", None), ("eta", 0.0)):
                if getattr(self, name) is not None:
                    validate.real(name, getattr(self, name), lo)
        except (TypeError, ValueError) as e:
            raise HarnessError(str(e)) from None
        if self.method == "none" and (self.max_nfe is not None or self.eta is not None or self.options):
            raise HarnessError("--max-nfe, --eta and --option set a steer method's search; --method none (the plain pipeline) takes none of them")
        if self.method != "none" and self.reward is None:
            if self.model in SHAPES_MODELS:
                self.reward = "shapes_clip"
            else:
                raise HarnessError(f"method {self.method!r} searches with a reward: pass one (e.g. --reward imagereward); "
                                   "steer.rewards.available_rewards() lists them")
        if isinstance(self.reward, str):
            from ..rewards import available_rewards

            if self.reward.lower() not in available_rewards() and not self.reward.lower().startswith("noise_aware:"):
                raise HarnessError(f"unknown reward {self.reward!r}; known rewards: {', '.join(available_rewards())}, or noise_aware:PATH")
        if self.scheduler is not None:
            import diffusers

            cls = getattr(diffusers, self.scheduler, None)
            if not (isinstance(cls, type) and self.scheduler.endswith("Scheduler") and hasattr(cls, "from_config")):
                raise HarnessError(f"unknown scheduler {self.scheduler!r}: give a diffusers scheduler class name, e.g. DDIMScheduler, "
                                   "EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler")
        if self.dtype not in (None, "float32", "float16", "bfloat16"):
            raise HarnessError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")

    def seeds(self, prompt_index: int = 0) -> list[int]:
        first = self.seed + (prompt_index * self.images_per_prompt if self.distinct_seeds else 0)
        return [first + k for k in range(self.images_per_prompt)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["options"] = {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in self.options.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationSettings":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class Slot:
    """One image to make: its number within the prompt, seed and files (image, then record)."""

    index: int
    seed: int
    image: Path
    record: Path

    @property
    def done(self) -> bool:
        return self.record.is_file() and self.image.is_file()


@dataclass
class Job:
    """One prompt and its image slots; ``extra`` is copied into every image record (e.g. the GenEval tag)."""

    prompt: str
    slots: list[Slot]
    extra: dict = field(default_factory=dict)


@dataclass
class Shard:
    """This process's share of the jobs: job ``i`` belongs to shard ``i % count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not (isinstance(self.count, int) and self.count >= 1 and isinstance(self.index, int) and 0 <= self.index < self.count):
            raise HarnessError(f"shard {self.index}/{self.count}: need 0 <= index < count (e.g. --shard 0/4)")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            i, n = (int(t) for t in text.split("/"))
        except ValueError:
            raise HarnessError(f"--shard {text!r}: write INDEX/COUNT, e.g. 0/4") from None
        return cls(i, n)

    def owns(self, i: int) -> bool:
        return i % self.count == self.index

    def take(self, items: Sequence) -> list:
        return [x for i, x in enumerate(items) if self.owns(i)]


def load_pipeline(model: str, device: str | torch.device = "cpu", dtype: str | None = None, variant: str | None = None):
    """A diffusers pipeline: ``shapes-sd`` / ``shapes-flow``, a local pipeline folder, or a hub id (with weights cached)."""
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    try:
        from transformers.utils import logging as tlogging

        tlogging.disable_progress_bar()
    except ImportError:
        pass
    torch_dtype = None if dtype is None else getattr(torch, dtype)
    if model in SHAPES_MODELS:
        from ..shapes import load_flow_pipeline, load_pipeline as load_sd

        pipe = (load_sd if model == "shapes-sd" else load_flow_pipeline)()
        if torch_dtype is not None:
            pipe = pipe.to(dtype=torch_dtype)
    else:
        from diffusers import DiffusionPipeline

        path = Path(model).expanduser()
        if path.exists() and not (path / "model_index.json").is_file():
            raise HarnessError(f"--model {model}: the folder has no model_index.json; pass a diffusers pipeline folder, a hub id or shapes-sd/shapes-flow")
        kwargs = {k: v for k, v in (("torch_dtype", torch_dtype), ("variant", variant)) if v is not None}
        try:
            pipe = DiffusionPipeline.from_pretrained(str(path) if path.exists() else model, **kwargs)
        except (OSError, ValueError) as e:
            raise HarnessError(f"--model {model}: could not load a diffusers pipeline ({str(e).splitlines()[0]}); pass a local folder, or "
                               f"download it first (hf download {model}) on a machine with access to the hub") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _peak_memory_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


class ImageMaker:
    """Makes the images of one prompt for given seeds with the configured pipeline and method."""

    def __init__(self, settings: GenerationSettings, device: str | torch.device = "cpu", pipe=None):
        self.settings = settings
        self.device = torch.device(device)
        self.pipe = pipe if pipe is not None else load_pipeline(settings.model, self.device, settings.dtype)
        if settings.scheduler is not None:
            import diffusers

            self.pipe.scheduler = getattr(diffusers, settings.scheduler).from_config(self.pipe.scheduler.config)
        self.device_name = (f"{self.device} ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else str(self.device))
        self.reward = None
        if settings.method == "none":
            self.steered = None
            if settings.reward is not None:
                from ..pipeline import _resolve_reward

                self.reward = _resolve_reward(settings.reward, self.device)
        else:
            import steer

            self.steered = steer.wrap(self.pipe, method=settings.method, reward=settings.reward, **settings.options)

    def _common(self, prompt: str, seeds: Sequence[int]) -> dict:
        s = self.settings
        kwargs: dict[str, Any] = {"prompt": [prompt] * len(seeds), "generator": [torch.Generator().manual_seed(int(x)) for x in seeds]}
        for key, value in (("num_inference_steps", s.steps), ("guidance_scale", s.guidance), ("height", s.height), ("width", s.width),
                           ("negative_prompt", None if s.negative_prompt is None else [s.negative_prompt] * len(seeds))):
            if value is not None:
                kwargs[key] = value
        return kwargs

    def __call__(self, prompt: str, seeds: Sequence[int]) -> list[tuple[Any, dict]]:
        """``[(PIL image, compute record)]`` for each seed; compute of a batched call is split evenly over its images."""
        s, k = self.settings, len(seeds)
        kwargs = self._common(prompt, seeds)
        _peak_memory_start(self.device)
        t0 = time.perf_counter()
        if self.steered is None:
            images = self.pipe(**kwargs, output_type="pil").images
            steps = len(getattr(self.pipe.scheduler, "timesteps", [])) or s.steps or 0
            nfe, reward_calls, rewards, trace = steps * k, 0, [None] * k, None
            if self.reward is not None:
                import numpy as np

                x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images])).permute(0, 3, 1, 2)
                rewards = [float(r) for r in self.reward(x.to(self.device), [prompt] * k)]
                reward_calls = k
        else:
            engine = {"num_particles": s.particles}
            if s.max_nfe is not None:
                engine["max_nfe"] = s.max_nfe * k
            if s.eta is not None:
                engine["eta"] = s.eta
            out = self.steered(**kwargs, output_type="pil", **engine)
            images, rewards, trace = out.images, [float(r) for r in out.rewards], out.trace
            nfe, reward_calls = trace.nfe, trace.reward_calls + trace.verifier_calls
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        memory, memory_kind = _peak_memory(self.device)
        results = []
        for j, (image, seed) in enumerate(zip(images, seeds)):
            info = {
                "seed": int(seed), "reward": rewards[j], "nfe": nfe / k, "reward_calls": reward_calls / k, "seconds": round(seconds / k, 4),
                "peak_memory_mb": round(memory, 1), "memory_kind": memory_kind, "batch": k, "device": self.device_name,
            }
            if trace is not None:
                info["trace"] = {key: v for key, v in trace.to_dict().items() if key in ("nfe", "reward_calls", "verifier_calls", "backward_nfe",
                                                                                      "reward_grad_calls", "resamples", "ess", "seconds")}
            results.append((image, info))
        return results


def generate(jobs: Iterable[Job], maker: Callable[[str, Sequence[int]], list[tuple[Any, dict]]], batch_size: int = 1,
             progress: bool = True) -> dict:
    """Make every missing slot of ``jobs`` (atomic image, then atomic record); return counts ``{"made", "skipped"}``."""
    from tqdm.auto import tqdm

    jobs = list(jobs)
    for folder in {p.parent for j in jobs for s in j.slots for p in (s.image, s.record)}:
        for stale in folder.glob(".*.tmp") if folder.is_dir() else ():  # left by a killed write; never read
            stale.unlink(missing_ok=True)
    todo = sum(1 for j in jobs for s in j.slots if not s.done)
    made = skipped = 0
    with tqdm(total=todo, disable=not progress, desc="images", unit="img") as bar:
        for job in jobs:
            chunks: dict[int, list[Slot]] = {}
            for slot in job.slots:
                chunks.setdefault(slot.index // batch_size, []).append(slot)
            for chunk in chunks.values():
                if all(slot.done for slot in chunk):
                    skipped += len(chunk)
                    continue
                results = maker(job.prompt, [slot.seed for slot in chunk])
                for slot, (image, info) in zip(chunk, results):
                    files.save_image(slot.image, image)
                    record = {"prompt": job.prompt, "index": slot.index, "image": slot.image.name, **job.extra, **info}
                    files.write_json(slot.record, record)
                    made += 1
                    bar.update(1)
                    if "reward" in info and info["reward"] is not None:
                        bar.set_postfix(reward=f"{info['reward']:.3f}")
    return {"made": made, "skipped": skipped}


def make_missing(work: list[Job], settings: GenerationSettings, device: str | torch.device = "cpu", progress: bool = True,
                 maker=None) -> dict:
    """Generate the jobs' missing slots, loading the pipeline only when something is missing; counts and seconds."""
    if all(s.done for j in work for s in j.slots):
        return {"made": 0, "skipped": sum(len(j.slots) for j in work)}
    maker = maker or ImageMaker(settings, device)
    t0 = time.perf_counter()
    counts = generate(work, maker, settings.batch_size, progress)
    counts["seconds"] = round(time.perf_counter() - t0, 2)
    return counts


def read_run(out: Path) -> dict:
    """The run folder's ``run.json``; a named error when ``out`` is not a harness run folder."""
    run = files.read_json(Path(out) / "run.json")
    if run is None:
        raise HarnessError(f"{out} has no run.json: it is not a harness run folder (run `generate` or `run` into it first)")
    return run


def check_run_settings(out: Path, settings: GenerationSettings, what: str, selection: dict) -> None:
    """Write ``run.json`` or check that an existing one (a run being resumed) has the same settings and prompts."""
    path = out / "run.json"
    mine = {"benchmark": what, "settings": settings.to_dict(), "selection": selection}
    old = files.read_json(path)
    if old is not None:
        if old.get("benchmark") != what:
            raise HarnessError(f"{out} holds a {old.get('benchmark')} run, not {what}: choose another --out")
        try:  # settings added in later versions take their defaults
            old_settings = GenerationSettings.from_dict(old["settings"]).to_dict()
        except (HarnessError, TypeError, KeyError):
            old_settings = old["settings"]
        before = {**old_settings, **old.get("selection", {})}
        now = {**mine["settings"], **selection}
        diff = [k for k in set(before) | set(now) if before.get(k) != now.get(k)]
        if diff:
            details = ", ".join(f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in sorted(diff))
            raise HarnessError(f"{out} holds a run with other settings ({details}): resume with the same settings, "
                               "or choose another --out (or delete this folder to start over)")
        return
    from .. import __version__

    import diffusers

    mine.update({"steer": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__})
    files.write_json(path, mine)

