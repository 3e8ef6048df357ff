"""Fine-tuning trainers (GRAFT / P-GRAFT, DRaFT) on tiny random-weight pipelines."""

import json

import pytest
import torch

import steer
import tiny_pipelines as tp
from steer.models.registry import get_adapter
from steer.rewards.composite import RankSumReward
from steer.train import draft, pgraft
from steer.train.finetune import ForwardProcess, SegmentGate, add_lora, load_result, read_result, shaped_denoising_loss
from test_search import PROMPTS, Redness


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _perturb_lora(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _pg_cfg(**kw):
    base = dict(method="pgraft", n_i=3, num_inference_steps=6, trajectories=3, train_steps=4, batch=4, save_every=2, sample_batch=8,
                guidance_scale=3.0, rank=2, lr=1e-2)
    base.update(kw)
    return pgraft.PGraftConfig(**base)


def _image(pipe, seed=0, steps=6):
    return pipe(PROMPTS[0], num_inference_steps=steps, guidance_scale=3.0, generator=torch.Generator().manual_seed(seed), output_type="np").images


# ------------------------------------------------------------------ P-GRAFT segment


def test_pgraft_only_the_high_noise_segment_receives_gradients():
    pipe = tp.sd()
    unet = pipe.unet
    add_lora(unet, rank=2)
    _perturb_lora(unet)
    gate = SegmentGate(unet, t_switch=500.0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    lora = [p for n, p in unet.named_parameters() if "lora_" in n]

    high = unet(x, torch.tensor([800.0, 800.0]), encoder_hidden_states=emb).sample
    high.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    low = unet(x, torch.tensor([200.0, 200.0]), encoder_hidden_states=emb).sample
    assert not low.requires_grad  # no path from the low-noise segment to the LoRA
    with torch.no_grad():  # below the switch the output is the base model's
        low = unet(x, 200, encoder_hidden_states=emb).sample
        gate.remove()
        unet.disable_adapters()
        base = unet(x, 200, encoder_hidden_states=emb).sample
        unet.enable_adapters()
        lora_out = unet(x, 200, encoder_hidden_states=emb).sample
    assert torch.equal(low, base) and not torch.allclose(lora_out, base)
    SegmentGate(unet, 500.0)
    with pytest.raises(ValueError, match="mixes timesteps"):
        unet(x, torch.tensor([800, 200]), encoder_hidden_states=emb)


def test_pgraft_training_draws_only_timesteps_above_the_switch_and_the_loss_is_the_usual_one_on_clean_data():
    pipe = tp.sd()
    ad = get_adapter(pipe)
    process = ForwardProcess(ad)
    ad.set_schedule(6)
    t_i = process.timestep_at(3)
    assert t_i == float(ad._t[3]) and process.timestep_at(6) == -1.0
    t = process.sample_t(2000, t_i, torch.Generator().manual_seed(0))
    assert bool((t > t_i).all()) and float(t.max()) == process.t_max
    # t_i = -1 (GRAFT): the loss is ‖ε̂ − ε‖² with x_t = a·x0 + s·ε
    cond = ad.encode(PROMPTS, guidance_scale=1.0)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    tt = torch.tensor([100.0, 700.0], dtype=torch.float64)
    loss = shaped_denoising_loss(process, cond, x0, -1.0, torch.Generator().manual_seed(3), t=tt)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    a, s = process.coefficients(tt)
    with torch.no_grad():
        ref = (process.predict_eps(a.float().view(-1, 1, 1, 1) * x0 + s.float().view(-1, 1, 1, 1) * eps, tt, cond) - eps).square().mean()
    assert torch.allclose(loss.detach(), ref, rtol=1e-5)


def test_pgraft_gate_honoured_by_a_stock_flow_pipeline():
    pipe = tp.sd3()
    add_lora(pipe.transformer, rank=2)
    _perturb_lora(pipe.transformer)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(float(k["timestep"][0])), with_kwargs=True)
    gate = SegmentGate(pipe.transformer, t_switch=600.0)
    states = []
    orig = gate._hook

    def spy(module, args, kwargs):
        orig(module, args, kwargs)
        states.append(gate._on)

    gate.handle.remove()
    gate.handle = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    _image(pipe, steps=5)
    assert states == [t > 600.0 for t in seen] and any(states) and not all(states)


# ------------------------------------------------------------------ rejection rules


def test_graft_accepted_set_obeys_the_rule():
    r = torch.tensor([[1.0, 5.0, 3.0], [0.0, -1.0, 2.0]])
    assert pgraft.accept(r, "top_k:1").tolist() == [1, 5]
    assert pgraft.accept(r, "best_of_n").tolist() == [1, 5]
    assert pgraft.accept(r, "top_k:2").tolist() == [1, 2, 3, 5]
    assert pgraft.accept(r, "threshold:2.5").tolist() == [1, 2]
    assert pgraft.accept(r, "top_fraction:0.5").tolist() == [1, 2, 5]
    with pytest.raises(ValueError, match="accepted none of 6 samples.*loosen"):
        pgraft.accept(r, "threshold:9")
    for bad in ("top_k:0", "top_k:1.5", "threshold:x", "top_fraction:2", "best"):
        with pytest.raises(ValueError, match="not understood"):
            pgraft.accept(r, bad)


def test_graft_empty_accepted_set_stops_the_run_with_advice(tmp_path):
    with pytest.raises(ValueError, match="accepted none.*loosen"):
        pgraft.train(tp.sd(), Redness(), PROMPTS, _pg_cfg(accept="threshold:1e9"), tmp_path / "run", progress=False)


@pytest.mark.parametrize("n_i", [0, 6, 9, None])
def test_pgraft_n_i_outside_the_schedule_is_refused(n_i):
    with pytest.raises(ValueError, match="outside the schedule"):
        _pg_cfg(n_i=n_i)


def test_graft_lora_rank_larger_than_a_layer_is_refused():
    with pytest.raises(ValueError, match=r"LoRA rank 64 is larger than layer .*use --rank"):
        add_lora(tp.sd().unet, rank=64)
    with pytest.raises(ValueError, match="match no module"):
        add_lora(tp.sd().unet, rank=2, targets=["no_such_layer"])


# ------------------------------------------------------------------ runs: resume, save, reload


@pytest.mark.parametrize("method", ["graft", "pgraft"])
def test_graft_killed_run_resumes_to_the_same_result(tmp_path, method):
    cfg = _pg_cfg(method=method, rounds=2)
    whole = pgraft.train(tp.sd(), Redness(), PROMPTS, cfg, tmp_path / "whole", progress=False)
    assert pgraft.train(tp.sd(), Redness(), PROMPTS, cfg, tmp_path / "split", progress=False, stop_after=3) is None
    assert pgraft.train(tp.sd(), Redness(), PROMPTS, cfg, tmp_path / "split", progress=False, stop_after=3) is None  # killed again, in round 2
    split = pgraft.train(tp.sd(), Redness(), PROMPTS, cfg, tmp_path / "split", progress=False)
    a, b = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (tmp_path / "whole", tmp_path / "split"))
    assert a["step"] == b["step"] == 8 and a["round"] == b["round"] == 2
    for k in a["lora"]:
        assert torch.allclose(a["lora"][k], b["lora"][k], atol=1e-6), k
    ma, mb = read_result(whole), read_result(split)
    assert ma["compute"]["sampling_nfe"] == mb["compute"]["sampling_nfe"] == 2 * 2 * 3 * 6  # rounds × prompts × M × steps
    assert ma["compute"]["reward_calls"] == 12 and ma["compute"]["train_nfe"] == 3 * 4 * 8
    log = json.loads((tmp_path / "whole" / "log.json").read_text())
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9)) and (tmp_path / "whole" / "log.png").is_file()


