"""The demo app, for real: started on loopback and driven with gradio_client and headless Chromium; the engine's
per-step hook and its per-pipeline lock (two threads on one model give the sequential results)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app package lives in the source checkout

gr = pytest.importorskip("gradio", reason="the app needs gradio: pip install -e '.[app]'")
gradio_client = pytest.importorskip("gradio_client")

import steer  # noqa: E402
from app import Limits, ModelStore, build_app  # noqa: E402
from app.core import method_options, parse_options  # noqa: E402
from steer.search import METHODS  # noqa: E402

PROMPT = "a photo of a red circle"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store():
    torch.set_num_threads(1)
    return ModelStore()


@pytest.fixture(scope="module")
def server(store):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_app(store, Limits(max_particles=8, max_steps=20))
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    yield url
    demo.close()


def _generate(client, method="smc", particles=2, steps=4, seed=0, options=None, compare=True, prompt=PROMPT):
    return client.predict(prompt, "shapes-sd", method, "shapes_clip", particles, steps, 5.0, seed, None, None, compare,
                          json.dumps(options or {}), api_name="/generate")


# ------------------------------------------------------------------------------------- engine: hook and lock


def test_every_method_has_widgets_from_its_signature():
    for name in METHODS:
        specs = method_options(name)
        assert [s.name for s in specs] == [n for n in __import__("inspect").signature(METHODS[name].__init__).parameters
                                          if n not in ("self", "options")]
    kinds = {s.name: s.kind for s in method_options("smc")}
    assert kinds["potential_reward"] == "reward" and kinds["ess_threshold"] == "float" and kinds["interval"] == "text" and kinds["ess_target"] == "float"
    assert parse_options("smc", {"lam": "0.1", "potential": "max", "window": "(0.2, 1.0)", "interval": None}) == {"lam": 0.1, "window": (0.2, 1.0)}
    with pytest.raises(ValueError, match="no_such"):
        parse_options("smc", {"no_such": 1})


def test_callback_reports_steps_and_scored_particles(store):
    pipe = store.pipe("shapes-sd")
    events = []
    out = steer.wrap(pipe, method="smc", reward=store.reward("shapes_clip"))(
        PROMPT, num_inference_steps=4, num_particles=2, lam=0.1, generator=torch.Generator().manual_seed(0), callback=events.append)
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == [0, 1, 2, 3, 4]
    scores = [e for e in events if e["event"] == "score"]
    assert len(scores) == len(out.trace.steps) + 1  # each potential step, then the final images
    for e, row in zip(scores, out.trace.steps):
        assert e["images"].shape == (2, 3, 32, 32) and e["rewards"] == pytest.approx(row["rewards"][0])
    assert scores[-1]["rewards"] == pytest.approx(out.trace.final_rewards[0])
    with pytest.raises(TypeError, match="callback"):
        steer.wrap(pipe, method="smc", reward=store.reward("shapes_clip"))(PROMPT, num_inference_steps=2, callback=3)


def test_threads_on_one_model_give_the_sequential_results(store):
    """Different per-call settings (eta, max_batch, particles, steps) on one steered pipeline and on a second one
    wrapping the same diffusers pipeline, from three threads (without the lock the results differ or the call fails)."""
    pipe, reward = store.pipe("shapes-sd"), store.reward("shapes_clip")
    a = steer.wrap(pipe, method="smc", reward=reward, lam=0.1)
    b = steer.wrap(pipe, method="best_of_n", reward=reward)
    calls = [(a, dict(num_inference_steps=6, num_particles=3, eta=1.0, max_batch=1, seed=1)),
             (a, dict(num_inference_steps=4, num_particles=2, eta=0.5, seed=2)),
             (b, dict(num_inference_steps=5, num_particles=2, eta=0.0, seed=3))]

    def call(i):
        steered, kw = calls[i]
        kw = dict(kw)
        return steered(PROMPT, output_type="np", return_all=True, generator=torch.Generator().manual_seed(kw.pop("seed")), **kw)

    sequential = [call(i) for i in range(len(calls))]
    for _ in range(2):
        results, errors = [None] * len(calls), []

        def work(i):
            try:
                results[i] = call(i)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for seq, par in zip(sequential, results):
            np.testing.assert_array_equal(seq.images, par.images)
            assert seq.rewards == par.rewards and seq.trace.nfe == par.trace.nfe and seq.trace.steps == par.trace.steps


# --------------------------------------------------------------------------------------------- the app


def test_app_generates_with_verdicts_and_trace(server):
    client = gradio_client.Client(server, verbose=False)
    progress, live, final, verdict_md, compute_md, plot, side, compare_md, summary = _generate(client, options={"lam": 0.1})
    assert "done" in progress
    assert len(final) == 2 and all(Path(item["image"]).is_file() for item in final)
    assert len(live) == 2 and all("r=" in item["caption"] for item in live)
    assert sum("★" in item["caption"] for item in final) == 1
    parts = summary["particles"]
    assert [p["particle"] for p in parts] == [0, 1] and all(p["verdict"]["correct"] in (True, False) for p in parts)
    pick = parts[summary["selected"]]
    assert ("correct" if pick["verdict"]["correct"] else "wrong") in verdict_md
    trace = summary["trace"]
    assert trace["method"] == "smc" and trace["options"]["lam"] == 0.1 and trace["num_steps"] == 4
    assert trace["nfe"] == 8 == summary["compute"]["nfe"] and trace["reward_calls"] == summary["compute"]["reward_calls"] > 0
    assert trace["steps"] and all("ancestors" in row and "ess" in row for row in trace["steps"])
    assert f"{trace['nfe']} NFE" in compute_md
    assert plot is not None
    cmp = summary["compare"]  # the base sampler at equal compute: best-of-(NFE / steps), same seed
    assert cmp["best_of_n_particles"] == 2 and cmp["best_of_n"]["nfe"] == 8 and cmp["base"]["nfe"] == 4 and len(side) == 3
    assert "best-of-2" in compare_md and "smc: 8 NFE" in compare_md


def test_app_rejects_bad_input(server):
    client = gradio_client.Client(server, verbose=False)
    # bounds and choices are checked by the components and again by the handler; each error names the bad value
    for kwargs, message in ((dict(particles=99), "particles|greater than maximum"), (dict(steps=0), "steps|less than minimum"), (dict(method="nope"), "nope"),
                            (dict(options={"bogus": 1}), "bogus"), (dict(prompt="  "), "prompt")):
        with pytest.raises(Exception, match=message):
            _generate(client, **kwargs)
    with pytest.raises(Exception, match="/etc"):  # models only from the fixed list: no paths from the page
        client.predict(PROMPT, "/etc", "smc", "shapes_clip", 2, 4, 5.0, 0, None, None, False, "{}", api_name="/generate")


def test_app_concurrent_requests_match_sequential(server):
    client = gradio_client.Client(server, verbose=False)
    settings = [dict(method="smc", particles=3, steps=5, seed=3, options={"lam": 0.1}, compare=False),
                dict(method="best_of_n", particles=2, steps=4, seed=4, compare=False)]
    sequential = [_generate(client, **s)[-1] for s in settings]
    jobs = [client.submit(PROMPT, "shapes-sd", s["method"], "shapes_clip", s["particles"], s["steps"], 5.0, s["seed"], None, None, False,
                          json.dumps(s.get("options", {})), api_name="/generate") for s in settings]
    concurrent = [job.result(timeout=120)[-1] for job in jobs]
    for seq, par in zip(sequential, concurrent):
        assert seq["particles"] == par["particles"]
        assert seq["trace"]["final_rewards"] == par["trace"]["final_rewards"] and seq["trace"]["steps"] == par["trace"]["steps"]


# ------------------------------------------------------------------------------------ headless Chromium


def _browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    pw = sync_api.sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
    except Exception as e:  # noqa: BLE001
        pw.stop()
        pytest.skip(f"Chromium at {exe} could not be launched: {str(e).splitlines()[0]}")
    return pw, browser


def test_browser_runs_smc_and_shows_the_verdict(server, tmp_path):
    """Types a prompt, runs SMC from the page, waits for the final gallery and reads the exact evaluator's verdict.
    The screenshot goes to tmp_path (and to $STEER_SCREENSHOT when set, e.g. results/app_screenshot.png)."""
    pw, browser = _browser()
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1500})
        page.goto(server, wait_until="networkidle")
        box = page.locator("#prompt textarea")
        box.fill("a photo of a blue square")
        steps = page.get_by_label("steps", exact=True)
        steps.fill("6")
        page.locator("#run").click()
        verdict = page.locator("#verdict")
        try:
            verdict.get_by_text("exact evaluator on the pick").wait_for(timeout=90_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
            raise AssertionError(f"no verdict on the page (screenshot: {tmp_path / 'failed.png'}); page text: {page.inner_text('body')[-2000:]}")
        text = verdict.inner_text()
        assert "exact evaluator on the pick" in text and ("correct" in text or "wrong" in text)
        page.locator("#steer-progress").get_by_text("done", exact=True).wait_for(timeout=120_000)
        final = page.locator("#final img")
        assert final.count() == 4  # default: 4 particles
        assert page.locator("#side img").count() == 3
        assert "NFE" in page.locator("#compute").inner_text()
        shot = tmp_path / "app_screenshot.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("STEER_SCREENSHOT"):
            target = Path(os.environ["STEER_SCREENSHOT"])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target)
    finally:
        browser.close()
        pw.stop()
