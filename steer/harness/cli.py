"""``python -m steer.harness`` (also ``steer geneval`` / ``steer compbench``): benchmark runs, sharded and resumable.

    python -m steer.harness geneval run --metadata geneval/prompts/evaluation_metadata.jsonl \\
        --model stabilityai/stable-diffusion-2-1-base --method none --steps 50 --guidance 9 --out runs/sd21_plain
    python -m steer.harness geneval run --metadata shapes --model shapes-sd --method smc --particles 4 --out runs/shapes_smc
    accelerate launch --num_processes 8 -m steer.harness geneval run ...        (prompts sharded over 8 GPUs)
    python -m steer.harness compbench run --prompts-dir T2I-CompBench/examples/dataset --categories color,spatial --model ... --out ...
    python -m steer.harness report runs/sd21_plain runs/sd21_smc --out results/geneval_sd21

``run`` = ``generate`` + ``evaluate`` + ``summary``. A killed run resumes where it stopped when started again with
the same command (images and scores are written one atomic file each; a different setting is refused).
"""

from __future__ import annotations

import argparse
import ast
import gc
import os
import sys
from pathlib import Path

from . import compbench, files, geneval
from .generation import SHAPES_MODELS, GenerationSettings, HarnessError, Shard, read_run

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise HarnessError(f"{self.prog}: {message} (see {self.prog} --help)")


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise HarnessError(f"--option {text!r}: write KEY=VALUE, e.g. --option lam=0.1")
    key, raw = (t.strip() for t in text.split("=", 1))
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def _generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--model", help="shapes-sd, shapes-flow, a local diffusers pipeline folder or a hub id (weights cached or downloadable)")
    g.add_argument("--method", default="none", help="none (the plain pipeline) or a steer method: best_of_n, smc, fleming_viot, prune, dts, reno, ...")
    g.add_argument("--reward", help="reward the method optimises (steer.rewards.available_rewards(); shapes models default to shapes_clip)")
    g.add_argument("--particles", type=int, default=4, help="particles (candidates) per image")
    g.add_argument("--steps", type=int, help="sampling steps (default: the pipeline's)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    g.add_argument("--eta", type=float, help="sampler noise for steer methods (default: the engine's)")
    g.add_argument("--max-nfe", type=int, help="budget: denoiser evaluations per image")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a method option (repeatable), e.g. potential=max")
    g.add_argument("--images-per-prompt", type=int, help="images per prompt (GenEval 4, T2I-CompBench 10)")
    g.add_argument("--seed", type=int, default=0, help="image k of every prompt uses seed SEED + k")
    g.add_argument("--distinct-seeds", action="store_true",
                   help="image k of prompt i (its line) uses seed SEED + i·images_per_prompt + k, so repeated prompts get fresh images")
    g.add_argument("--batch-size", type=int, default=1, help="images of one prompt made in one call (fixed chunks, so resumed runs match)")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--negative-prompt")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--scheduler", help="replace the pipeline's scheduler by this diffusers class, built from its config (e.g. DDIMScheduler)")


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="run folder (created, or resumed when it exists)")
    p.add_argument("--device", help="torch device (default: this process's accelerate device: cuda:N under accelerate launch, else cuda/cpu)")
    p.add_argument("--shard", help="INDEX/COUNT: do only this share of the prompts (set automatically under accelerate launch)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _geneval_eval_args(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("evaluation")
    e.add_argument("--evaluator", help="shapes (the exact shapes-world evaluator) or mask2former (default; shapes for the shapes models)")
    e.add_argument("--detector", default=DEFAULT_DETECTOR, help="Mask2Former COCO-instance checkpoint: hub id or folder")
    e.add_argument("--clip", default="ViT-L-14", help="open_clip model for colour classification (name, hf-hub:, or folder)")
    e.add_argument("--clip-pretrained", default="openai", help="open_clip pretrained tag ('' for a folder)")
    e.add_argument("--eval-batch", type=int, default=8)


def _compbench_eval_args(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("evaluation")
    e.add_argument("--blip", default="Salesforce/blip-vqa-base", help="BLIP-VQA checkpoint (hub id or folder) for color/shape/texture/complex")
    e.add_argument("--clip", default="ViT-B-32", help="open_clip model for the CLIP score (non_spatial, complex)")
    e.add_argument("--clip-pretrained", default="openai")
    e.add_argument("--detector", default=DEFAULT_DETECTOR, help="Mask2Former COCO-instance checkpoint for the spatial score (replaces UniDet)")
    e.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy pipeline (package or folder) splitting prompts into noun phrases")
    e.add_argument("--evaluator-name", default="compbench", help="name of the score files and the summary")
    e.add_argument("--eval-batch", type=int, default=8)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="steer" if Path(sys.argv[0]).name == "steer" else "python -m steer.harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", parser_class=_Parser)
    for bench in ("geneval", "compbench"):
        b = sub.add_parser(bench, help=f"{'GenEval' if bench == 'geneval' else 'T2I-CompBench'}: generate, evaluate, run (both), summary")
        steps = b.add_subparsers(dest="step", metavar="STEP", parser_class=_Parser)
        for step, text in (("generate", "make this shard's missing images (creates or resumes --out)"),
                           ("evaluate", "score this shard's images that have no score yet"),
                           ("run", "generate, evaluate, then write the summary"),
                           ("summary", "merge every shard's scores into results/<evaluator>.json and .md")):
            s = steps.add_parser(step, help=text, description=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
            _common_args(s)
            if step in ("generate", "run"):
                if bench == "geneval":
                    s.add_argument("--metadata", required=True, help="GenEval's evaluation_metadata.jsonl (your copy), or 'shapes' for the shapes-world prompts")
                    s.add_argument("--per-task", type=int, help="only the first N prompts of each task")
                    s.add_argument("--tasks", help="comma-separated tasks (default: all six)")
                else:
                    s.add_argument("--prompts-dir", required=True, help="folder with T2I-CompBench's {category}_val.txt files (your copy)")
                    s.add_argument("--categories", default="color,shape,texture,spatial,non_spatial,complex", help="comma-separated categories")
                    s.add_argument("--limit", type=int, help="only the first N prompts of each category")
                _generation_args(s)
            if step in ("evaluate", "run", "summary"):
                (_geneval_eval_args if bench == "geneval" else _compbench_eval_args)(s)
    r = sub.add_parser("report", help="one table (Markdown + JSON) and reward/score-vs-NFE plot for several runs")
    r.add_argument("runs", nargs="+", type=Path, help="run folders (each with results/<evaluator>.json from `summary` or `run`)")
    r.add_argument("--evaluator", help="which results/<evaluator>.json to use when a run has several")
    r.add_argument("--out", type=Path, required=True)
    return p


def _settings(a, benchmark: str) -> GenerationSettings:
    options = dict(_option(o) for o in a.option)
    per_prompt = a.images_per_prompt if a.images_per_prompt is not None else (4 if benchmark == "geneval" else 10)
    if a.model is None:
        raise HarnessError("--model is required: shapes-sd, shapes-flow, a diffusers pipeline folder or a hub id")
    settings = GenerationSettings(
        model=a.model, method=a.method, reward=a.reward, particles=a.particles, steps=a.steps, guidance=a.guidance, eta=a.eta, max_nfe=a.max_nfe,
        options=options, images_per_prompt=per_prompt, seed=a.seed, batch_size=a.batch_size, height=a.height, width=a.width,
        negative_prompt=a.negative_prompt, dtype=a.dtype, scheduler=a.scheduler, distinct_seeds=a.distinct_seeds,
    )
    if settings.method != "none":
        from ..pipeline import REWARD_OPTIONS
        from ..search import get_method

        try:  # bad option names or values fail before any model loads
            get_method(settings.method, **{k: v for k, v in options.items() if k not in REWARD_OPTIONS})
        except (ValueError, TypeError) as e:
            raise HarnessError(f"--option: {e}") from None
    return settings


class _Dist:
    """This process's place among ``accelerate launch`` processes (one process when not launched)."""

    def __init__(self, a):
        import torch

        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch / torchrun
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())  # gloo process group on CPU-only machines
        if a.shard:
            if self.state is not None and self.state.num_processes > 1:
                raise HarnessError("--shard and accelerate launch both split the prompts: use one of them")
            self.shard = Shard.parse(a.shard)
        elif self.state is not None:
            self.shard = Shard(self.state.process_index, self.state.num_processes)
        else:
            self.shard = Shard()
        if a.device:
            self.device = a.device
        elif self.state is not None:
            self.device = str(self.state.device)
        else:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def main(self) -> bool:
        return self.state is None or self.state.is_main_process

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def _evaluator_name(a, run: dict) -> str:
    """The evaluator whose scores a step writes or reads: --evaluator (GenEval; shapes for the shapes models,
    else mask2former) or --evaluator-name (T2I-CompBench)."""
    if a.benchmark == "compbench":
        return a.evaluator_name
    name = a.evaluator or ("shapes" if run["settings"]["model"] in SHAPES_MODELS else "mask2former")
    if name not in ("shapes", "mask2former"):
        raise HarnessError(f"--evaluator {name!r}: use shapes or mask2former")
    return name


def _geneval_evaluator(a, name: str, device: str):
    if name == "shapes":
        return geneval.ShapesEvaluator()
    from ..eval.detectors import load_geneval_evaluator

    return load_geneval_evaluator(detector=a.detector, clip=a.clip, clip_pretrained=a.clip_pretrained or None, device=device)


class _LazyDetector:
    """The Mask2Former detector, loaded when a category first needs it (spatial, complex)."""

    def __init__(self, model: str, device: str):
        self.model, self.device, self._detector = model, device, None
        self.name = f"mask2former:{model}"

    def __call__(self, images):
        if self._detector is None:
            from ..eval.detectors import Mask2FormerDetector

            self._detector = Mask2FormerDetector(self.model, device=self.device)
        return self._detector(images)


COMPLEX_SUBSETS = {"spatial_prompts": "complex_val_spatial.txt", "action_prompts": "complex_val_action.txt"}


def _compbench_evaluator(a, run: dict, device: str):
    from ..eval.compbench import load_compbench_evaluator

    ev = load_compbench_evaluator(blip=a.blip, clip=a.clip, clip_pretrained=a.clip_pretrained or None, detector=_LazyDetector(a.detector, device),
                                  spacy_model=a.spacy_model, device=device)
    # the 3-in-1 score averages two parts for the benchmark's spatial / action subsets of complex prompts, when their lists are at hand
    folder = Path(run["selection"]["prompts_dir"])
    found = {k: folder / name for k, name in COMPLEX_SUBSETS.items() if (folder / name).is_file()}
    if len(found) == len(COMPLEX_SUBSETS):
        ev.complex_kwargs = {k: [line for line in p.read_text().splitlines() if line.strip()] for k, p in found.items()}
    info = ev.info
    ev.info = lambda: {**info(), "complex_subsets": sorted(str(p) for p in found.values()) if ev.complex_kwargs else
                       "none found: every complex prompt averages all three parts"}
    return ev


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _check_counts(a) -> None:
    """Count options of the step (the generation settings check their own) are whole numbers >= 1."""
    for flag in ("threads", "eval_batch", "per_task", "limit"):
        value = getattr(a, flag, None)
        if value is not None and value < 1:
            raise HarnessError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def run_benchmark(a) -> int:
    import torch

    _check_counts(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    dist = _Dist(a)
    progress = not a.no_progress
    mod = geneval if a.benchmark == "geneval" else compbench
    if a.step in ("generate", "run"):
        settings = _settings(a, a.benchmark)
        if a.benchmark == "geneval":
            tasks = [t.strip() for t in a.tasks.split(",")] if a.tasks else None
            counts = geneval.generate(a.out, a.metadata, settings, per_task=a.per_task, tasks=tasks, shard=dist.shard, device=dist.device, progress=progress)
        else:
            cats = [c.strip() for c in a.categories.split(",") if c.strip()]
            counts = compbench.generate(a.out, a.prompts_dir, cats, settings, limit=a.limit, shard=dist.shard, device=dist.device, progress=progress)
        print(f"[shard {dist.shard.index}/{dist.shard.count}] generated {counts['made']} images, {counts['skipped']} already there", flush=True)
        _free(dist.device)
        dist.barrier()  # every shard's images exist before any shard evaluates
        if a.step == "generate":
            return 0
    run = read_run(a.out)
    name, info = _evaluator_name(a, run), None
    if a.step in ("evaluate", "run"):
        evaluator = _geneval_evaluator(a, name, dist.device) if a.benchmark == "geneval" else _compbench_evaluator(a, run, dist.device)
        info = evaluator.info()
        if dist.main:
            files.write_json(a.out / "results" / f"{name}.info.json", info)
        done = mod.evaluate(a.out, evaluator, name, dist.shard, a.eval_batch, progress)
        print(f"[shard {dist.shard.index}/{dist.shard.count}] scored {done['scored']} images by {name}", flush=True)
        del evaluator
        _free(dist.device)
    dist.barrier()
    if dist.main:
        info = info or files.read_json(a.out / "results" / f"{name}.info.json")
        s = mod.write_summary(a.out, name, info)
        from .report import compbench_markdown, geneval_markdown

        print((geneval_markdown if a.benchmark == "geneval" else compbench_markdown)([s]))
        if s["scored"] < s["expected"]:
            print(f"note: {s['expected'] - s['scored']} of {s['expected']} images are not generated or scored yet (other shards?)", flush=True)
        print(f"summary: {a.out / 'results' / (name + '.json')}")
    return 0


def report(a) -> int:
    from .report import write_report

    summaries = []
    for run in a.runs:
        found = sorted((run / "results").glob("*.json")) if (run / "results").is_dir() else []
        found = [p for p in found if not p.name.endswith(".info.json")]
        if a.evaluator:
            found = [p for p in found if p.stem == a.evaluator]
        if len(found) != 1:
            raise HarnessError(f"{run}: expected one results/<evaluator>.json, found {[p.name for p in found] or 'none'} "
                               "(run `summary` first, or choose one with --evaluator)")
        summary = files.read_json(found[0])
        summary["run"] = str(run)  # where the run is now (it may have moved since its summary was written)
        summaries.append(summary)
    kinds = {s["benchmark"] for s in summaries}
    if len(kinds) != 1:
        raise HarnessError(f"runs mix benchmarks ({', '.join(sorted(kinds))}): report one benchmark at a time")
    paths = write_report(summaries, a.out, kinds.pop())
    print((a.out / "report.md").read_text())
    print("wrote " + ", ".join(p for p in paths.values() if p))
    return 0


def main(argv=None) -> int:
    from ..eval.geneval import MetadataError
    from ..rewards.weights import RewardWeightsNotFound

    parser = build_parser()
    try:
        a = parser.parse_args(argv)
        if a.benchmark is None:
            parser.print_help()
            return 2
        if a.benchmark == "report":
            return report(a)
        if a.step is None:
            parser.parse_args([a.benchmark, "--help"])
        return run_benchmark(a)
    except (HarnessError, MetadataError, RewardWeightsNotFound, OSError, NotImplementedError) as e:
        # bad input, missing model weights (a spaCy pipeline not installed raises OSError), a category not implemented
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every finished image and score is saved; run the same command again to resume", file=sys.stderr)
        return 130