def test_pgraft_result_reloads_in_a_stock_pipeline_and_reproduces_its_outputs(tmp_path):
    pipe = tp.sd()
    base_img = _image(pipe)
    final = pgraft.train(pipe, Redness(), PROMPTS, _pg_cfg(train_steps=6, lr=5e-2), tmp_path / "run", progress=False)
    trained_img = _image(pipe)
    meta = read_result(final)
    assert meta["method"] == "pgraft" and meta["t_switch"] > 0 and (final / "pytorch_lora_weights.safetensors").is_file()
    stock = load_result(tp.sd(), final)  # a fresh stock StableDiffusionPipeline of the same base weights
    assert type(stock).__name__ == "StableDiffusionPipeline"
    assert torch.allclose(torch.as_tensor(_image(stock)), torch.as_tensor(trained_img), atol=1e-6)
    assert not torch.allclose(torch.as_tensor(trained_img), torch.as_tensor(base_img), atol=1e-4)
    # steer.wrap of the result samples with the same gate
    out = steer.wrap(stock, method="best_of_n", reward=Redness())(PROMPTS[0], num_inference_steps=6, guidance_scale=3.0, num_particles=1, eta=0.0,
                                                                  generator=[torch.Generator().manual_seed(0)], output_type="np")
    assert torch.allclose(torch.as_tensor(out.images), torch.as_tensor(trained_img), atol=1e-5)


