"""T2I-CompBench harness end to end on tiny random models (BLIP-VQA, open_clip, Mask2Former, a tiny spaCy parser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steer.harness import compbench as hc
from steer.harness.cli import main

PROMPTS = {
    "color": ["a red car and a blue bench", "a green bowl and a white cake"],
    "spatial": ["a dog on the left of a cat", "a car on the top of a bench"],
    "non_spatial": ["a dog is sleeping on a bench", "a cat / a dog"],
    "complex": ["a red car on the left of a blue bench", "the black dog and the white cat"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compbench")
    for cat, lines in PROMPTS.items():
        (folder / f"{cat}_val.txt").write_text("\n".join(lines))  # no trailing newline, like the benchmark's files
    (folder / "complex_val_spatial.txt").write_text(PROMPTS["complex"][0] + "\n")
    (folder / "complex_val_action.txt").write_text("a dog is sleeping\n")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from test_rewards import write_open_clip_dir
    from tiny_eval_models import write_mask2former_dir
    from tiny_vqa_models import write_blip_vqa_dir, write_spacy_pipeline

    root = tmp_path_factory.mktemp("models")
    return {"blip": write_blip_vqa_dir(root / "blip"), "clip": write_open_clip_dir(root / "oc"), "detector": write_mask2former_dir(root / "m2f"),
            "spacy": write_spacy_pipeline(root / "spacy")}


def _eval_args(models: dict) -> list[str]:
    return ["--blip", str(models["blip"]), "--clip", str(models["clip"]), "--clip-pretrained", "", "--detector", str(models["detector"]),
            "--spacy-model", str(models["spacy"])]


def test_compbench_end_to_end_tiny_models(tmp_path, prompts_dir, models, capsys):
    from tiny_pipelines import sd

    pipe_dir = tmp_path / "sd"
    sd().save_pretrained(pipe_dir)
    out = tmp_path / "run"
    assert main(["compbench", "run", "--prompts-dir", str(prompts_dir), "--categories", "color,spatial,non_spatial,complex", "--model", str(pipe_dir),
                 "--steps", "2", "--images-per-prompt", "3", "--seed", "42", "--no-progress", "--out", str(out), *_eval_args(models)]) == 0
    # the benchmark's naming: {prompt}_{NNNNNN}.png with a running index (prompt p, image k → 3p + k)
    names = sorted(p.name for p in (out / "color" / "samples").iterdir())
    assert names == sorted([f"a red car and a blue bench_{i:06d}.png" for i in range(3)] + [f"a green bowl and a white cake_{i:06d}.png" for i in range(3, 6)])
    assert (out / "non_spatial" / "samples" / "a cat   a dog_000003.png").is_file()  # a "/" never makes a folder
    rec = json.loads((out / "spatial" / "steer" / "000004.json").read_text())
    assert rec["prompt"] == "a car on the top of a bench" and rec["seed"] == 43 and rec["nfe"] == 2 and rec["category"] == "spatial"
    for cat in PROMPTS:
        scores = [json.loads(p.read_text())["score"] for p in sorted((out / cat / "steer" / "compbench").glob("*.json"))]
        assert len(scores) == 6 and all(isinstance(s, float) for s in scores)
    s = json.loads((out / "results" / "compbench.json").read_text())
    assert set(s["categories"]) == set(PROMPTS) and s["scored"] == s["expected"] == 24
    assert 0 < s["categories"]["color"] < 1 and -1 <= s["categories"]["non_spatial"] <= 1
    assert s["evaluator_info"] and "transformers" in json.dumps(s["evaluator_info"])
    # the complex subset lists beside the prompts decide which parts the 3-in-1 score averages
    assert s["evaluator_info"]["complex_subsets"] == [str(prompts_dir / "complex_val_action.txt"), str(prompts_dir / "complex_val_spatial.txt")]
    from PIL import Image

    from steer.eval.compbench import load_compbench_evaluator

    ev = load_compbench_evaluator(blip=models["blip"], clip=models["clip"], clip_pretrained=None, spacy_model=models["spacy"],
                                  detector=lambda images: [[] for _ in images])
    rec = json.loads((out / "complex" / "steer" / "000000.json").read_text())  # "a red car on the left of a blue bench": spatial subset
    with Image.open(out / "complex" / "samples" / rec["image"]) as im:
        blip = ev.evaluate("color", [im.convert("RGB")], [rec["prompt"]])[0]
    stored = json.loads((out / "complex" / "steer" / "compbench" / "000000.json").read_text())["score"]
    assert stored == pytest.approx((blip + 0.0) / 2, abs=1e-5)  # BLIP and spatial only (nothing detected: spatial 0)
    assert "| reward | color | complex | non_spatial | spatial | images |" in (out / "results" / "compbench.md").read_text()
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "sheet_0_run.png").is_file() and json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["scored"] == 24


def test_compbench_scores_match_the_evaluator_directly(tmp_path, prompts_dir, models):
    """The harness's stored scores equal the evaluator's on the saved images (nothing lost between files)."""
    from PIL import Image

    from steer.eval.compbench import load_compbench_evaluator

    out = tmp_path / "run"
    assert main(["compbench", "run", "--prompts-dir", str(prompts_dir), "--categories", "color", "--model", "shapes-sd", "--steps", "2",
                 "--images-per-prompt", "2", "--no-progress", "--out", str(out), *_eval_args(models)]) == 0
    ev = load_compbench_evaluator(blip=models["blip"], clip=models["clip"], clip_pretrained=None, spacy_model=models["spacy"])
    for p in sorted((out / "color" / "steer").glob("*.json")):
        rec = json.loads(p.read_text())
        with Image.open(out / "color" / "samples" / rec["image"]) as im:
            want = ev.evaluate("color", [im.convert("RGB")], [rec["prompt"]])[0]
        assert json.loads((p.parent / "compbench" / p.name).read_text())["score"] == pytest.approx(want, abs=1e-6)


def test_compbench_resume_skips_done_and_bad_input(tmp_path, prompts_dir, capsys):
    out = tmp_path / "run"
    args = ["compbench", "generate", "--prompts-dir", str(prompts_dir), "--categories", "color", "--model", "shapes-sd", "--steps", "2",
            "--images-per-prompt", "2", "--limit", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    (out / "color" / "steer" / "000001.json").unlink()  # as if killed between the image and its record
    assert main(args) == 0
    assert "generated 1 images, 1 already there" in capsys.readouterr().out
    assert main([*args[:5], "colour", *args[6:]]) == 2
    assert "unknown T2I-CompBench category colour" in capsys.readouterr().err
    assert main([*args, "--limit", "0"]) == 2 and "--limit must be >= 1" in capsys.readouterr().err
    # missing evaluator weights are one line, not a traceback
    assert main(["compbench", "evaluate", "--out", str(out), "--blip", str(tmp_path / "no_blip"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "no_blip") in err and err.count("\n") == 1
    assert main(["compbench", "run", "--prompts-dir", str(tmp_path / "none"), "--categories", "color", "--model", "shapes-sd", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none") in err and err.count("\n") == 1


def test_compbench_jobs_index_and_shards(tmp_path):
    from steer.harness import GenerationSettings, Shard

    settings = GenerationSettings(model="shapes-sd", images_per_prompt=10, seed=42)
    jobs = hc.jobs(tmp_path, "color", [(0, "a red car"), (1, "a blue bench")], settings)
    assert [s.image.name for s in jobs[1].slots][:2] == ["a blue bench_000010.png", "a blue bench_000011.png"]
    assert [s.seed for s in jobs[0].slots] == list(range(42, 52))  # the reference's seeds 42..51
    assert Shard(1, 2).take(list(range(5))) == [1, 3]
