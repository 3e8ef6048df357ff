"""Noise-aware verifiers: the reward, its trainer, pruning (TTSnap) and noise-aware SMC potentials, on tiny models."""

import math

import pytest
import torch

import steer
import tiny_pipelines as tp
from steer.rewards import get_reward
from steer.rewards.noise_aware import NoiseAwareReward, VerifierMismatch, model_signature
from steer.search import BudgetExceeded
from steer.search.prune import check_schedule, prune_plan, survivors
from steer.train import noise_aware as na
from test_rewards import write_open_clip_dir
from test_search import PROMPTS, Redness


class Recorder(Redness):
    """Redness that remembers every batch it scored (and the noise levels it was given)."""

    noise_aware = True

    def __init__(self):
        super().__init__()
        self.calls = []

    def score(self, images, prompts, noise_level=None):
        r = super().score(images, prompts)
        self.calls.append({"scores": r.clone(), "level": noise_level, "n": images.shape[0]})
        return r


@pytest.fixture(scope="module")
def sd_pipe():
    torch.set_num_threads(1)
    return tp.sd()


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory):
    return write_open_clip_dir(tmp_path_factory.mktemp("open_clip_na"))


def call(pipe, method, n=4, steps=6, reward=None, **kw):
    sp = steer.wrap(pipe, method=method, reward=reward or Redness())
    kw.setdefault("output_type", "np")
    return sp(PROMPTS, num_inference_steps=steps, num_particles=n, generator=torch.Generator().manual_seed(0), **kw)


# ------------------------------------------------------------------ pruning


def test_prune_keeps_exactly_the_top_fraction_by_the_scores_it_saw(sd_pipe):
    verifier = Recorder()
    out = call(sd_pipe, "prune", n=8, schedule=[(2, 0.5), (4, 0.25)], verifier=verifier, return_all=True)
    rows = out.trace.steps
    assert [r["alive"] for r in rows] == [8, 4] and len(verifier.calls) == 2
    for row, seen in zip(rows, verifier.calls):
        scores = seen["scores"].view(len(PROMPTS), row["alive"])
        k = survivors(row["alive"], dict(((2, 0.5), (4, 0.25)))[row["step"]])
        for p in range(len(PROMPTS)):
            expect = sorted(torch.topk(scores[p], k).indices.tolist())
            assert row["kept"][p] == expect
    # survivors are the same trajectories best-of-N would have made (same generators, deterministic sampler)
    bon = call(sd_pipe, "best_of_n", n=8, return_all=True)
    for p in range(len(PROMPTS)):
        (survivor,) = rows[-1]["kept_particles"][p]
        assert out.rewards[p * 8] == pytest.approx(bon.rewards[p * 8 + survivor], abs=1e-4)
        assert all(math.isinf(r) for r in out.rewards[p * 8 + 1 : (p + 1) * 8])
        assert torch.allclose(torch.as_tensor(out.images[p * 8]), torch.as_tensor(bon.images[p * 8 + survivor]), atol=1e-5)


def test_prune_nfe_accounting_is_exact(sd_pipe):
    P, N, S = len(PROMPTS), 8, 6
    out = call(sd_pipe, "prune", n=N, steps=S, schedule=[(1, 0.5), (3, 0.5)])
    t = out.trace
    assert t.nfe == P * (N * 1 + 4 * 2 + 2 * 3)
    assert t.verifier_calls == P * (N + 4) and t.reward_calls == P * 2
    assert t.nfe_saved == P * N * S - t.nfe
    assert prune_plan(N, S, [(1, 0.5), (3, 0.5)]) == (N * 1 + 4 * 2 + 2 * 3, N + 4, 2, [4, 2])
    assert len(out.images) == P


def test_prune_schedule_and_budget_errors(sd_pipe):
    with pytest.raises(ValueError, match="outside \\(0, 1\\]"):
        check_schedule([(2, 0.0)])
    with pytest.raises(ValueError, match="outside \\(0, 1\\]"):
        check_schedule([(2, 1.5)])
    with pytest.raises(ValueError, match="increase strictly"):
        check_schedule([(4, 0.5), (2, 0.5)])
    with pytest.raises(ValueError, match="empty"):
        check_schedule([])
    with pytest.raises(ValueError, match="out of range"):
        call(sd_pipe, "prune", n=4, steps=6, schedule=[(6, 0.5)])
    with pytest.raises(BudgetExceeded, match="pruning plan"):
        call(sd_pipe, "prune", n=8, steps=6, schedule=[(1, 0.5)], max_nfe=20)
    with pytest.raises(TypeError, match="verifier"):
        steer.search.get_method("prune", verifier=3)