def test_graft_and_pgraft_share_round_samples(tmp_path):
    shared = tmp_path / "samples.pt"
    a = pgraft.train(tp.sd(), Redness(), PROMPTS, _pg_cfg(method="graft"), tmp_path / "g", progress=False, shared_samples=shared)
    mtime = shared.stat().st_mtime_ns
    b = pgraft.train(tp.sd(), Redness(), PROMPTS, _pg_cfg(method="pgraft"), tmp_path / "p", progress=False, shared_samples=shared)
    assert shared.stat().st_mtime_ns == mtime
    assert read_result(a)["compute"]["sampling_nfe"] == read_result(b)["compute"]["sampling_nfe"] > 0
    with pytest.raises(ValueError, match="other prompts or settings"):
        pgraft.train(tp.sd(), Redness(), PROMPTS, _pg_cfg(trajectories=2), tmp_path / "q", progress=False, shared_samples=shared)


# ------------------------------------------------------------------ DRaFT


def _grad_calls(pipe, cfg):
    """Indices of the denoiser calls whose outputs received a gradient in one DRaFT step."""
    calls, reached = [], set()

    def hook(module, args, kwargs, out):
        i = len(calls)
        calls.append(i)
        sample = out[0] if isinstance(out, tuple) else out.sample
        if sample.requires_grad:
            sample.register_hook(lambda g, i=i: reached.add(i) if g.abs().sum() > 0 else None)

    h = pipe.unet.register_forward_hook(hook, with_kwargs=True)
    ad = get_adapter(pipe)
    add_lora(pipe.unet, rank=2)
    loss, _ = draft.draft_loss(ad, ForwardProcess(ad), Redness(), PROMPTS, cfg, [torch.Generator().manual_seed(i) for i in range(2)])
    loss.backward()
    h.remove()
    return len(calls), reached


@pytest.mark.parametrize("k", [1, 3])
def test_draft_k_gradient_reaches_exactly_the_last_k_steps(k):
    n, reached = _grad_calls(tp.sd(), draft.DraftConfig(variant="k", k=k, num_inference_steps=6, guidance_scale=1.0))
    assert n == 6 and reached == set(range(6 - k, 6))


