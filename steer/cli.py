"""The ``steer`` command: generate with reward-guided search, run benchmarks and trainers, start the demo.

    steer generate "a photo of a red circle left of a blue square" --method smc --particles 8 --out outputs
    steer generate --prompts prompts.jsonl --model shapes-flow --method prune --option schedule="[(3, 0.25)]"
    steer bench shapes_baseline --out results/shapes_baseline.json     (needs a source checkout)
    steer train pgraft --model shapes-sd --prompt-set 99 --out runs/pgraft_sd
    steer app --port 7860
    steer geneval run --metadata evaluation_metadata.jsonl --model PIPELINE --method smc --reward imagereward --out runs/x
    steer compbench run --prompts-dir T2I-CompBench/examples/dataset --model PIPELINE --out runs/y

``steer generate`` writes one PNG per prompt (the method's pick; ``--all`` adds every particle) and a JSON
file beside it with the prompt, the settings, the rewards, the search trace and, on the shapes models,
the exact evaluator's verdict.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

#: trainers runnable as ``steer train NAME`` (modules of steer.train with ``main(argv)``)
TRAINERS = ("pgraft", "draft", "noise_aware", "noise_correction", "shapes_t2i", "shapes_reward")
SHAPES_MODELS = ("shapes-sd", "shapes-flow")
REPO = Path(__file__).resolve().parents[1]


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def benchmarks_dir() -> Path:
    """``benchmarks/`` of the source checkout this package runs from (it is not installed with the package)."""
    path = REPO / "benchmarks"
    if not path.is_dir():
        raise UsageError(f"steer bench: no benchmarks folder at {path}: `steer bench` runs the scripts of a source checkout "
                         "(git clone the repository and pip install -e . there)")
    return path


def benchmark_names() -> list[str]:
    try:
        return sorted(p.stem for p in benchmarks_dir().glob("*.py") if not p.name.startswith("_"))
    except UsageError:
        return []


def _method_names() -> list[str]:
    from .search import METHODS

    return list(METHODS)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="steer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("generate", help="images for prompts with a search method → PNG + JSON trace per image",
                       description="Generate one image per prompt with reward-guided search; write PNG images and a JSON trace per image.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("prompt", nargs="*", help="prompts (or use --prompts FILE.jsonl)")
    g.add_argument("--prompts", type=Path, metavar="JSONL", help='a JSONL file of prompts, one {"prompt": ...} object per line (GenEval records work)')
    g.add_argument("--model", default="shapes-sd", help="shapes-sd, shapes-flow (the shipped shapes models), a local diffusers pipeline folder or a hub id")
    g.add_argument("--method", default="smc", choices=_method_names(), metavar="METHOD", help=f"search method: {', '.join(_method_names())}")
    g.add_argument("--reward", default="shapes_clip", help="reward name (steer.rewards.available_rewards()) or noise_aware:PATH")
    g.add_argument("--particles", type=int, default=4, help="particles (candidates) per prompt")
    g.add_argument("--steps", type=int, default=25, help="sampling steps")
    g.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    g.add_argument("--seed", type=int, default=0, help="seed of prompt i is seed + i")
    g.add_argument("--max-nfe", type=int, help="compute budget: denoiser evaluations per prompt (particles × steps for most methods)")
    g.add_argument("--eta", type=float, help="sampler noise (default: 1 for resampling methods on DDIM, 0.5 on flow models, else 0)")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option (repeatable), e.g. lam=0.1, potential=diff, schedule=[(3,0.25)], verifier=shapes_noise_aware_sd; "
                        "`steer generate --list-options` shows each method's options")
    g.add_argument("--list-options", action="store_true", help="print every method's options with their defaults and exit")
    g.add_argument("--all", action="store_true", help="also save every particle's final image")
    g.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--threads", type=int, help="torch CPU threads")

    for name, text, extra in (
        ("bench", "run a benchmark script of benchmarks/ by name (needs a source checkout)",
         f"Benchmarks: {', '.join(benchmark_names()) or '(none found: needs a source checkout)'}. "
         "`steer bench NAME --help` shows a benchmark's options."),
        ("train", "run a trainer of steer.train by name",
         f"Trainers: {', '.join(TRAINERS)}. `steer train NAME --help` shows a trainer's options."),
    ):
        s = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}; arguments after NAME go to it unchanged. {extra}")
        s.add_argument("name", metavar="NAME")
        s.add_argument("args", nargs=argparse.REMAINDER, help="arguments for it")
    for name, text in (("geneval", "GenEval for any pipeline × method: generate, evaluate, run, summary (python -m steer.harness)"),
                       ("compbench", "T2I-CompBench for any pipeline × method: generate, evaluate, run, summary (python -m steer.harness)"),
                       ("report", "one table and plot for several benchmark runs (python -m steer.harness report)")):
        s = sub.add_parser(name, help=text, description=f"{text}; `steer {name} --help` lists its steps and options.")
        s.add_argument("args", nargs=argparse.REMAINDER)
    s = sub.add_parser("app", help="start the Gradio demo (needs pip install 'steer-diffusion[app]')",
                       description="Start the Gradio demo; arguments go to it (`steer app --help` lists them: --host, --port, --allow PATH ...).")
    s.add_argument("args", nargs=argparse.REMAINDER)
    return p


def parse_option(text: str, method: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value): Python literals (numbers, tuples, lists, True/None) or a plain word."""
    import inspect

    from .search import METHODS

    if "=" not in text:
        raise UsageError(f"steer generate: error: --option {text!r}: write KEY=VALUE, e.g. --option lam=0.1")
    key, raw = (t.strip() for t in text.split("=", 1))
    names = [n for n in inspect.signature(METHODS[method].__init__).parameters if n not in ("self", "options")]
    if key not in names:
        raise UsageError(f"steer generate: error: --option {key}: method {method!r} has no such option; its options: {', '.join(names) or 'none'}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def list_options() -> str:
    import inspect

    from .search import METHODS

    lines, seen = [], {}
    for name, cls in METHODS.items():
        seen.setdefault(cls, []).append(name)
    for cls, names in seen.items():
        params = [p for n, p in inspect.signature(cls.__init__).parameters.items() if n not in ("self", "options")]
        opts = ", ".join(f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty else p.name for p in params) or "(none)"
        lines.append(f"{' | '.join(names)}: {opts}")
    return "\n".join(lines)


def read_prompts(a) -> list[dict]:
    records = [{"prompt": p} for p in a.prompt]
    if a.prompts is not None:
        if not a.prompts.is_file():
            raise UsageError(f"steer generate: error: --prompts {a.prompts}: no such file")
        for i, line in enumerate(a.prompts.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"steer generate: error: {a.prompts}:{i}: not JSON ({e.msg})") from None
            if isinstance(rec, str):
                rec = {"prompt": rec}
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
                raise UsageError(f'steer generate: error: {a.prompts}:{i}: expected an object with a "prompt" string')
            records.append(rec)
    if not records:
        raise UsageError("steer generate: error: give prompts as arguments or --prompts FILE.jsonl (see steer generate --help)")
    return records


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60] or "prompt"


