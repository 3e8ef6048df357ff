"""The steer demo: watch reward-guided search happen, on the shipped shapes models or allow-listed local pipelines.

    python -m app                      # http://127.0.0.1:7860, shapes-sd and shapes-flow
    python -m app --allow ~/models/sd15 --port 8000
    steer app --host 0.0.0.0           # listen beyond this machine (only when you mean it)

Every method of ``steer.search.METHODS`` is offered, with its options read from its ``__init__`` signature,
so a method added to the registry appears here without touching this file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from .core import (NO_REWARD, Limits, ModelStore, Request, method_classes, method_names, method_options, parse_options, plot_trace, run_events,
                   summarize, thumbnail, to_uint8, verdict, verdict_text)

__all__ = ["build_app", "main", "Limits", "ModelStore", "Request"]

DEFAULT_PROMPT = "a photo of a red circle left of a blue square"


def _caption(k: int, reward: float, v: dict | None, selected: bool = False) -> str:
    text = f"{'★ ' if selected else ''}#{k}  r={reward:.2f}"
    if v is not None and v["correct"] is not None:
        text += "  ✓ correct" if v["correct"] else "  ✗ " + "; ".join(v["reasons"])[:80]
    return text


def _progress_html(done: int, total: int, note: str) -> str:
    pct = 0 if total <= 0 else min(100, round(100 * done / total))
    return (f'<div id="steer-progress"><progress max="100" value="{pct}" style="width:100%"></progress>'
            f"<div>{note}</div></div>")


def build_app(store: ModelStore | None = None, limits: Limits = Limits(), default_model: str = "shapes-sd"):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr
    from steer.rewards import available_rewards
    from steer.search.trace import BudgetExceeded

    store = store or ModelStore()
    classes = method_classes()
    rewards = available_rewards()
    specs_by_class = {cls: method_options(names[0]) for cls, names in classes.items()}
    class_of = {name: cls for cls, names in classes.items() for name in names}

    with gr.Blocks(title="steer: watch the search") as demo:
        gr.Markdown("# steer — reward-guided search, step by step\n"
                    "Pick a model, a search method and its options; the particles' predicted clean images (x̂₀) and their "
                    "rewards appear as the search runs, so resampling and pruning show as they happen.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", value=DEFAULT_PROMPT, lines=2, max_length=limits.max_prompt_chars, elem_id="prompt")
                model = gr.Dropdown(store.names, value=default_model, label="model")
                method = gr.Dropdown(method_names(), value="smc", label="method")
                reward = gr.Dropdown(rewards, value="shapes_clip" if "shapes_clip" in rewards else rewards[0], label="reward")
                with gr.Row():
                    particles = gr.Number(4, label="particles", precision=0, minimum=1, maximum=limits.max_particles)
                    steps = gr.Number(10, label="steps", precision=0, minimum=1, maximum=limits.max_steps)
                with gr.Row():
                    guidance = gr.Number(5.0, label="guidance", minimum=0, maximum=50)
                    seed = gr.Number(0, label="seed", precision=0, minimum=0)
                with gr.Row():
                    budget = gr.Number(0, label="budget: max NFE (0: none)", precision=0)
                    size = gr.Number(0, label="image size (0: model default)", precision=0)
                compare = gr.Checkbox(True, label="side by side: the base sampler at equal compute")
                groups, option_inputs, option_keys = {}, [], []
                for cls, specs in specs_by_class.items():
                    with gr.Group(visible=cls == class_of["smc"]) as group:
                        gr.Markdown(f"**{cls} options** ({', '.join(classes[cls])})")
                        for s in specs:
                            label = f"{s.name}" + (f"  ({s.annotation})" if s.annotation else "")
                            if s.kind == "bool":
                                w = gr.Checkbox(s.widget_value(), label=label)
                            elif s.kind in ("int", "float"):
                                w = gr.Number(s.widget_value(), label=label, precision=0 if s.kind == "int" else None)
                            elif s.kind == "reward":
                                w = gr.Dropdown([NO_REWARD, *rewards], value=s.widget_value(), label=label)
                            else:
                                w = gr.Textbox(s.widget_value(), label=label + "  (empty: default)")
                            option_inputs.append(w)
                            option_keys.append((cls, s.name))
                    groups[cls] = group
                run_btn = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                progress_html = gr.HTML(_progress_html(0, 1, "idle"), elem_id="progress")
                live = gr.Gallery(label="particles' x̂₀ at the latest scored step (reward)", columns=8, height=200, elem_id="live", format="png")
                final = gr.Gallery(label="final images (★ = the method's pick)", columns=8, height=220, elem_id="final", format="png")
                verdict_md = gr.Markdown("", elem_id="verdict")
                compute_md = gr.Markdown("", elem_id="compute")
                plot = gr.Plot(label="reward, ESS and lineage per step")
                side = gr.Gallery(label="side by side, same seed", columns=3, height=220, elem_id="side", format="png")
                compare_md = gr.Markdown("", elem_id="compare")
                summary = gr.JSON(label="summary and trace", elem_id="summary")

        def show_options(name):
            cls = class_of.get(name)
            return [gr.update(visible=c == cls) for c in groups]

        method.change(show_options, method, list(groups.values()))

        def request(prompt, model, method, reward, particles, steps, guidance, seed, budget, size, options: dict) -> Request:
            try:
                if method not in class_of:
                    raise ValueError(f"unknown method {method!r}: choose one of {', '.join(class_of)}")
                if not isinstance(options, dict):
                    raise ValueError("method options must be a JSON object, e.g. {\"lam\": 0.1}")
                req = Request(prompt=prompt, model=model, method=method, reward=reward, particles=_int(particles, "particles"),
                              steps=_int(steps, "steps"), guidance=_float(guidance, "guidance"), seed=_int(seed, "seed"),
                              max_nfe=_int(budget, "budget", optional=True) or None, size=_int(size, "image size", optional=True) or None,
                              options=parse_options(method, options))
                req.check(store, limits)
                if reward not in rewards:
                    raise ValueError(f"unknown reward {reward!r}: choose one of {', '.join(rewards)}")
            except (ValueError, TypeError, SyntaxError) as e:
                raise gr.Error(str(e)) from None
            return req

        def generate(prompt, model, method, reward, particles, steps, guidance, seed, budget, size, compare, *option_values):
            """The page's Run button: method options from the widgets of the selected method's group."""
            cls = class_of.get(method)
            values = {name: v for (c, name), v in zip(option_keys, option_values) if c == cls}
            yield from search(request(prompt, model, method, reward, particles, steps, guidance, seed, budget, size, values), compare)

        def generate_api(prompt, model, method, reward, particles, steps, guidance, seed, budget, size, compare, options_json):
            """The API endpoint (``gradio_client``): method options as a JSON object."""
            import json

            try:
                options = json.loads(options_json) if options_json and options_json.strip() else {}
            except json.JSONDecodeError as e:
                raise gr.Error(f"method options are not valid JSON: {e}") from None
            yield from search(request(prompt, model, method, reward, particles, steps, guidance, seed, budget, size, options), compare)

        def search(req: Request, compare: bool):
            model, reward = req.model, req.reward
            skip = gr.update()
            yield (_progress_html(0, 1, f"loading {model} and {reward}…"), skip, skip, "", "", skip, skip, "", skip)
            try:
                out, stage, last, thumbs = None, "search", 0.0, []
                for kind, item in run_events(store, req):
                    if kind == "done":
                        out = item
                    elif item["event"] == "step":
                        now = time.perf_counter()
                        if now - last > 0.1 or item["step"] == item["total"]:
                            last = now
                            yield (_progress_html(item["step"], item["total"], f"{stage}: step {item['step']}/{item['total']}"),
                                   skip, skip, skip, skip, skip, skip, skip, skip)
                    elif item["event"] == "score":
                        thumbs = [(thumbnail(im), f"#{k} r={r:.2f}") for k, (im, r) in enumerate(zip(to_uint8(item["images"]), item["rewards"]))]
                        if item["role"] != "reward":
                            thumbs = [(im, f"{cap} ({item['role']})") for im, cap in thumbs]
                        yield (skip, thumbs, skip, skip, skip, skip, skip, skip, skip)
                info = summarize(store, req, out)
                images = to_uint8(out.images)
                gallery = [(thumbnail(images[r["particle"]], 160), _caption(r["particle"], r["reward"], r["verdict"], r["selected"]))
                           for r in info["particles"]]
                sel = next(r for r in info["particles"] if r["selected"])
                vtext = (f"**exact evaluator on the pick (particle {sel['particle']}): {verdict_text(sel['verdict'])}**"
                         if sel["verdict"] is not None else f"pick: particle {sel['particle']} ({verdict_text(None)})")
                c = info["compute"]
                ctext = (f"compute: **{c['nfe']} NFE**, {c['reward_calls']} reward calls, {c['verifier_calls']} verifier calls, "
                         f"{c['seconds']:.2f} s" + (f", {c['nfe_saved']} NFE saved by pruning" if c["nfe_saved"] else ""))
                fig = plot_trace(out.trace, out.rewards)
                info["trace"] = out.trace.to_dict()
                yield (_progress_html(1, 1, "search done" + (": running the base sampler at equal compute…" if compare else "")),
                       skip, gallery, vtext, ctext, fig, skip, skip, info)
                if compare:
                    n = max(1, min(limits.max_particles * 4, out.trace.nfe // req.steps))
                    base_req = replace(req, method="best_of_n", particles=n, options={}, max_nfe=None)
                    base = None
                    for kind, item in run_events(store, base_req):
                        if kind == "done":
                            base = item
                        elif item["event"] == "step" and item["step"] == item["total"]:
                            yield (_progress_html(1, 1, f"base sampler (best-of-{n}): step {item['step']}/{item['total']}"),
                                   skip, skip, skip, skip, skip, skip, skip, skip)
                    b_images = to_uint8(base.images)
                    b_pick = base.trace.selected[0]
                    side_items, cmp = [], {"best_of_n_particles": n}
                    for key, label, k, nfe in (("base", "base sampler, 1 sample", 0, base.trace.nfe // n),
                                               ("best_of_n", f"best-of-{n} (equal compute)", b_pick, base.trace.nfe)):
                        v = verdict(store, req.model, req.prompt, b_images[k])
                        side_items.append((thumbnail(b_images[k], 160), f"{label}: {nfe} NFE, r={base.rewards[k]:.2f}, {verdict_text(v)}"))
                        cmp[key] = {"nfe": nfe, "reward": round(float(base.rewards[k]), 4), "verdict": v}
                    side_items.append((thumbnail(images[sel["particle"]], 160),
                                       f"{req.method}: {c['nfe']} NFE, r={sel['reward']:.2f}, {verdict_text(sel['verdict'])}"))
                    cmp["method"] = {"nfe": c["nfe"], "reward": sel["reward"], "verdict": sel["verdict"]}
                    info["compare"] = cmp
                    cmp_text = "**side by side** (same seed): " + " · ".join(caption for _, caption in side_items)
                else:
                    side_items, cmp_text = [], ""
                # the last update carries every output, so an API client's result is complete
                yield (_progress_html(1, 1, "done"), thumbs, gallery, vtext, ctext, fig, side_items, cmp_text, info)
                import matplotlib.pyplot as plt

                plt.close(fig)
            except (ValueError, TypeError, BudgetExceeded) as e:  # bad settings for this method or model
                raise gr.Error(str(e)) from None
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - e.g. a reward whose weights are not on this machine
                raise gr.Error(f"{type(e).__name__}: {e}") from None

        outputs = [progress_html, live, final, verdict_md, compute_md, plot, side, compare_md, summary]
        run_btn.click(generate, [prompt, model, method, reward, particles, steps, guidance, seed, budget, size, compare, *option_inputs],
                      outputs, api_name="run_page")
        options_json = gr.Textbox("{}", visible=False, label="options")
        api_btn = gr.Button(visible=False)
        api_btn.click(generate_api, [prompt, model, method, reward, particles, steps, guidance, seed, budget, size, compare, options_json],
                      outputs, api_name="generate")
    demo.steer_store = store
    return demo


def _int(value, name: str, optional: bool = False):
    if value is None or value == "":
        if optional:
            return None
        raise ValueError(f"{name} is required")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def _float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: any free port)")
    p.add_argument("--allow", nargs="+", default=[], metavar="PATH",
                   help="local diffusers pipeline folders the page may offer (besides shapes-sd and shapes-flow)")
    p.add_argument("--model", default="shapes-sd", help="the model selected at start (shapes-sd, shapes-flow or an --allow path)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--concurrency", type=int, default=2, help="requests run at once (the queue holds the rest; default 2)")
    p.add_argument("--max-particles", type=int, default=Limits.max_particles)
    p.add_argument("--max-steps", type=int, default=Limits.max_steps)
    p.add_argument("--max-size", type=int, default=Limits.max_size, help="largest image side a request may ask for")
    p.add_argument("--no-preload", action="store_true", help="load the start model at the first request, not at start-up")
    return p


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    for name in ("concurrency", "max_particles", "max_steps", "max_size", "threads"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= a.port < 65536:
        p.error("--port must be from 0 to 65535")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("the app needs gradio: pip install 'steer-diffusion[app]'", file=sys.stderr)
        return 2
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        store = ModelStore(a.allow, device=device)
    except ValueError as e:
        p.error(str(e))
    model = str(Path(a.model).expanduser().resolve()) if a.model not in store.names and Path(a.model).exists() else a.model
    if model not in store.names:
        p.error(f"--model {a.model}: choose one of {', '.join(store.names)} (add folders with --allow)")
    if not a.no_preload:
        import threading

        threading.Thread(target=lambda: (store.pipe(model), store.reward("shapes_clip")), daemon=True).start()
    demo = build_app(store, Limits(max_particles=a.max_particles, max_steps=a.max_steps, max_size=a.max_size), default_model=model)
    demo.queue(default_concurrency_limit=a.concurrency, max_size=64)
    port = a.port or _free_port(a.host)
    print(f"steer app: http://{a.host}:{port}  (models: {', '.join(store.names)})", flush=True)
    demo.launch(server_name=a.host, server_port=port, show_error=True, inbrowser=False)
    return 0


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]