def test_draft_full_and_lv_gradient_paths():
    n, reached = _grad_calls(tp.sd(), draft.DraftConfig(variant="full", num_inference_steps=5, guidance_scale=1.0))
    assert n == 5 and reached == set(range(5))
    n, reached = _grad_calls(tp.sd(), draft.DraftConfig(variant="lv", lv_samples=3, num_inference_steps=5, guidance_scale=1.0))
    assert n == 6 and reached == {5}  # the chain without gradients, then one call on the 3 re-noised copies


def test_draft_killed_run_resumes_to_the_same_result_and_reloads(tmp_path):
    cfg = draft.DraftConfig(variant="k", k=2, num_inference_steps=5, steps=4, batch=2, save_every=2, guidance_scale=3.0, rank=2, lr=1e-2)
    whole = draft.train(tp.sd(), Redness(), PROMPTS, cfg, tmp_path / "whole", progress=False)
    assert draft.train(tp.sd(), Redness(), PROMPTS, cfg, tmp_path / "split", progress=False, stop_after=1) is None
    draft.train(tp.sd(), Redness(), PROMPTS, cfg, tmp_path / "split", progress=False)
    a, b = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (tmp_path / "whole", tmp_path / "split"))
    for key in a["lora"]:
        assert torch.allclose(a["lora"][key], b["lora"][key], atol=1e-6), key
    meta = read_result(whole)
    assert meta["method"] == "draft_k" and meta["compute"]["reward_grad_calls"] == 8 and meta["compute"]["train_nfe"] == 4 * 2 * 2 * 2
    pipe = load_result(tp.sd(), whole)
    assert pipe.steer_gate.handle is None  # DRaFT's LoRA applies at every step
    log = json.loads((tmp_path / "whole" / "log.json").read_text())
    assert len(log) == 4 and all("reward" in r for r in log)


def test_draft_refuses_a_non_differentiable_reward(tmp_path):
    with pytest.raises(ValueError, match="DRaFT needs a differentiable reward.*registered rewards"):
        draft.train(tp.sd(), RankSumReward([Redness(), Redness()]), PROMPTS, draft.DraftConfig(steps=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="1 <= K <= num_inference_steps"):
        draft.DraftConfig(variant="k", k=30, num_inference_steps=25)


def test_draft_cli_reports_bad_input_in_one_line(capsys):
    with pytest.raises(SystemExit):
        draft.main(["--model", "shapes-sd", "--variant", "k", "--k", "0", "--prompt-set", "1", "--out", "x"])
    assert "1 <= K" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pgraft.main(["--model", "shapes-sd", "--n-i", "40", "--prompt-set", "1", "--out", "x"])
    assert "outside the schedule" in capsys.readouterr().err


# ------------------------------------------------------------------ shipped variants


@pytest.mark.parametrize("variant", ["pgraft", "draft"])
def test_graft_and_draft_shipped_variants_load_as_stock_pipelines(variant):
    from steer.shapes import load_pipeline

    base, tuned = load_pipeline(), load_pipeline(variant=variant)
    assert type(tuned).__name__ == "StableDiffusionPipeline"
    meta = tuned.steer_finetune
    assert meta["method"].startswith(variant) and meta["base_model"] == "shapes-sd"
    assert (tuned.steer_gate.handle is not None) == (variant == "pgraft")
    for p in (base, tuned):
        p.set_progress_bar_config(disable=True)
    a, b = (p("a photo of a red circle", num_inference_steps=8, generator=torch.Generator().manual_seed(0), output_type="np").images for p in (base, tuned))
    assert not torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-4)
    with pytest.raises(ValueError, match="variant must be"):
        load_pipeline(variant="dpo")


@pytest.mark.parametrize("bad", [dict(lr=0.0), dict(eta=-0.5), dict(guidance_scale=-1.0), dict(cfg_drop=1.0)])
def test_graft_settings_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        _pg_cfg(**bad)


@pytest.mark.parametrize("bad", [dict(lr=-1e-4), dict(grad_clip=0.0), dict(guidance_scale=float("nan"))])
def test_draft_settings_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        draft.DraftConfig(**bad)
