"""GenEval harness end to end: any diffusers pipeline × any method → GenEval layout → evaluator → summary → report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steer.harness import GenerationSettings, HarnessError
from steer.harness import geneval as hg
from steer.harness.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "geneval" / "evaluation_metadata.jsonl"
TINY = [
    {"tag": "single_object", "include": [{"class": "wine glass", "count": 1}], "prompt": "a photo of a wine glass"},
    {"tag": "two_object", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1}], "prompt": "a photo of a cup and a dog"},
    {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}], "prompt": "a photo of two cats"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
    {"tag": "position", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a dog left of a cup"},
    {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "wine glass", "count": 1, "color": "blue"}],
     "prompt": "a photo of a red car and a blue wine glass"},
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny random StableDiffusionPipeline saved as a local folder (what a user passes as --model)."""
    from tiny_pipelines import sd

    folder = tmp_path_factory.mktemp("tiny_sd")
    sd().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def metadata(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("meta") / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TINY))
    return path


def test_geneval_layout_and_shapes_summary(tmp_path, capsys):
    out = tmp_path / "smc"
    argv = ["geneval", "run", "--metadata", "shapes", "--per-task", "1", "--images-per-prompt", "2", "--model", "shapes-sd",
            "--method", "smc", "--particles", "2", "--steps", "4", "--option", "potential=max", "--seed", "5", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "smc×2 (potential=max)" in printed and "12/12" in printed
    folders = hg.prompt_folders(out)
    assert [f.name for f in folders] == ["00000", "00048", "00096", "00144", "00192", "00240"]  # line numbers of the metadata file
    from steer.shapes import load_prompts

    prompts = load_prompts()
    for f in folders:
        assert json.loads((f / "metadata.jsonl").read_text()) == prompts[int(f.name)]  # GenEval's one-record metadata file
        assert sorted(p.name for p in (f / "samples").iterdir()) == ["0000.png", "0001.png"]
        rec = json.loads((f / "steer" / "0001.json").read_text())
        assert rec["seed"] == 6 and rec["nfe"] == 8 and rec["reward_calls"] > 0 and rec["reward"] is not None and rec["seconds"] > 0
        verdict = json.loads((f / "steer" / "shapes" / "0001.json").read_text())
        assert verdict["tag"] == prompts[int(f.name)]["tag"] and isinstance(verdict["correct"], bool)
    s = json.loads((out / "results" / "shapes.json").read_text())
    assert set(s["tasks"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert s["overall"] == pytest.approx(sum(s["tasks"].values()) / 6)
    assert (s["method"], s["particles"], s["seeds"], s["options"], s["nfe_per_image"]) == ("smc", 2, [5, 6], {"potential": "max"}, 8)
    assert s["peak_memory_mb"] > 0 and s["seconds_total"] > 0 and s["scored"] == s["expected"] == 12 and s["devices"] == ["cpu"]
    # the verdicts are the shapes evaluator's on the saved images
    from PIL import Image

    from steer.shapes import evaluate_image

    f = folders[3]
    with Image.open(f / "samples" / "0000.png") as im:
        v = evaluate_image(im.convert("RGB"), prompts[int(f.name)])
    assert json.loads((f / "steer" / "shapes" / "0000.json").read_text())["correct"] == v.correct
    assert (out / "results" / "shapes.md").read_text().startswith("GenEval by `shapes`")


def test_geneval_report_across_methods(tmp_path, capsys):
    runs = []
    for method, extra in (("none", ["--reward", "shapes_clip"]), ("best_of_n", ["--particles", "2"])):
        out = tmp_path / method
        assert main(["geneval", "run", "--metadata", "shapes", "--per-task", "1", "--tasks", "single_object,colors", "--images-per-prompt", "1",
                     "--model", "shapes-flow", "--method", method, *extra, "--steps", "3", "--no-progress", "--out", str(out)]) == 0
        runs.append(out)
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows, pairs = report["runs"], report["paired_vs_first"]
    assert len(pairs) == 1 and pairs[0]["prompts"] == 2 and pairs[0]["low"] <= pairs[0]["diff"] <= pairs[0]["high"]
    assert pairs[0]["diff"] == pytest.approx(rows[1]["overall"] - rows[0]["overall"])  # same prompts and seeds: the overall difference
    assert [r["method"] for r in rows] == ["none", "best_of_n"]
    assert rows[0]["nfe_per_image"] == 3 and rows[1]["nfe_per_image"] == 6 and rows[0]["reward_calls_per_image"] == 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| shapes-flow | plain |" in md and "| shapes-flow | best_of_n×2 |" in md and "colors" in md and "95 % paired bootstrap" in md
    from steer.harness.report import paired_difference

    same = paired_difference(rows[1], rows[1])
    assert (same["diff"], same["low"], same["high"], same["verdict"]) == (0.0, 0.0, 0.0, "tie")
    other = paired_difference({**rows[1], "distinct_seeds": True}, rows[0])
    assert other["verdict"] == "not paired" and "other seeds" in other["note"]
    png = tmp_path / "report" / "report.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    with Image.open(tmp_path / "report" / "sheet_1_best_of_n.png") as sheet:  # 2 tasks × 1 prompt: 2 rows of tiles
        assert sheet.size == (4 * 128, 2 * (128 + 44))


def test_geneval_any_diffusers_pipeline_with_tiny_mask2former_and_clip(tmp_path, tiny_sd_dir, metadata, capsys):
    """A plain diffusers folder, the neural evaluator (tiny random Mask2Former + open_clip built here), every task."""
    from test_rewards import write_open_clip_dir
    from tiny_eval_models import write_mask2former_dir

    det = write_mask2former_dir(tmp_path / "m2f")
    clip = write_open_clip_dir(tmp_path / "oc")
    out = tmp_path / "run"
    assert main(["geneval", "generate", "--metadata", str(metadata), "--model", str(tiny_sd_dir), "--steps", "2", "--images-per-prompt", "2",
                 "--batch-size", "2", "--no-progress", "--out", str(out)]) == 0
    assert main(["geneval", "evaluate", "--out", str(out), "--detector", str(det), "--clip", str(clip), "--clip-pretrained", "",
                 "--no-progress"]) == 0
    s = json.loads((out / "results" / "mask2former.json").read_text())
    assert s["scored"] == s["expected"] == 12 and set(s["tasks"]) == {r["tag"] for r in TINY}
    assert s["evaluator_info"]["detector"]["model"] == str(det)
    rec = json.loads((out / "00003" / "steer" / "0001.json").read_text())
    assert rec["batch"] == 2 and rec["nfe"] == 2 and rec["seed"] == 1 and rec["reward"] is None
    # a verdict file per image, with the rule engine's reasons
    v = json.loads((out / "00003" / "steer" / "mask2former" / "0000.json").read_text())
    assert v["tag"] == "colors" and isinstance(v["reasons"], list)
    # the summary can be rebuilt from the files alone
    assert main(["geneval", "summary", "--out", str(out), "--evaluator", "mask2former"]) == 0
    assert json.loads((out / "results" / "mask2former.json").read_text())["overall"] == s["overall"]


def test_geneval_steered_diffusers_pipeline(tmp_path, tiny_sd_dir, metadata):
    """A steer method on a plain diffusers folder, with a reward registered by the user."""
    from steer.rewards import Reward, register_reward
    from steer.rewards import registry

    class Brightness(Reward):
        name = "brightness"

        def forward(self, images, prompts, noise_level=None):
            return images.mean(dim=(1, 2, 3))

    register_reward("brightness_test", lambda **kw: Brightness())
    try:
        out = tmp_path / "smc"
        assert main(["geneval", "generate", "--metadata", str(metadata), "--model", str(tiny_sd_dir), "--method", "smc", "--reward", "brightness_test",
                     "--scheduler", "EulerAncestralDiscreteScheduler", "--particles", "3", "--steps", "2", "--images-per-prompt", "1", "--no-progress", "--out", str(out)]) == 0
    finally:
        registry._REGISTRY.pop("brightness_test", None)
    rec = json.loads((out / "00000" / "steer" / "0000.json").read_text())
    assert rec["nfe"] == 6 and rec["reward_calls"] >= 3 and rec["trace"]["nfe"] == 6 and rec["reward"] is not None
    assert json.loads((out / "run.json").read_text())["settings"]["scheduler"] == "EulerAncestralDiscreteScheduler"


def test_geneval_official_metadata_selection():
    if not SHARED.is_file():
        pytest.skip("GenEval metadata not in ../shared/datasets")
    from steer.eval.geneval import load_metadata

    records = load_metadata(SHARED)
    assert len(records) == 553
    chosen = hg.select(records, per_task=2)
    assert len(chosen) == 12 and all(records[i] == r for i, r in chosen)
    assert len(hg.select(records, tasks=["counting"])) == 80


@pytest.mark.parametrize("argv, message", [
    (["geneval", "run", "--metadata", "nope.jsonl", "--model", "shapes-sd"], "nope.jsonl"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--tasks", "colours"], "unknown task(s) colours"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--method", "beam"], "unknown method 'beam'"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--option", "lam=2"], "takes none of them"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--max-nfe", "50"], "takes none of them"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--method", "smc", "--option", "nope=1"], "nope"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--images-per-prompt", "0"], "images_per_prompt must be"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--shard", "2/2"], "shard 2/2"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--scheduler", "DDIM"], "unknown scheduler 'DDIM'"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--per-task", "0"], "--per-task must be >= 1"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--method", "smc", "--eta", "-1"], "eta must be >= 0"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--guidance", "nan"], "guidance must be a finite number"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--reward", "nosuch"], "unknown reward 'nosuch'"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--height", "-8"], "height must be an integer >= 1"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--eval-batch", "0"], "--eval-batch must be >= 1"),
    (["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--threads", "0"], "--threads must be >= 1"),
    (["geneval", "evaluate"], "--out"),
    (["report", "nowhere"], "--out"),
])
def test_geneval_bad_input_named(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "o")] if argv[-1] != "evaluate" and argv[0] != "report" else argv) == 2
    assert message in capsys.readouterr().err


