"""The shipped shapes models: they load from disk as stock diffusers pipelines, generate
deterministically, the reward prefers correct scenes, and the training scripts run and resume."""

import copy
import json

import numpy as np
import pytest
import torch

from steer.shapes import load_flow_pipeline, load_pipeline, load_reward, parse_prompt, render, scene_for_record
from steer.shapes.models import WEIGHTS
from steer.shapes.world import COLORS, SHAPES, Scene

PROMPTS = ["a photo of a red circle", "a photo of two squares"]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(2)


def _gen(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    return pipe(PROMPTS, num_inference_steps=8, guidance_scale=5.0, generator=gens, output_type="np", **kw).images


def test_sd_pipeline_is_stock_and_deterministic():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    pipe = StableDiffusionPipeline.from_pretrained(WEIGHTS / "sd")  # stock loader, no steer code
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.scheduler, DDIMScheduler)
    a, b = _gen(pipe), _gen(load_pipeline())
    assert a.shape == (2, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.allclose(a[0], a[1])


def test_flow_pipeline_is_stock_and_deterministic():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(WEIGHTS / "flow", text_encoder_3=None, tokenizer_3=None)
    assert isinstance(pipe.transformer, SD3Transformer2DModel) and isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    a, b = _gen(pipe), _gen(load_flow_pipeline())
    assert a.shape == (2, 32, 32, 3) and np.array_equal(a, b)


def test_collapsed_padding_matches_stock_sd3_attention():
    """Training feeds one zero token with a log-count attention bias; the stock pipeline feeds 256 zeros."""
    from steer.models.attention import CollapsedPaddingJointAttnProcessor

    pipe = load_flow_pipeline()
    emb, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700.0, 200.0])
    with torch.no_grad():
        full = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, pooled_projections=pooled).sample
        old = pipe.transformer.attn_processors
        pipe.transformer.set_attn_processor(CollapsedPaddingJointAttnProcessor(emb.shape[1] - 16))
        short = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb[:, :17], pooled_projections=pooled).sample
        pipe.transformer.set_attn_processor(old)
    assert torch.allclose(full, short, atol=1e-4)


def test_reward_ranks_correct_scene_above_corruptions():
    reward = load_reward()
    rng = np.random.default_rng(0)
    wins, total = 0, 0
    for prompt in ["a photo of a red circle", "a photo of three triangles", "a photo of a square left of a circle",
                   "a photo of a green triangle and a yellow square", "a photo of a circle and a square"]:
        rec = parse_prompt(prompt)
        for _ in range(4):
            scene = scene_for_record(rec, rng)
            bad = []
            recolor = copy.deepcopy(scene)
            recolor.objects[0].color = COLORS[(COLORS.index(scene.objects[0].color) + 3) % len(COLORS)]
            bad.append(recolor)
            reshape = copy.deepcopy(scene)
            reshape.objects[0].shape = SHAPES[(SHAPES.index(scene.objects[0].shape) + 1) % len(SHAPES)]
            bad.append(reshape)
            if len(scene.objects) > 1:
                bad.append(Scene(scene.objects[1:]))
            if rec["tag"] == "position":
                swapped = copy.deepcopy(scene)
                a, b = swapped.objects
                a.cx, a.cy, b.cx, b.cy = b.cx, b.cy, a.cx, a.cy
                bad.append(swapped)
            imgs = torch.from_numpy(np.stack([render(s) for s in [scene, *bad]])).permute(0, 3, 1, 2).float() / 255
            r = reward(imgs, prompt)
            wins += int((r[0] > r[1:]).sum())
            total += len(bad)
    assert wins / total >= 0.8, (wins, total)


def test_shipped_weights_are_small_safetensors():
    files = [p for p in WEIGHTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 50 * 2**20  # models, reward and the two noise-aware verifiers
    weights = [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".safetensors")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_missing_weights_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="reinstall"):
        load_pipeline(tmp_path / "nope")