def test_engine_passes_noise_levels_to_noise_aware_rewards(sd_pipe):
    verifier = Recorder()
    sp = steer.wrap(sd_pipe, method="prune", reward=Redness())
    sp(PROMPTS, num_inference_steps=6, num_particles=4, schedule=[(2, 0.5)], verifier=verifier, output_type="np",
       generator=torch.Generator().manual_seed(0))
    assert verifier.calls[0]["level"] == pytest.approx(sp.adapter.noise_level(1))
    # SMC with noise-aware potentials: intermediate calls go to the verifier (with levels), the final ones to the reward
    pot = Recorder()
    out = call(sd_pipe, "smc", n=4, steps=6, interval=2, potential_reward=pot)
    levels = [c["level"] for c in pot.calls]
    assert levels == pytest.approx([sp.adapter.noise_level(1), sp.adapter.noise_level(3)])
    assert out.trace.verifier_calls == 2 * len(PROMPTS) * 4 and out.trace.reward_calls == len(PROMPTS) * 4
    fv = call(sd_pipe, "fleming_viot", n=4, steps=6, interval=2, potential_reward=Recorder())
    assert fv.trace.verifier_calls == 2 * len(PROMPTS) * 4 and fv.trace.options["potential_reward"] == "redness"


# ------------------------------------------------------------------ the reward


def _student(oc_dir, adapter=None):
    base = get_reward("clip", model=str(oc_dir), pretrained=None)
    sig = model_signature(adapter) if adapter is not None else None
    return NoiseAwareReward(base, {"name": "clip", "kwargs": {"model": str(oc_dir), "pretrained": None}}, (2.0, 3.0), (2.0, 3.0), sig, "clip")


def test_untrained_student_is_its_base_and_reads_the_level(oc_dir, tmp_path):
    x = torch.rand(3, 3, 16, 16)
    student = _student(oc_dir)
    base = get_reward("clip", model=str(oc_dir), pretrained=None)
    assert torch.allclose(student(x, PROMPTS[:1] * 3, noise_level=0.7), base(x, PROMPTS[:1] * 3), atol=1e-4)
    torch.nn.init.normal_(student.level_tokens.fc2.weight)
    torch.nn.init.constant_(student.level_head.fc2.bias, 0.5)  # the trained branch now counts
    a, b = student(x, PROMPTS[:1] * 3, noise_level=0.0), student(x, PROMPTS[:1] * 3, noise_level=0.9)
    assert not torch.allclose(a, b)
    student.save_pretrained(tmp_path / "na")
    again = get_reward(f"noise_aware:{tmp_path / 'na'}")
    assert again.noise_aware and torch.allclose(again(x, PROMPTS[:1] * 3, noise_level=0.9), b, atol=1e-5)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        student(x, PROMPTS[:1] * 3, noise_level=1.5)
    with pytest.raises(ValueError, match="noise levels for 3 images"):
        student(x, PROMPTS[:1] * 3, noise_level=[0.1, 0.2])


def test_verifier_for_another_model_or_size_is_refused(sd_pipe, oc_dir):
    adapter = steer.wrap(sd_pipe, method="prune", reward=Redness()).adapter
    student = _student(oc_dir, adapter)
    call(sd_pipe, "prune", n=2, schedule=[(2, 0.5)], verifier=student)  # fits: no error
    with pytest.raises(VerifierMismatch, match="another image size"):
        call(sd_pipe, "prune", n=2, schedule=[(2, 0.5)], verifier=student, height=2 * tp.SIZE, width=2 * tp.SIZE)
    with pytest.raises(VerifierMismatch, match="trained for a StableDiffusionPipeline"):
        call(tp.sd3(), "prune", n=2, schedule=[(2, 0.5)], verifier=student)
    other = tp.sd()
    with torch.no_grad():
        for p in other.unet.parameters():
            p.mul_(1.5)
    with pytest.raises(VerifierMismatch, match="another checkpoint"):
        call(other, "smc", n=2, potential_reward=student)


# ------------------------------------------------------------------ the trainer


