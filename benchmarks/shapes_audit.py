"""The evaluator's audit set: generated images judged by eye, and the exact evaluator's agreement with them.

    python benchmarks/shapes_audit.py make --out tests/data/shapes_audit      # generate the images (no labels yet)
    python benchmarks/shapes_audit.py sheets --data tests/data/shapes_audit --out results/audit_sheets
    python benchmarks/shapes_audit.py score --data tests/data/shapes_audit --out results/shapes_audit.json
    python benchmarks/shapes_audit.py calibrate --data tests/data/shapes_audit --out results/shapes_calibration.json

``make`` samples ``--per-task`` prompts per task from ``make_prompt_set(seed=AUDIT_PROMPT_SEED)``
(a seed used nowhere else) with both shipped models at generator seeds from ``AUDIT_SEED0`` on, and
stores every image in one PNG strip (``images.png``, 32 px tiles in record order) beside
``audit.json`` (prompt, model, seed, and the human label once given). ``sheets`` draws numbered
contact sheets *without* the evaluator's verdicts, for labelling by eye. ``score`` compares the
labels with :func:`steer.shapes.evaluate_image`: false accepts (evaluator correct, person wrong)
as a share of the images the person calls wrong, false rejects as a share of the correct ones,
per model and task. ``calibrate`` chooses the detector's per-class acceptance thresholds
(:data:`steer.shapes.detect.ACCEPT`) on labelled data: synthetic shapes and blobs
(:mod:`steer.shapes.synthetic`) and the *even-numbered* audit images; the odd-numbered half is
held out, and its agreement is reported separately.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from steer.eval.geneval import TASKS

AUDIT_PROMPT_SEED = 31337
AUDIT_SEED0 = 700_000
TILE = 32


def load_audit(data: Path) -> tuple[list[dict], np.ndarray]:
    """Records (with labels, where given) and their images ``(N, 32, 32, 3)`` uint8."""
    items = json.loads((data / "audit.json").read_text())["items"]
    strip = np.asarray(Image.open(data / "images.png").convert("RGB"))
    cols = strip.shape[1] // TILE
    images = np.stack([strip[(i // cols) * TILE : (i // cols + 1) * TILE, (i % cols) * TILE : (i % cols + 1) * TILE] for i in range(len(items))])
    return items, images


def make(a) -> None:
    from steer.shapes import load_flow_pipeline, load_pipeline, make_prompt_set, to_uint8

    records = make_prompt_set(per_task=a.per_task, seed=AUDIT_PROMPT_SEED)
    items, images = [], []
    for model in ("sd", "flow"):
        pipe = load_pipeline() if model == "sd" else load_flow_pipeline()
        pipe.set_progress_bar_config(disable=True)
        for start in range(0, len(records), 40):
            chunk = records[start : start + 40]
            seeds = [AUDIT_SEED0 + (0 if model == "sd" else 50_000) + start + i for i in range(len(chunk))]
            out = pipe([r["prompt"] for r in chunk], num_inference_steps=25, guidance_scale=5.0,
                       generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np").images
            images += list(to_uint8(out))
            items += [{"model": model, "seed": s, "record": r, "human": None, "note": ""} for s, r in zip(seeds, chunk)]
        print(f"{model}: {len(records)} images", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    cols = 20
    rows = -(-len(images) // cols)
    strip = np.zeros((rows * TILE, cols * TILE, 3), np.uint8)
    for i, im in enumerate(images):
        strip[(i // cols) * TILE : (i // cols + 1) * TILE, (i % cols) * TILE : (i % cols + 1) * TILE] = im
    Image.fromarray(strip).save(a.out / "images.png", optimize=True)
    (a.out / "audit.json").write_text(json.dumps({"prompt_seed": AUDIT_PROMPT_SEED, "items": items}, indent=1))
    print(f"wrote {len(items)} images to {a.out}")


def sheets(a) -> None:
    items, images = load_audit(a.data)
    verdicts = None
    if a.verdicts:  # after labelling: the person's label and the evaluator's verdict under each image
        from steer.shapes import evaluate_image

        verdicts = [evaluate_image(im, it["record"]).correct for im, it in zip(images, items)]
    a.out.mkdir(parents=True, exist_ok=True)
    scale, cols, per = 5, 6, 24
    cell_w, cell_h = TILE * scale + 8, TILE * scale + (48 if verdicts else 34)
    for s in range(0, len(items), per):
        idx = list(range(s, min(s + per, len(items))))
        rows = -(-len(idx) // cols)
        sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for j, i in enumerate(idx):
            x, y = (j % cols) * cell_w, (j // cols) * cell_h
            sheet.paste(Image.fromarray(images[i]).resize((TILE * scale, TILE * scale), Image.NEAREST), (x + 4, y + 30))
            prompt = items[i]["record"]["prompt"].removeprefix("a photo of ")
            draw.text((x + 4, y + 2), f"#{i}", fill=(0, 0, 0))
            draw.text((x + 4, y + 15), prompt[:30], fill=(0, 0, 160))
            if verdicts is not None:
                agree = verdicts[i] == items[i]["human"]
                draw.text((x + 4, y + 32 + TILE * scale), f"person {'ok' if items[i]['human'] else 'wrong'} / eval {'ok' if verdicts[i] else 'wrong'}",
                          fill=(0, 120, 0) if agree else (200, 0, 0))
        sheet.save(a.out / f"sheet_{s // per:02d}.png")
    print(f"wrote {-(-len(items) // per)} sheets to {a.out}")


def agreement(items: list[dict], verdicts: list[bool]) -> dict:
    """False accepts / false rejects of ``verdicts`` against the human labels, per model and task."""
    out: dict = {}
    for model in sorted({it["model"] for it in items}, key=["sd", "flow"].index):
        per = {}
        for task in (*TASKS, "all"):
            sel = [(it["human"], v) for it, v in zip(items, verdicts) if it["model"] == model and task in (it["record"]["tag"], "all")]
            wrong = [v for h, v in sel if not h]
            right = [v for h, v in sel if h]
            per[task] = {"images": len(sel), "human_correct": len(right), "human_wrong": len(wrong),
                         "false_accepts": int(sum(wrong)), "false_rejects": int(sum(not v for v in right)),
                         "false_accept_rate": float(np.mean(wrong)) if wrong else 0.0,
                         "false_reject_rate": float(np.mean([not v for v in right])) if right else 0.0}
        out[model] = per
    return out


def score(a) -> dict:
    from steer.shapes import evaluate_image

    items, images = load_audit(a.data)
    if any(it["human"] is None for it in items):
        raise SystemExit(f"{a.data / 'audit.json'}: some images have no human label yet (label them from the sheets first)")
    verdicts = [evaluate_image(im, it["record"]) for im, it in zip(images, items)]
    agree = agreement(items, [v.correct for v in verdicts])
    print(f"{'model':6s}{'task':15s}{'images':>7s}{'wrong':>7s}{'FA':>5s}{'FA rate':>9s}{'right':>7s}{'FR':>5s}{'FR rate':>9s}")
    for model, per in agree.items():
        for task, r in per.items():
            print(f"{model:6s}{task:15s}{r['images']:7d}{r['human_wrong']:7d}{r['false_accepts']:5d}{r['false_accept_rate']:9.3f}"
                  f"{r['human_correct']:7d}{r['false_rejects']:5d}{r['false_reject_rate']:9.3f}")
    disagreements = [{"index": i, "model": it["model"], "prompt": it["record"]["prompt"], "human": it["human"], "note": it["note"],
                      "evaluator": v.correct, "reasons": v.reasons}
                     for i, (it, v) in enumerate(zip(items, verdicts)) if v.correct != it["human"]]
    for d in disagreements:
        print(f"  #{d['index']:3d} {d['model']:4s} human={d['human']!s:5s} {d['prompt']!r}: {d['note']} | evaluator: {'; '.join(d['reasons']) or 'correct'}")
    result = {"agreement": agree, "disagreements": disagreements}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {a.out}")
    return result


def _synthetic(per_kind: int, seed: int = 1):
    """(kind, candidates) of single-object synthetic images: shapes a person recognises and blobs."""
    from steer.shapes.detect import candidates
    from steer.shapes.synthetic import BLOBS, compose, sample_object
    from steer.shapes.world import COLORS, SHAPES

    rng = np.random.default_rng(seed)
    out = []
    for kind in (*SHAPES, *BLOBS):
        for _ in range(per_kind):
            cov = sample_object(rng, kind, wobble=1.0)
            col = COLORS[int(rng.integers(len(COLORS)))]
            layer = (cov, col, COLORS[int(rng.integers(len(COLORS)))]) if rng.random() < 0.2 else (cov, col)
            out.append((kind, candidates(compose([layer], rng, blur=float(rng.uniform(0.3, 1.5))))))
    return out


def calibrate(a) -> dict:
    """Coordinate search of per-class acceptance thresholds on synthetic objects and the even audit half."""
    from dataclasses import asdict, replace

    from steer.eval.geneval import evaluate_detections
    from steer.shapes.detect import ACCEPT, SHAPES_RULES, candidates, resolve
    from steer.shapes.world import SHAPES

    items, images = load_audit(a.data)
    audit = [(it, candidates(im)) for it, im in zip(items, images)]
    synth = _synthetic(a.per_kind)
    cal = [x for i, x in enumerate(audit) if i % 2 == 0]
    held = [x for i, x in enumerate(audit) if i % 2 == 1]

    def audit_rates(part, accept):
        verdicts = [evaluate_detections(it["record"], resolve(c, accept), config=SHAPES_RULES).correct for it, c in part]
        ag = agreement([it for it, _ in part], verdicts)
        return ag, max(ag[m]["all"]["false_accept_rate"] for m in ag), max(ag[m]["all"]["false_reject_rate"] for m in ag)

    def synth_rates(accept):
        fr, fa = [], []
        for kind, c in synth:
            found = [d.label for d in resolve(c, accept) if d.label != "unknown"]
            (fr if kind in SHAPES else fa).append(found != [kind] if kind in SHAPES else bool(found))
        return float(np.mean(fr)), float(np.mean(fa))

    def loss(accept):  # each rate relative to its target (3 % false accepts, 5 % false rejects); synthetic at half weight
        _, afa, afr = audit_rates(cal, accept)
        sfr, sfa = synth_rates(accept)
        return afa / 0.03 + afr / 0.05 + 0.5 * (sfa / 0.03 + sfr / 0.05)

    import itertools

    grid = {"min_iou": [round(x, 2) for x in np.arange(0.76, 0.95, 0.02)], "min_margin": [0.0, 0.03, 0.06],
            "max_spike": [1.12, 1.16, 1.2, 1.3, float("inf")], "min_solidity": [0.0, 0.85, 0.9]}
    accept = dict(ACCEPT)
    best = loss(accept)
    for rnd in range(a.rounds):  # each class's thresholds jointly, the others held fixed
        for cls in SHAPES:
            keys = [k for k in grid if k != "max_spike" or cls == "circle"]
            for values in itertools.product(*(grid[k] for k in keys)):
                trial = {**accept, cls: replace(accept[cls], **dict(zip(keys, values)))}
                l = loss(trial)
                if l < best - 1e-9:
                    best, accept = l, trial
            print(f"round {rnd} {cls}: loss {best:.4f} {accept[cls]}", flush=True)
    ag_cal, *_ = audit_rates(cal, accept)
    ag_held, *_ = audit_rates(held, accept)
    ag_all, *_ = audit_rates(audit, accept)
    sfr, sfa = synth_rates(accept)
    result = {"accept": {c: asdict(v) for c, v in accept.items()}, "loss": best, "synthetic": {"false_reject": sfr, "false_accept": sfa, "per_kind": a.per_kind},
              "audit_calibration_half": ag_cal, "audit_held_out_half": ag_held, "audit_all": ag_all}
    for name, ag in (("calibration half", ag_cal), ("held-out half", ag_held), ("all", ag_all)):
        print(name, {m: (round(r["all"]["false_accept_rate"], 3), round(r["all"]["false_reject_rate"], 3)) for m, r in ag.items()})
    print(f"synthetic: false reject {sfr:.3f}, false accept {sfa:.3f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="generate the audit images")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--per-task", type=int, default=20)
    s = sub.add_parser("sheets", help="contact sheets for labelling (no verdicts)")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--verdicts", action="store_true", help="also print the person's label and the evaluator's verdict")
    c = sub.add_parser("score", help="the evaluator's agreement with the labels")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--out", type=Path)
    k = sub.add_parser("calibrate", help="choose the detector's acceptance thresholds on labelled data")
    k.add_argument("--data", type=Path, required=True)
    k.add_argument("--per-kind", type=int, default=40, help="synthetic objects per shape or blob kind")
    k.add_argument("--rounds", type=int, default=2)
    k.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    return {"make": make, "sheets": sheets, "score": score, "calibrate": calibrate}[a.cmd](a)


if __name__ == "__main__":
    main()
