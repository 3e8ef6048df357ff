"""The benchmark scripts' estimators, on fake steered pipelines (no model runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import shapes_scaling  # noqa: E402
from steer.shapes import render, scene_for_record  # noqa: E402
from steer.shapes.prompts import make_record  # noqa: E402

RECORD = make_record("single_object", "circle")


class FakeSteered:
    """Returns ``n`` particles per prompt: even particles are correct renders, odd ones blank; fixed rewards."""

    def __init__(self, rewards: list[float], steps: int = 5):
        self.rewards, self.steps = rewards, steps
        self.good = render(scene_for_record(RECORD, np.random.default_rng(0))).astype(np.float32) / 255
        self.calls = []

    def __call__(self, prompts, num_particles, return_all=False, **kw):
        self.calls.append((len(prompts), num_particles, return_all))
        n = num_particles
        assert return_all and n == len(self.rewards)
        one = [self.good if k % 2 == 0 else np.ones_like(self.good) for k in range(n)]
        images = np.stack(one * len(prompts))
        trace = SimpleNamespace(nfe=len(prompts) * n * self.steps, reward_calls=len(prompts) * n)
        return SimpleNamespace(images=images, rewards=list(self.rewards) * len(prompts), trace=trace)


def test_best_of_n_pool_picks_the_best_reward_in_each_disjoint_group():
    # particles 0..7; correct = even. Rewards make the best of each pair odd (wrong) except pair (4, 5),
    # the best of each 4-group even in (0..3) and odd in (4..7), and the overall best particle 2 (correct).
    rewards = [1.0, 2.0, 9.0, 3.0, 5.0, 4.0, 0.0, 6.0]
    fake = FakeSteered(rewards)
    rows = shapes_scaling.run_best_of_n_pool(fake, [RECORD] * 3, seeds=2, steps=5, guidance=1.0, ns=[1, 2, 4, 8], batch_prompts=2)
    acc = [r["accuracy"] for r in rows]
    assert acc == pytest.approx([0.5, 2 / 4, 1 / 2, 1.0])  # N=2: pairs pick 1, 2, 4, 7 → only 2 and 4 correct
    assert [r["nfe"] for r in rows] == [5, 10, 20, 40]
    assert [r["reward_calls"] for r in rows] == [1, 2, 4, 8]
    assert [r["mean_reward"] for r in rows] == pytest.approx([np.mean(rewards), np.mean([2, 9, 5, 6]), np.mean([9, 6]), 9.0])
    assert all(c == (2, 8, True) or c == (1, 8, True) for c in fake.calls)  # one pooled call per prompt batch, N = max
    with pytest.raises(ValueError, match="divide the largest"):
        shapes_scaling.run_best_of_n_pool(fake, [RECORD], 1, 5, 1.0, [3, 8], 1)


def test_merge_weights_slices_by_prompts_and_seeds():
    def res(limit, seeds, acc_single, acc_two, nfe, seconds):
        row = {"model": "sd", "method": "smc", "options": {"num_particles": 4}, "nfe": nfe, "reward_calls": 20.0, "mean_reward": 70.0,
               "tasks": {"single_object": acc_single, "two_object": acc_two}, "accuracy": (acc_single + acc_two) / 2, "seconds": seconds}
        return {"config": {"limit": limit, "seeds": seeds}, "rows": [row]}

    out = shapes_scaling.merge([res(24, 2, 1.0, 0.5, 100.0, 10.0), res(8, 2, 0.0, 0.5, 100.0, 5.0)])
    (row,) = out["rows"]
    assert row["tasks"] == pytest.approx({"single_object": 0.75, "two_object": 0.5})
    assert row["accuracy"] == pytest.approx(0.625) and row["seconds"] == 15.0 and row["nfe"] == 100.0
    broken = res(8, 2, 0.0, 0.5, 100.0, 5.0)
    broken["rows"][0]["options"] = {"num_particles": 8}
    with pytest.raises(ValueError, match="missing"):
        shapes_scaling.merge([res(24, 2, 1.0, 0.5, 100.0, 10.0), broken])


def test_comparisons_pair_resampling_rows_with_best_of_n_at_equal_and_double_particles():
    def row(method, n, correct):
        return {"model": "sd", "method": method, "options": {"num_particles": n}, "correct": correct}

    rows = [row("best_of_n", 4, [1, 0] * 50), row("best_of_n", 8, [1] * 100), row("smc", 4, [1, 0] * 50)]
    out = {c["versus"]: c for c in shapes_scaling.comparisons(rows)}
    assert out["best_of_n N=8"]["diff"] == pytest.approx(-0.5) and out["best_of_n N=8"]["verdict"] == "worse"
    assert out["best_of_n N=4"]["diff"] == 0.0 and out["best_of_n N=4"]["verdict"] == "tie"
    assert out["best_of_n N=8"]["pairs"] == 100 and out["best_of_n N=8"]["particles"] == 4


def test_best_of_n_pool_reports_the_oracle_and_analysis_reads_it():
    rewards = [1.0, 2.0, 9.0, 3.0, 5.0, 4.0, 0.0, 6.0]  # even particles correct
    rows = shapes_scaling.run_best_of_n_pool(FakeSteered(rewards), [RECORD] * 2, seeds=1, steps=5, guidance=1.0, ns=[1, 2, 8], batch_prompts=2)
    assert [r["oracle"]["accuracy"] for r in rows] == pytest.approx([0.5, 1.0, 1.0])  # any correct in a group of 2 or 8
    full = [{"model": "sd", "method": "best_of_n", "options": {"num_particles": n}, **r} for n, r in zip([1, 2, 8], rows)]
    oracle = shapes_scaling.oracle_rows(full)
    assert [o["method"] for o in oracle] == ["oracle"] * 3 and [o["nfe"] for o in oracle] == [5, 10, 40]
    smc = {"model": "sd", "method": "smc", "options": {"num_particles": 2}, "nfe": 10.0, "accuracy": 0.75, "correct": [1, 0.5]}
    a = shapes_scaling.analyse(full + oracle + [smc])["sd"]
    row = next(r for r in a["rows"] if r["method"] == "smc")
    assert row["fraction_to_oracle"] == pytest.approx((0.75 - 0.5) / (1.0 - 0.5))
    assert a["area_vs_best_of_n"]["smc"] == pytest.approx(0.75 / 0.5)


def test_scaling_curve_summaries():
    from steer.eval.scaling import area_ratio, fraction_to_oracle, interpolate

    bon = [(25, 0.4), (50, 0.5), (100, 0.6), (200, 0.7)]
    assert interpolate(bon, 70.71067811865476) == pytest.approx(0.55)  # halfway on the log axis
    assert np.isnan(interpolate(bon, 400))
    assert area_ratio(bon, bon) == pytest.approx(1.0)
    assert area_ratio([(50, 0.6), (100, 0.7)], bon) == pytest.approx(1.3 / 1.1)
    assert fraction_to_oracle(0.55, 50, 0.4, [(25, 0.5), (50, 0.7)]) == pytest.approx(0.5)
    assert fraction_to_oracle(0.7, 50, 0.4, [(25, 0.5), (50, 0.7)]) == pytest.approx(1.0)


def test_ttsnap_relative_area_gain():
    from steer.eval.scaling import relative_area_gain

    bon = [(100, 1.0), (200, 2.0), (300, 3.0)]
    assert relative_area_gain(bon, bon) == pytest.approx(0.0)
    # y0 = 1 at B=100; best-of-N area above y0 on [100, 300] = 2; a curve 1 higher everywhere adds 2 → +100 %
    assert relative_area_gain([(100, 2.0), (300, 4.0)], bon) == pytest.approx(1.0)
    assert np.isnan(relative_area_gain([(100, 2.0)], bon))