def _check_model(name: str) -> None:
    """shapes-sd / shapes-flow, a diffusers pipeline folder, or a hub id (owner/name, not an existing path)."""
    path = Path(name).expanduser()
    hub_id = not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None
    if name not in SHAPES_MODELS and not (path / "model_index.json").is_file() and not hub_id:
        raise UsageError(f"steer generate: error: --model {name}: not shapes-sd, shapes-flow, a diffusers pipeline folder "
                         "(no model_index.json) or a hub id (owner/name)")


def load_model(name: str, device: str):
    """The pipeline ``--model`` names (checked by :func:`_check_model`; see :func:`steer.harness.load_pipeline`)."""
    from .harness import HarnessError, load_pipeline

    try:
        return load_pipeline(name, device)
    except HarnessError as e:
        raise UsageError(f"steer generate: error: {e}") from None


def generate(a) -> int:
    if a.list_options:
        print(list_options())
        return 0
    for flag, value, lo in (("--particles", a.particles, 1), ("--steps", a.steps, 1), ("--max-nfe", a.max_nfe, 1), ("--threads", a.threads, 1),
                            ("--seed", a.seed, 0)):
        if value is not None and value < lo:
            raise UsageError(f"steer generate: error: {flag} must be >= {lo}, got {value}")
    records = read_prompts(a)
    options = dict(parse_option(o, a.method) for o in a.option)
    from .pipeline import REWARD_OPTIONS
    from .search import get_method

    try:  # bad option values fail before the model loads (reward-valued options are checked by steer.wrap)
        get_method(a.method, **{k: v for k, v in options.items() if k not in REWARD_OPTIONS})
    except (ValueError, TypeError) as e:
        raise UsageError(f"steer generate: error: {e}") from None
    from .rewards import available_rewards

    if a.reward.lower() not in available_rewards() and not a.reward.lower().startswith("noise_aware:"):
        raise UsageError(f"steer generate: error: unknown reward {a.reward!r}; known rewards: {', '.join(available_rewards())}")
    _check_model(a.model)
    import torch

    import steer

    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_model(a.model, device)
    engine = {"num_particles": a.particles}
    if a.max_nfe is not None:
        engine["max_nfe"] = a.max_nfe
    if a.eta is not None:
        engine["eta"] = a.eta
    try:
        steered = steer.wrap(pipe, method=a.method, reward=a.reward, **options)
    except (ValueError, TypeError) as e:
        raise UsageError(f"steer generate: error: {e}") from None
    evaluate = None
    if a.model in SHAPES_MODELS:
        from .shapes import evaluate_image, parse_prompt

        def evaluate(image, rec):
            try:
                record = rec if "include" in rec else parse_prompt(rec["prompt"])
            except ValueError as e:
                return {"correct": None, "reasons": [f"not a shapes-world prompt: {e}"]}
            v = evaluate_image(image, record)
            return {"correct": bool(v.correct), "tag": v.tag, "reasons": list(v.reasons)}

    a.out.mkdir(parents=True, exist_ok=True)
    import numpy as np
    from PIL import Image

    correct = judged = 0
    for i, rec in enumerate(records):
        seed = a.seed + i
        try:
            out = steered(rec["prompt"], num_inference_steps=a.steps, guidance_scale=a.guidance, generator=torch.Generator().manual_seed(seed),
                          output_type="np", return_all=True, **engine)
        except (ValueError, TypeError) as e:
            raise UsageError(f"steer generate: error: {e}") from None
        images = [np.clip(np.round(im * 255), 0, 255).astype(np.uint8) for im in out.images]
        pick = out.trace.selected[0]
        stem = f"{i:03d}_{_slug(rec['prompt'])}"
        path = a.out / f"{stem}.png"
        Image.fromarray(images[pick]).save(path)
        record = {"prompt": rec["prompt"], "model": a.model, "method": a.method, "reward": a.reward, "seed": seed, "steps": a.steps,
                  "guidance": a.guidance, "particles": a.particles, "options": {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
                                                                             for k, v in options.items()},
                  "image": path.name, "selected": pick, "reward_value": out.rewards[pick], "rewards": out.rewards, "trace": out.trace.to_dict()}
        if evaluate is not None:
            record["verdict"] = evaluate(images[pick], rec)
            if record["verdict"]["correct"] is not None:
                judged += 1
                correct += record["verdict"]["correct"]
        if a.all:
            record["particle_images"] = []
            for k, im in enumerate(images):
                if np.isfinite(out.rewards[k]):
                    name = f"{stem}_p{k:02d}.png"
                    Image.fromarray(im).save(a.out / name)
                    record["particle_images"].append(name)
        (a.out / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str))
        v = record.get("verdict")
        vtext = "" if v is None else ("  correct" if v["correct"] else "  n/a" if v["correct"] is None else "  wrong: " + "; ".join(v["reasons"]))
        print(f"{path}  reward={out.rewards[pick]:.3f}  nfe={out.trace.nfe}  {out.trace.seconds:.2f}s{vtext}", flush=True)
    if judged:
        print(f"exact evaluator: {correct}/{judged} correct")
    return 0