def test_training_runs_and_resumes(tmp_path):
    """Each stage trains a few steps, checkpoints, and a rerun with more steps resumes from the checkpoint."""
    from steer.train import shapes_reward, shapes_t2i

    common = ["--run", str(tmp_path), "--data", "64", "--batch", "4", "--save-every", "2"]
    shapes_t2i.main(["--stage", "vae", "--steps", "2", *common])
    for stage in ("sd", "flow"):
        shapes_t2i.main(["--stage", stage, "--steps", "2", *common])
        shapes_t2i.main(["--stage", stage, "--steps", "3", *common])  # resumes at step 2
        log = [json.loads(l) for l in (tmp_path / stage / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [2, 3]
    shapes_t2i.main(["--run", str(tmp_path), "--export", str(tmp_path / "weights")])
    pipe = load_pipeline(tmp_path / "weights" / "sd")
    assert pipe.unet.config.sample_size == 16
    shapes_reward.main(["--run", str(tmp_path), "--steps", "2", "--batch", "4", "--save-every", "1"])
    assert (tmp_path / "reward" / "final" / "open_clip_model.safetensors").exists()


def test_training_continues_from_an_exported_pipeline(tmp_path):
    """--init starts from a pipeline folder's weights (at lr 0 the result is those weights), and records it."""
    from diffusers import SD3Transformer2DModel
    from steer.train import shapes_t2i

    common = ["--data", "64", "--batch", "4", "--save-every", "2"]
    shapes_t2i.main(["--run", str(tmp_path / "a"), "--stage", "vae", "--steps", "1", *common])
    shapes_t2i.main(["--run", str(tmp_path / "a"), "--stage", "flow", "--steps", "2", *common])
    start = tmp_path / "a" / "flow" / "final"
    shapes_t2i.main(["--run", str(tmp_path / "b"), "--stage", "flow", "--steps", "1", "--lr", "0", "--init", str(start), *common])
    before = SD3Transformer2DModel.from_pretrained(start / "transformer").state_dict()
    after = SD3Transformer2DModel.from_pretrained(tmp_path / "b" / "flow" / "final" / "transformer").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((tmp_path / "b" / "flow" / "meta.json").read_text())
    assert meta["init"] == str(start) and meta["before_init"]["steps"] == 2
    with pytest.raises(SystemExit):
        shapes_t2i.main(["--run", str(tmp_path / "c"), "--stage", "flow", "--init", str(tmp_path), *common])


def test_main_job_cli(tmp_path, capsys):
    from steer.shapes.__main__ import main

    main(["a photo of two circles", "--num-images", "2", "--steps", "4", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "[counting] 'a photo of two circles'" in out and "images correct by the exact evaluator" in out
    assert len(list(tmp_path.glob("sd_plain_*.png"))) == 1
    main(["a photo of a circle", "--num-images", "1", "--steps", "4", "--method", "smc", "--particles", "2", "--out", str(tmp_path)])
    assert len(list(tmp_path.glob("sd_smc_*.png"))) == 1
    with pytest.raises(SystemExit):
        main(["a photo of a zebra"])
    assert "not a shapes-world prompt" in capsys.readouterr().err


def test_grown_flow_transformer_computes_the_same_function():
    """--grow-layers inserts identity-initialised joint blocks: the grown model's output is unchanged, and it trains."""
    import tiny_pipelines as tp
    from steer.train.shapes_t2i import grow_transformer

    tr = tp.sd3().transformer
    grown = grow_transformer(tr, 2)
    assert grown.config.num_layers == tr.config.num_layers + 2
    assert grown.transformer_blocks[-1].context_pre_only
    cfg = tr.config
    x = torch.randn(2, cfg.in_channels, 8, 8)
    ctx = torch.randn(2, 5, cfg.joint_attention_dim)
    pooled = torch.randn(2, cfg.pooled_projection_dim)
    t = torch.tensor([700.0, 100.0])
    with torch.no_grad():
        a = tr(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled).sample
        b = grown(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled).sample
    assert torch.allclose(a, b, atol=1e-6)
    loss = grown(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled).sample.square().mean()
    loss.backward()
    assert grown.transformer_blocks[1].norm1.linear.weight.grad.abs().sum() > 0  # the new blocks' gates learn
