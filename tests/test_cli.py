"""The ``steer`` command on the shapes models with tiny settings: generate, bench, train, app; bad input → one line, exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from steer.cli import TRAINERS, benchmark_names, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_generate_writes_images_and_traces(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a photo of a blue square"}\n\n"a photo of a circle"\n')
    out = tmp_path / "out"
    rc = main(["generate", "a photo of a red circle", "--prompts", str(prompts), "--steps", "4", "--particles", "2", "--option", "lam=0.1",
               "--option", "window=(0.0, 1.0)", "--out", str(out), "--all", "--seed", "5"])
    assert rc == 0
    pngs = sorted(p.name for p in out.glob("*.png") if not re.search(r"_p\d\d$", p.stem))
    assert pngs == ["000_a_photo_of_a_red_circle.png", "001_a_photo_of_a_blue_square.png", "002_a_photo_of_a_circle.png"]
    for i, name in enumerate(pngs):
        rec = json.loads((out / name).with_suffix(".json").read_text())
        assert Image.open(out / name).size == (32, 32)
        assert rec["seed"] == 5 + i and rec["method"] == "smc" and rec["options"]["lam"] == 0.1
        assert rec["trace"]["nfe"] == 8 and rec["trace"]["options"]["lam"] == 0.1 and rec["trace"]["steps"]
        assert rec["reward_value"] == rec["rewards"][rec["selected"]] and rec["verdict"]["correct"] in (True, False)
        assert len(rec["particle_images"]) == 2 and all((out / p).is_file() for p in rec["particle_images"])
    text = capsys.readouterr().out
    assert "exact evaluator:" in text and "/3 correct" in text


def test_generate_flow_model_and_another_method(tmp_path):
    assert main(["generate", "a photo of a square", "--model", "shapes-flow", "--method", "best_of_n", "--steps", "3", "--particles", "2",
                 "--max-nfe", "6", "--out", str(tmp_path)]) == 0
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert rec["model"] == "shapes-flow" and rec["trace"]["method"] == "best_of_n" and rec["trace"]["nfe"] == 6


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--particles", "0"], "--particles must be >= 1"),
    (["generate", "x", "--method", "nope"], "invalid choice"),
    (["generate", "x", "--option", "nope=1"], "no such option"),
    (["generate", "x", "--option", "lam"], "KEY=VALUE"),
    (["generate", "x", "--reward", "nope"], "unknown reward"),
    (["generate", "x", "--model", "/no/such/folder"], "model_index.json"),
    (["generate", "x", "--steps", "four"], "invalid int value"),
    (["generate"], "give prompts"),
    (["generate", "--prompts", "/no/such.jsonl"], "no such file"),
    (["generate", "a photo of a circle", "--steps", "4", "--particles", "2", "--max-nfe", "3"], "max_nfe"),
    (["generate", "a photo of a circle", "--steps", "4", "--option", "lam=-1"], "lam"),
    (["bench", "nope"], "unknown benchmark"),
    (["train", "nope"], "unknown trainer"),
    (["nope"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    rc = main([*argv, "--out", str(tmp_path)] if argv[0] == "generate" and "--out" not in argv else argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_help_of_every_subcommand():
    for argv in (["--help"], ["generate", "--help"], ["bench", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    for name in TRAINERS:
        with pytest.raises(SystemExit) as e:
            main(["train", name, "--help"])
        assert e.value.code == 0, name
    assert {"shapes_baseline", "shapes_scaling"} <= set(benchmark_names())
    for name in ("shapes_baseline", "shapes_scaling"):  # (others' scripts may not all take --help)
        with pytest.raises(SystemExit) as e:
            main(["bench", name, "--help"])
        assert e.value.code == 0, name


def test_list_options_covers_every_method(capsys):
    from steer.search import METHODS

    assert main(["generate", "--list-options"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in METHODS) and "lam=" in text and "schedule=" in text


def test_train_pgraft_tiny_run(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a photo of a red circle"}\n{"prompt": "a photo of a blue square"}\n')
    rc = main(["train", "pgraft", "--model", "shapes-sd", "--prompts", str(prompts), "--trajectories", "2", "--train-steps", "2", "--steps", "4",
               "--n-i", "2", "--batch", "4", "--threads", "1", "--no-progress", "--out", str(tmp_path / "run")])
    assert rc == 0 and (tmp_path / "run" / "final").is_dir() and (tmp_path / "run" / "log.json").is_file()


def test_console_script_and_app_help():
    """The installed console script (or python -m steer) runs the app's --help through the CLI."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "steer", "app", "--help"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "--allow" in r.stdout and "127.0.0.1" in r.stdout
    r = subprocess.run([sys.executable, "-m", "steer", "generate", "x", "--particles", "-3"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "steer generate: error: --particles must be >= 1, got -3"


def test_generate_model_names_hub_ids_too(tmp_path):
    from steer.cli import UsageError, _check_model

    _check_model("stabilityai/sd-turbo")  # a hub id goes to from_pretrained (cached weights, or the hub)
    _check_model("shapes-flow")
    for bad in ("no model", str(tmp_path)):  # not an id, or a folder without model_index.json
        with pytest.raises(UsageError, match="hub id"):
            _check_model(bad)