@pytest.fixture(scope="module")
def dataset(sd_pipe, oc_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("na_run")
    teacher = Redness()
    base = get_reward("clip", model=str(oc_dir), pretrained=None)
    cfg = na.DataConfig(trajectories=4, num_inference_steps=4, keep_steps=[1, 2, 3], prompts_per_shard=2)
    prompts = PROMPTS + ["a photo of a blue square", "a photo of three triangles", "a photo of a green circle"]
    na.build_dataset(sd_pipe, teacher, base, prompts, out, cfg, progress=False)
    return out, cfg, prompts


def test_dataset_shapes_and_targets(dataset, sd_pipe):
    out, cfg, prompts = dataset
    data = na.load_dataset(out / "data")
    P, T, K = len(prompts), cfg.trajectories, len(cfg.keep_steps)
    assert data["images"].shape == (P, T, K + 1, 3, 16, 16) and data["images"].dtype == torch.uint8
    assert data["teacher"].shape == (P, T) and data["prompts"] == prompts
    assert data["levels"][-1] == 0 and bool((data["levels"][:-1] > 0).all())
    assert bool((data["levels"][:-1].diff() < 0).all())  # later steps, less noise
    # the target is the teacher's reward of the trajectory's final image (stored last)
    final = data["images"][:, :, -1].reshape(-1, 3, 16, 16).float() / 255
    assert torch.allclose(Redness()(final, ["x"] * len(final)).view(P, T), data["teacher"], atol=1.0)
    with pytest.raises(ValueError, match="other settings"):
        na.build_dataset(sd_pipe, Redness(), None, prompts[:2], out, cfg, progress=False)


def test_curriculum_goes_from_clean_to_noisy():
    levels = torch.tensor([0.99, 0.9, 0.7, 0.5, 0.2, 0.0])
    stages = na.curriculum(levels, 3)
    assert stages[0] == [5]
    assert all(set(a) < set(b) for a, b in zip(stages, stages[1:]))  # each stage keeps the last one's levels
    added = [sorted(set(b) - set(a), key=lambda i: levels[i]) for a, b in zip(stages, stages[1:])]
    assert max(levels[i] for i in added[0]) < min(levels[i] for i in added[1])
    assert max(levels[i] for i in added[1]) < min(levels[i] for i in added[2])
    assert sorted(stages[-1]) == list(range(6))


def test_ranking_loss_prefers_the_teachers_order():
    target = torch.tensor([[3.0, 1.0, 2.0]])
    assert na.ranking_loss(torch.tensor([[3.0, 1.0, 2.0]]), target) < na.ranking_loss(torch.tensor([[1.0, 3.0, 2.0]]), target)


def test_killed_training_resumes_to_the_same_result(dataset, oc_dir, tmp_path):
    import shutil

    out, _, _ = dataset
    cfg = na.TrainConfig(stages=2, stage_steps=6, clean_steps=3, batch_prompts=3, save_every=4, val_fraction=0.2)
    kw = {"model": str(oc_dir), "pretrained": None}
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(out / "data", d / "data")
    full = na.train(a, "clip", "redness", cfg, kw, progress=False)
    assert na.train(b, "clip", "redness", cfg, kw, progress=False, stop_after=7) is None  # "killed" after 7 of 15 steps
    assert (b / "ckpt.pt").exists() and not (b / "final").exists()
    resumed = na.train(b, "clip", "redness", cfg, kw, progress=False)
    for (name, x), (_, y) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), (name, (x - y).abs().max())
    assert (a / "final" / "noise_aware_config.json").exists() and (a / "report.json").exists()
    loaded = get_reward(f"noise_aware:{a / 'final'}")
    assert loaded.trained_for == full.trained_for and loaded.info["steps"] == 15


def test_shipped_verifiers_fit_their_own_model_only():
    from steer.models.registry import get_adapter
    from steer.shapes import load_flow_pipeline, load_noise_aware_reward, load_pipeline

    adapters = {"sd": get_adapter(load_pipeline()), "flow": get_adapter(load_flow_pipeline())}
    for model, other in (("sd", "flow"), ("flow", "sd")):
        v = get_reward(f"shapes_noise_aware_{model}")
        assert v.noise_aware and v.name == f"shapes_noise_aware_{model}"
        v.check_compatible(adapters[model])
        with pytest.raises(VerifierMismatch):
            v.check_compatible(adapters[other])
        assert load_noise_aware_reward(model).info["prompts"] == 384  # make_prompt_set(per_task=64, seed=99)


def test_default_schedule_scales_with_the_number_of_steps():
    from steer.search.prune import DEFAULT_SCHEDULE, resolve_schedule

    assert resolve_schedule(DEFAULT_SCHEDULE, 25) == ((4, 0.125),)
    assert resolve_schedule(DEFAULT_SCHEDULE, 4) == ((1, 0.125),)
    assert resolve_schedule(((0.1, 0.5), (0.12, 0.5)), 10) == ((1, 0.5), (2, 0.5))  # kept strictly increasing
    with pytest.raises(ValueError, match="all as fractions"):
        check_schedule([(0.2, 0.5), (8, 0.5)])
    assert prune_plan(8, 25, DEFAULT_SCHEDULE) == (8 * 4 + 1 * 21, 8, 1, [1])


@pytest.mark.parametrize("bad", [{"stages": 0}, {"batch_prompts": 0}, {"stage_steps": -1}, {"lr": -1e-4}, {"rank_weight": float("nan")},
                                 {"val_fraction": 0.9}, {"tune_base": "all"}])
def test_bad_training_settings_name_the_setting(bad):
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        na.TrainConfig(**bad)