def test_geneval_real_model_search_needs_a_reward(tiny_sd_dir):
    with pytest.raises(HarnessError, match="--reward"):
        GenerationSettings(model=str(tiny_sd_dir), method="smc")
    assert GenerationSettings(model="shapes-sd", method="smc").reward == "shapes_clip"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_geneval_on_cuda_records_cuda_peak_memory(tmp_path):
    out = tmp_path / "cuda"
    assert main(["geneval", "run", "--metadata", "shapes", "--per-task", "1", "--tasks", "colors", "--images-per-prompt", "2", "--model", "shapes-sd",
                 "--method", "smc", "--particles", "4", "--steps", "4", "--device", "cuda", "--no-progress", "--out", str(out)]) == 0
    s = json.loads((out / "results" / "shapes.json").read_text())
    assert s["memory_kind"] == "cuda_max_allocated" and s["peak_memory_mb"] > 0 and s["scored"] == 2


def test_geneval_steer_command_passes_through(tmp_path, capsys):
    from steer.cli import main as steer_main

    with pytest.raises(SystemExit) as e:
        steer_main(["geneval", "run", "--help"])
    assert e.value.code == 0 and "--metadata" in capsys.readouterr().out
    assert steer_main(["geneval", "run", "--metadata", "shapes", "--model", "shapes-sd", "--method", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_geneval_seed_schemes(tmp_path):
    same = GenerationSettings(model="shapes-sd", seed=10)
    distinct = GenerationSettings(model="shapes-sd", seed=10, distinct_seeds=True)
    assert same.seeds(7) == [10, 11, 12, 13]  # GenEval: image k of every prompt uses seed + k
    assert distinct.seeds(7) == [38, 39, 40, 41]  # seed + line · 4 + k
    jobs = hg.jobs(tmp_path, [(5, TINY[0])], distinct)
    assert [s.seed for s in jobs[0].slots] == [30, 31, 32, 33]


def test_geneval_plain_images_equal_direct_pipeline_calls(tmp_path):
    """--method none is the unmodified pipeline: the saved PNG equals a direct call with the recorded seed."""
    import numpy as np
    from PIL import Image

    from steer.harness import load_pipeline
    from steer.shapes import load_prompts

    out = tmp_path / "plain"
    assert main(["geneval", "generate", "--metadata", "shapes", "--per-task", "1", "--tasks", "position", "--images-per-prompt", "2",
                 "--model", "shapes-sd", "--steps", "3", "--guidance", "5", "--seed", "7", "--no-progress", "--out", str(out)]) == 0
    pipe = load_pipeline("shapes-sd")
    line = int(hg.prompt_folders(out)[0].name)
    direct = pipe(load_prompts()[line]["prompt"], num_inference_steps=3, guidance_scale=5.0, generator=[torch.Generator().manual_seed(8)],
                  output_type="pil").images[0]
    with Image.open(out / f"{line:05d}" / "samples" / "0001.png") as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(direct))