def bench(name: str, args: list[str]) -> int:
    import runpy

    folder = benchmarks_dir()
    stem = name[:-3] if name.endswith(".py") else name
    path = folder / f"{stem}.py"
    if not re.fullmatch(r"[A-Za-z0-9_]+", stem) or not path.is_file():
        raise UsageError(f"steer bench: error: unknown benchmark {name!r}; choose one of {', '.join(benchmark_names())}")
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(folder))
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return 0


def train(name: str, args: list[str]) -> int:
    import importlib

    if name not in TRAINERS:
        raise UsageError(f"steer train: error: unknown trainer {name!r}; choose one of {', '.join(TRAINERS)}")
    module = importlib.import_module(f"steer.train.{name}")
    old_argv = sys.argv
    sys.argv = [f"steer train {name}", *args]  # the trainer's usage line names the command
    try:
        module.main(args)
    finally:
        sys.argv = old_argv
    return 0


def app(args: list[str]) -> int:
    try:
        import app as demo
    except ImportError:
        if not (REPO / "app" / "__init__.py").is_file():
            raise UsageError("steer app: error: the app package is not installed (it lives in the source checkout's app/ folder)") from None
        sys.path.insert(0, str(REPO))
        import app as demo
    return demo.main(args) or 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        # bench / train / app pass everything after their NAME through (including --help)
        if argv and argv[0] in ("bench", "train") and len(argv) > 1 and not argv[1].startswith("-"):
            return (bench if argv[0] == "bench" else train)(argv[1], argv[2:])
        if argv and argv[0] == "app":
            return app(argv[1:])
        if argv and argv[0] in ("geneval", "compbench", "report"):
            from .harness.cli import main as harness

            return harness(argv)
        a = parser.parse_args(argv)
        if a.command is None:
            parser.print_help()
            return 2
        if a.command == "generate":
            return generate(a)
        return (bench if a.command == "bench" else train)(a.name, a.args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
