"""The benchmark harness survives a crash: a killed run resumes with nothing lost or written twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steer.harness import geneval as hg
from steer.harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["geneval", "generate", "--metadata", "shapes", "--per-task", "1", "--images-per-prompt", "2", "--model", "shapes-sd",
        "--method", "smc", "--particles", "4", "--steps", "6", "--threads", "1", "--no-progress"]
VOLATILE = {"seconds", "peak_memory_mb", "trace"}


def _spawn(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "steer.harness", *ARGS, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _records(out: Path) -> list[Path]:
    return sorted(out.glob("0*/steer/*.json"))


def _content(out: Path) -> dict:
    """Every image's bytes and record (minus timings) by relative path; any leftover temporary file shows too."""
    found = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "run.json":
            rel = str(p.relative_to(out))
            if p.suffix == ".json":
                found[rel] = {k: v for k, v in json.loads(p.read_text()).items() if k not in VOLATILE}
            else:
                found[rel] = p.read_bytes()
    return found


def test_resume_after_kill_matches_unbroken_run(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    expected = 6 * 2
    ref = _spawn(reference)  # runs beside the one we kill (2 cores, 1 thread each)
    proc = _spawn(killed)
    deadline = time.time() + 240
    while len(_records(killed)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    made_before = len(_records(killed))
    assert 3 <= made_before < expected, f"the run was not killed mid-way ({made_before} of {expected} images): test did not test resuming"
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    again = _spawn(killed)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert f"generated {expected - made_before} images, {made_before} already there" in out or \
        f"generated {expected - made_before + 1} images" in out, out  # a chunk interrupted between image and record is redone

    got, want = _content(killed), _content(reference)
    assert sorted(got) == sorted(want)  # same files: none lost, none extra, no temporary leftovers
    assert len([k for k in got if k.endswith(".png")]) == expected
    for key in want:
        assert got[key] == want[key], key  # same images byte for byte, same records


def test_resume_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["geneval", "generate", "--metadata", "shapes", "--per-task", "1", "--tasks", "single_object", "--images-per-prompt", "1",
            "--model", "shapes-sd", "--steps", "2", "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(base) == 0
    assert main(base) == 0  # the same command again: nothing to do
    assert "generated 0 images, 1 already there" in capsys.readouterr().out
    assert main([*base[:-2], "--steps", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "steps: 2 → 3" in err
    assert main(["geneval", "summary", "--out", str(out), "--evaluator", "shape"]) == 2  # a misspelt evaluator, not an empty summary
    assert "use shapes or mask2former" in capsys.readouterr().err


def test_resume_sharded_runs_merge_into_one_summary(tmp_path, capsys):
    """Two shards written separately into one folder give the unsharded run's images and summary."""
    args = ["--metadata", "shapes", "--per-task", "1", "--images-per-prompt", "2", "--model", "shapes-sd", "--steps", "3",
            "--threads", "1", "--no-progress"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["geneval", "run", *args, "--out", str(whole)]) == 0
    assert main(["geneval", "run", *args, "--shard", "0/2", "--out", str(split)]) == 0
    first = json.loads((split / "results" / "shapes.json").read_text())
    assert first["scored"] == 6 and first["expected"] == 12  # half there: the summary says so
    assert "not generated or scored yet" in capsys.readouterr().out
    assert main(["geneval", "run", *args, "--shard", "1/2", "--out", str(split)]) == 0
    a = json.loads((whole / "results" / "shapes.json").read_text())
    b = json.loads((split / "results" / "shapes.json").read_text())
    assert b["scored"] == b["expected"] == 12
    assert (a["overall"], a["tasks"], a["nfe_per_image"]) == (b["overall"], b["tasks"], b["nfe_per_image"])
    assert sorted(p.relative_to(whole) for p in whole.rglob("*.png")) == sorted(p.relative_to(split) for p in split.rglob("*.png"))
    for p in whole.rglob("samples/*.png"):
        assert p.read_bytes() == (split / p.relative_to(whole)).read_bytes()
    assert len(hg.prompt_folders(split)) == 6


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun process group test on Linux")
def test_resume_torchrun_two_processes_shard_and_merge(tmp_path):
    """Under a launcher (torchrun; accelerate launch sets the same variables) prompts are split over processes."""
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "steer.harness", "geneval", "run", "--metadata", "shapes",
           "--per-task", "1", "--images-per-prompt", "1", "--model", "shapes-sd", "--steps", "2", "--threads", "1", "--no-progress", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[shard 0/2] generated 3 images" in res.stdout and "[shard 1/2] generated 3 images" in res.stdout
    s = json.loads((out / "results" / "shapes.json").read_text())
    assert s["scored"] == s["expected"] == 6
