"""Run summaries as Markdown tables, JSON and reward/score-versus-compute plots across runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..eval.geneval import TASKS
from . import files


def compute_summary(rows: Sequence[dict]) -> dict:
    """Compute per image (mean over images) and in all, from the harness's per-image records."""
    def mean(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    peaks = [r["peak_memory_mb"] for r in rows if r.get("peak_memory_mb") is not None]
    return {
        "nfe_per_image": mean("nfe"), "reward_calls_per_image": mean("reward_calls"), "seconds_per_image": mean("seconds"),
        "seconds_total": float(sum(r.get("seconds") or 0 for r in rows)), "peak_memory_mb": max(peaks) if peaks else None,
        "memory_kind": next((r["memory_kind"] for r in rows if r.get("memory_kind")), None), "reward_mean": mean("reward"),
        "devices": sorted({r["device"] for r in rows if r.get("device")}),
    }


def run_fields(run: dict, out: Path, rows: Sequence[dict]) -> dict:
    """The summary fields every benchmark shares: settings, seeds, compute per image, versions, the run folder."""
    from .generation import GenerationSettings

    st = run["settings"]
    return {
        **{k: st[k] for k in ("model", "method", "reward", "particles", "steps", "guidance", "images_per_prompt", "seed")},
        "options": st["options"], "seeds": GenerationSettings.from_dict(st).seeds(), "distinct_seeds": st.get("distinct_seeds", False),
        **compute_summary(rows), "versions": {k: run.get(k) for k in ("steer", "diffusers", "torch")}, "run": str(out),
    }


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _label(s: dict) -> str:
    if s["method"] == "none":
        return "plain"
    opts = ",".join(f"{k}={v}" for k, v in sorted(s.get("options", {}).items()))
    return f"{s['method']}×{s['particles']}" + (f" ({opts})" if opts else "")


def _name(s: dict) -> str:
    """The method label, marked when the run used distinct seeds per prompt line."""
    return _label(s) + (" (distinct seeds)" if s.get("distinct_seeds") else "")


def _seeds(s: dict) -> str:
    seeds = s.get("seeds") or []
    if not seeds:
        return "–"
    return f"{seeds[0]}–{seeds[-1]}" + (" + 4·line" if s.get("distinct_seeds") and len(seeds) == 4 else
                                        f" + {len(seeds)}·line" if s.get("distinct_seeds") else "")


def _compute_cells(s: dict) -> list[str]:
    mem = s.get("peak_memory_mb")
    return [_f(s.get("nfe_per_image"), 1), _f(s.get("reward_calls_per_image"), 1), _f(s.get("seconds_per_image"), 2),
            "–" if mem is None else f"{mem:.0f}", _f(s.get("reward_mean"))]


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


COMPUTE_HEAD = ["NFE/img", "reward calls/img", "s/img", "peak MB", "reward"]


def geneval_markdown(summaries: Sequence[dict]) -> str:
    """GenEval rows: model, method, compute, per-task accuracy, overall."""
    tasks = [t for t in TASKS if any(t in s["tasks"] for s in summaries)]
    head = ["model", "method", "seeds", *COMPUTE_HEAD, *tasks, "overall", "images"]
    rows = []
    for s in summaries:
        rows.append([s["model"], _label(s), _seeds(s), *_compute_cells(s),
                     *[_f(s["tasks"].get(t)) for t in tasks], f"**{_f(s['overall'])}**", f"{s['scored']}/{s['expected']}"])
    note = f"GenEval by `{summaries[0]['evaluator']}`" if summaries else ""
    return (note + "\n\n" if note else "") + _table(head, rows)


def compbench_markdown(summaries: Sequence[dict]) -> str:
    """T2I-CompBench rows: model, method, compute, per-category score."""
    cats = sorted({c for s in summaries for c in s["categories"]})
    head = ["model", "method", "seeds", *COMPUTE_HEAD, *cats, "images"]
    rows = [[s["model"], _label(s), _seeds(s), *_compute_cells(s),
             *[_f(s["categories"].get(c), 4) for c in cats], f"{s['scored']}/{s['expected']}"] for s in summaries]
    return _table(head, rows)


def plot(summaries: Sequence[dict], path: str | Path, score_label: str = "score") -> Path | None:
    """Two panels against NFE per image: the benchmark score and the optimised reward, one series per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:  # plots need matplotlib (pip install steer-diffusion[bench])
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "score", score_label), (axes[1], "reward_mean", "optimised reward (mean of picks)")):
        for model in dict.fromkeys(s["model"] for s in summaries):
            pts = sorted((s["nfe_per_image"], s[key], _name(s)) for s in summaries
                         if s["model"] == model and s.get(key) is not None and s.get("nfe_per_image") is not None and not math.isnan(s[key]))
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=model)
            for x, y, text in pts:
                ax.annotate(text, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ticks = sorted({s["nfe_per_image"] for s in summaries if s.get("nfe_per_image")})
        if ticks:
            ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("NFE per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def contact_sheet(summary: dict, path: str | Path, per_group: int = 4, tile: int = 128) -> Path | None:
    """A grid of a run's images (first image of the first ``per_group`` prompts of each task / category) with
    prompt and verdict (GenEval) or score (T2I-CompBench), to look at what the numbers count."""
    from PIL import Image, ImageDraw

    groups: dict[str, list[tuple[Path, str, str]]] = {}
    for r in _scored_rows(summary):
        if r["index"] == 0 and r["image_path"].is_file():
            verdict = (("correct" if r["correct"] else "wrong: " + "; ".join(r["reasons"])) if summary["benchmark"] == "geneval"
                       else f"score {r['score']:.3f}")
            groups.setdefault(r["group"], []).append((r["image_path"], r["prompt"], verdict))
    if not groups:
        return None
    rows = list(groups.items())
    text_h = 44
    sheet = Image.new("RGB", (per_group * tile, len(rows) * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (_, items) in enumerate(rows):
        for j, (image, prompt, verdict) in enumerate(items[:per_group]):
            x, y = j * tile, i * (tile + text_h)
            with Image.open(image) as im:
                sheet.paste(im.convert("RGB").resize((tile, tile)), (x, y))
            draw.text((x + 2, y + tile + 2), prompt[:24], fill="black")
            draw.text((x + 2, y + tile + 14), prompt[24:48], fill="black")
            draw.text((x + 2, y + tile + 27), verdict[:24], fill="darkgreen" if verdict.startswith(("correct", "score")) else "darkred")
    buf_path = Path(path)
    files.save_image(buf_path, sheet)
    return buf_path


def _scored_rows(summary: dict) -> list[dict]:
    """A run's scored image records (the benchmark module's ``collect``), each with ``group`` (task / category),
    ``line`` (the prompt's place in its prompt file) and ``value`` (1/0 verdict, or score)."""
    from . import compbench, geneval
    from .generation import read_run

    run = Path(summary["run"])
    if summary["benchmark"] == "geneval":
        rows = geneval.collect(run, summary["evaluator"], read_run(run))[0]
        return [{**r, "group": r["tag"], "line": r["folder"], "value": float(r["correct"])} for r in rows if r["correct"] is not None]
    rows = compbench.collect(run, summary["evaluator"], read_run(run))
    return [{**r, "group": r["category"], "line": str(r["prompt_index"]), "value": r["score"]} for r in rows if r["score"] is not None]


def per_prompt_scores(summary: dict) -> dict[tuple[str, str], tuple[str, dict[int, float]]]:
    """``{(group, line): (prompt, {seed: score})}`` of a run: GenEval verdicts (1/0) by task, CompBench scores by category."""
    out: dict[tuple[str, str], tuple[str, dict[int, float]]] = {}
    for r in _scored_rows(summary):
        out.setdefault((r["group"], r["line"]), (r["prompt"], {}))[1][r["seed"]] = r["value"]
    return out


def paired_difference(a: dict, b: dict, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Overall score of run ``a`` minus run ``b`` on the images both have (same prompts and seeds), with a bootstrap
    interval. The overall is the mean of the task (category) means; the bootstrap resamples *distinct prompt texts*
    within each task, so a prompt listed several times (identical images under the same seeds) counts once."""
    if (a.get("seeds"), a.get("distinct_seeds", False)) != (b.get("seeds"), b.get("distinct_seeds", False)):
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "prompts": 0, "lines": 0, "verdict": "not paired",
                "note": "the runs used other seeds: compare runs made with the same prompts and seeds"}
    pa, pb = per_prompt_scores(a), per_prompt_scores(b)
    clusters: dict[str, dict[str, list[float]]] = {}  # group -> prompt text -> per-line mean differences
    for key in sorted(set(pa) & set(pb)):
        seeds = sorted(set(pa[key][1]) & set(pb[key][1]))
        if seeds:
            clusters.setdefault(key[0], {}).setdefault(pa[key][0], []).append(float(np.mean([pa[key][1][s] - pb[key][1][s] for s in seeds])))
    if not clusters:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "prompts": 0, "lines": 0,
                "note": "no prompt and seed in common: compare runs made with the same prompts and seeds"}
    rng = np.random.default_rng(seed)
    boots = []
    for prompts in clusters.values():
        sums = np.asarray([sum(v) for v in prompts.values()])
        counts = np.asarray([len(v) for v in prompts.values()], dtype=float)
        idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
        boots.append(sums[idx].sum(1) / counts[idx].sum(1))  # task mean over the resampled prompts' lines
    boots = np.mean(boots, axis=0)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    diff = float(np.mean([np.mean([x for v in prompts.values() for x in v]) for prompts in clusters.values()]))
    verdict = "tie" if lo <= 0 <= hi else ("better" if diff > 0 else "worse")
    return {"diff": diff, "low": float(lo), "high": float(hi), "prompts": int(sum(len(p) for p in clusters.values())),
            "lines": int(sum(len(v) for p in clusters.values() for v in p.values())), "verdict": verdict}


def comparison_markdown(summaries: Sequence[dict], pairs: Sequence[dict]) -> str:
    base = summaries[0]
    rows = [[s["model"], _name(s),
             "–" if math.isnan(p["diff"]) else f"{p['diff']:+.3f}", "–" if math.isnan(p["low"]) else f"[{p['low']:+.3f}, {p['high']:+.3f}]",
             p.get("verdict", "–"), f"{p['prompts']} ({p.get('lines', p['prompts'])} lines)"] for s, p in zip(summaries[1:], pairs)]
    head = ["model", "method", f"Δ score vs {base['model']} {_label(base)}", "95 % paired bootstrap", "verdict", "distinct prompts"]
    return _table(head, rows)


def write_report(summaries: Sequence[dict], out: str | Path, benchmark: str, sheets: bool = True) -> dict:
    """``report.json``, ``report.md``, ``report.png`` and a contact sheet per run (``sheet_<n>.png``) in ``out``."""
    out = Path(out)
    md = geneval_markdown(summaries) if benchmark == "geneval" else compbench_markdown(summaries)
    pairs = []
    if len(summaries) > 1 and all(Path(s["run"]).is_dir() for s in summaries):
        pairs = [paired_difference(s, summaries[0]) for s in summaries[1:]]
        md += ("\n\nPaired differences against the first run (same prompts and seeds; distinct prompts resampled within each "
               "task / category):\n\n")
        md += comparison_markdown(summaries, pairs)
    files.write_json(out / "report.json", {"runs": list(summaries), "paired_vs_first": pairs})
    files.write_text(out / "report.md", md + "\n")
    png = plot(summaries, out / "report.png", "GenEval overall" if benchmark == "geneval" else "mean category score")
    paths = {"json": str(out / "report.json"), "markdown": str(out / "report.md"), "plot": None if png is None else str(png)}
    if sheets:
        for n, s in enumerate(summaries):
            if Path(s["run"]).is_dir():
                sheet = contact_sheet(s, out / f"sheet_{n}_{Path(s['run']).name}.png")
                if sheet is not None:
                    paths[f"sheet_{n}"] = str(sheet)
    return paths
