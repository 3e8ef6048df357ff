"""The reward zoo on tiny random-weight models of the real architectures, saved to and loaded from disk."""

from __future__ import annotations

import json
import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from steer.rewards import (
    AestheticScore,
    HPSv2,
    ImageReward,
    ImageRewardModel,
    Normalized,
    OpenCLIPScore,
    PickScore,
    RankSumReward,
    Reward,
    RewardMLP,
    RewardWeightsNotFound,
    TransformersCLIPScore,
    WeightedReward,
    available_rewards,
    batch_ranks,
    convert_imagereward_checkpoint,
    get_reward,
    register_reward,
)

torch.set_num_threads(1)
PROMPTS = ["a red circle", "two blue squares"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "two", "squares", "photo", "of"]


def images(b: int = 2, size: int = 16, seed: int = 0, grad: bool = False) -> torch.Tensor:
    """8-bit-exact random images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, size, size), generator=g).float() / 255
    return x.requires_grad_(grad)


def check_reward(reward: Reward, size: int) -> torch.Tensor:
    """Shape, finiteness, determinism, prompt broadcasting and count checks; gradients if differentiable."""
    x = images(2, size)
    s = reward(x, PROMPTS)
    assert s.shape == (2,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    assert torch.equal(s, reward(x, PROMPTS))
    single = reward(x, PROMPTS[0])
    assert torch.allclose(single, reward(x, [PROMPTS[0]] * 2))
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        reward(x, PROMPTS + ["a"])
    with pytest.raises(ValueError, match="expected images"):
        reward(x[0], PROMPTS)
    xg = images(2, size, grad=True)
    out = reward(xg, PROMPTS)
    if reward.differentiable:
        out.sum().backward()
        assert xg.grad is not None and xg.grad.abs().sum() > 0 and torch.isfinite(xg.grad).all()
    else:
        assert not out.requires_grad
    assert not any(p.requires_grad for p in reward.parameters())
    return s


# ----------------------------------------------------------------------------- tiny models on disk


def write_open_clip_dir(folder: Path, seed: int = 0, weights: bool = True) -> Path:
    """An open_clip ``local-dir`` folder: config, HF tokenizer (``steer.shapes``), safetensors weights."""
    import open_clip
    from safetensors.torch import save_file

    from steer.shapes.tokenizer import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    cfg = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 16, "vocab_size": len(tok), "width": 32, "heads": 2, "layers": 1, "hf_tokenizer_name": "local"},
        },
        "preprocess_cfg": {"size": 16, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(folder)
    if weights:
        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{folder.resolve()}")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def open_clip_reference(folder: Path, state_dict: dict | None = None):
    import open_clip

    model = open_clip.create_model(f"local-dir:{folder.resolve()}").eval()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    tok = open_clip.get_tokenizer(f"local-dir:{folder.resolve()}")
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    return model, tok, mean, std


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory) -> Path:
    return write_open_clip_dir(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory) -> Path:
    """A transformers CLIPModel + tokenizer + CLIPImageProcessor (non-default mean/std)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from steer.shapes.tokenizer import build_tokenizer

    folder = tmp_path_factory.mktemp("hf_clip")
    tok = build_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=24, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]
    ).save_pretrained(folder)
    return folder


def bert_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def tiny_blip_config():
    from transformers import BlipConfig

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, layer_norm_eps=1e-6, initializer_range=0.02)
    text = dict(
        vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=40, pad_token_id=0, bos_token_id=len(WORDS), sep_token_id=3, eos_token_id=3,
    )
    return BlipConfig(vision_config=vision, text_config=text)


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    """An ImageReward folder (``config.json``, ``model.safetensors``, BERT tokenizer) with random weights."""
    folder = tmp_path_factory.mktemp("imagereward")
    torch.manual_seed(0)
    ImageRewardModel(tiny_blip_config()).save_pretrained(folder)
    bert_tokenizer().save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_unknown():
    names = available_rewards()
    for n in ["clip", "hf_clip", "aesthetic", "pickscore", "hpsv2", "hpsv2.1", "imagereward", "shapes_clip"]:
        assert n in names
    with pytest.raises(ValueError) as e:
        get_reward("no_such_reward")
    assert "no_such_reward" in str(e.value) and "pickscore" in str(e.value) and "hpsv2.1" in str(e.value)


def test_register_reward(oc_dir):
    register_reward("tiny_test_clip", lambda **kw: OpenCLIPScore(str(oc_dir), **kw))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_reward("tiny_test_clip", lambda **kw: None)
        r = get_reward("tiny_test_clip", scale=1.0)
        assert isinstance(r, OpenCLIPScore) and r.name == "tiny_test_clip" and r.scale == 1.0
        n = get_reward("tiny_test_clip", normalize=(0.1, 2.0), scale=1.0)
        assert isinstance(n, Normalized)
        x = images()
        assert torch.allclose(n(x, PROMPTS), (r(x, PROMPTS) - 0.1) / 2.0, atol=1e-6)
    finally:
        from steer.rewards import registry

        registry._REGISTRY.pop("tiny_test_clip", None)


# ----------------------------------------------------------------------------- open_clip CLIPScore


def test_open_clip_score(oc_dir):
    reward = get_reward("clip", model=str(oc_dir), scale=100.0)
    assert reward.name == "clip" and reward.differentiable
    s = check_reward(reward, 16)
    model, tok, mean, std = open_clip_reference(oc_dir)
    with torch.no_grad():
        img = model.encode_image((images() - mean) / std, normalize=True)
        txt = model.encode_text(tok(PROMPTS), normalize=True)
    assert torch.allclose(s, 100 * (img * txt).sum(-1), atol=1e-4)
    assert s.abs().max() <= 100 + 1e-3
    # non-square input: resized and centre-cropped to 16x16
    assert reward(images(2, 40)[..., :30], PROMPTS).shape == (2,)


def test_open_clip_score_as_shapes_loader_uses_it(oc_dir):
    """``OpenCLIPScore(str(folder), device=...)`` then ``.name = ...`` (how ``steer.shapes`` loads its reward)."""
    r = OpenCLIPScore(str(oc_dir), device="cpu")
    r.name = "shapes_clip"
    assert r(images(), PROMPTS).shape == (2,)


def test_shapes_clip_factory(oc_dir):
    r = get_reward("shapes_clip", path=oc_dir)
    assert isinstance(r, OpenCLIPScore) and r.name == "shapes_clip"


# ----------------------------------------------------------------------------- transformers CLIP / PickScore


def reference_clip_logits(folder: Path, x: torch.Tensor):
    """Scores through the stock transformers processor on PIL images + ``CLIPModel.forward``."""
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    proc = CLIPImageProcessor.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    pil = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in x]
    pix = proc(images=pil, return_tensors="pt").pixel_values
    t = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=t.input_ids, attention_mask=t.attention_mask, pixel_values=pix)
    return out.logits_per_image.diagonal(), model.logit_scale.exp().item()


def test_transformers_clip_score(hf_clip_dir):
    reward = get_reward("hf_clip", model_name_or_path=hf_clip_dir)
    assert isinstance(reward, TransformersCLIPScore) and reward.differentiable and reward.image_size == (24, 24)
    assert torch.allclose(reward.mean, torch.tensor([0.4, 0.5, 0.6]))  # read from preprocessor_config.json
    s = check_reward(reward, 24)
    logits, logit_scale = reference_clip_logits(hf_clip_dir, images(2, 24))
    assert torch.allclose(s, logits / logit_scale * 100, atol=1e-4)


def test_pickscore(hf_clip_dir):
    reward = get_reward("pickscore", model_name_or_path=hf_clip_dir, processor_name_or_path=hf_clip_dir)
    assert isinstance(reward, PickScore) and reward.differentiable
    s = check_reward(reward, 24)
    logits, _ = reference_clip_logits(hf_clip_dir, images(2, 24))
    assert torch.allclose(s, logits, atol=1e-4)  # logit_scale.exp() * cosine


# ----------------------------------------------------------------------------- aesthetic


@pytest.fixture(scope="module")
def aesthetic_head(tmp_path_factory) -> tuple[Path, dict]:
    """A fake head with the original ``sac+logos+ava1-l14-linearMSE.pth`` key layout (16-d input here)."""
    torch.manual_seed(1)
    sd = RewardMLP(16).state_dict()
    assert sorted(sd) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    path = tmp_path_factory.mktemp("aesthetic") / "head.pth"
    torch.save(sd, path)
    return path, sd


def test_aesthetic(oc_dir, aesthetic_head, tmp_path):
    path, sd = aesthetic_head
    reward = get_reward("aesthetic", clip_model=str(oc_dir), head_path=path)
    assert reward.differentiable and reward.mlp.input_size == 16
    s = check_reward(reward, 16)
    assert torch.equal(s, reward(images(), ["something else entirely", ""]))  # the prompt is ignored
    model, _, mean, std = open_clip_reference(oc_dir)
    mlp = RewardMLP(16).eval()
    mlp.load_state_dict(sd)
    with torch.no_grad():
        ref = mlp(F.normalize(model.encode_image((images() - mean) / std), dim=-1)).squeeze(-1)
    assert torch.allclose(s, ref, atol=1e-5)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "head.safetensors"))
    assert torch.allclose(AestheticScore(str(oc_dir), head_path=tmp_path / "head.safetensors")(images(), PROMPTS), s)


# ----------------------------------------------------------------------------- HPSv2


def test_hpsv2(oc_dir, tmp_path):
    import open_clip

    g = torch.Generator().manual_seed(5)  # "fine-tuned" weights, different from the folder's own
    base = open_clip.create_model(f"local-dir:{oc_dir.resolve()}").state_dict()
    tuned = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in base.items()}
    ckpt = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tuned.items()}, "epoch": 1}, ckpt)
    reward = get_reward("hpsv2.1", checkpoint_path=ckpt, model_name=str(oc_dir))
    assert isinstance(reward, HPSv2) and reward.name == "hpsv2.1" and reward.version == "v2.1" and reward.differentiable
    s = check_reward(reward, 16)
    model, tok, mean, std = open_clip_reference(oc_dir, tuned)
    with torch.no_grad():
        ref = (model.encode_image((images() - mean) / std, normalize=True) * model.encode_text(tok(PROMPTS), normalize=True)).sum(-1)
    assert torch.allclose(s, ref, atol=1e-5) and s.abs().max() <= 1
    assert not torch.allclose(s, OpenCLIPScore(str(oc_dir), scale=1.0)(images(), PROMPTS))  # the checkpoint was loaded
    v2 = HPSv2("v2", checkpoint_path=ckpt, model_name=oc_dir, scale=100.0)
    assert v2.name == "hpsv2" and v2.version == "v2.0" and torch.allclose(v2(images(), PROMPTS), 100 * s, atol=1e-3)
    # non-square: HPSv2 pads the resized image to a square (ResizeMaxSize)
    wide = images(2, 32)[..., :16, :]
    padded = torch.zeros(2, 3, 16, 16)
    padded[:, :, 4:12] = F.interpolate(wide, size=(8, 16), mode="bicubic", antialias=True).clamp(0, 1)
    assert torch.allclose(reward(wide, PROMPTS), reward(padded, PROMPTS), atol=1e-5)
    with pytest.raises(ValueError, match="unknown HPS version"):
        HPSv2("v3", checkpoint_path=ckpt, model_name=oc_dir)


# ----------------------------------------------------------------------------- ImageReward


def test_imagereward_native(blip_dir):
    reward = get_reward("imagereward", name_or_path=blip_dir, backend="transformers")
    assert isinstance(reward.model, ImageRewardModel) and reward.differentiable
    s = check_reward(reward, 32)
    m = ImageRewardModel.from_pretrained(blip_dir).eval()
    tok = bert_tokenizer()
    t = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = m.vision_model(pixel_values=(images(2, 32) - mean) / std).last_hidden_state
        cls = m.text_encoder(input_ids=t.input_ids, attention_mask=t.attention_mask, encoder_hidden_states=emb).last_hidden_state[:, 0]
        ref = (m.mlp(cls).squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
    assert torch.allclose(s, ref, atol=1e-5)
    assert not torch.allclose(s[0:1], reward(images(2, 32)[:1], PROMPTS[1]))  # the prompt matters


def test_imagereward_official_checkpoint(tmp_path, blip_dir):
    """An ``ImageReward.pt``-layout state dict built from independent reference modules (timm's ViT,
    which BLIP's ViT copies, and transformers' BERT with cross-attention, which BLIP's MED copies)
    converts, loads strictly, and reproduces their outputs."""
    from timm.models.vision_transformer import VisionTransformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, qkv_bias=True,
                            num_classes=0, global_pool="", norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    bert = BertModel(BertConfig(vocab_size=len(WORDS) + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=40, is_decoder=True, add_cross_attention=True), add_pooling_layer=False).eval()
    head = RewardMLP(32).eval()
    sd = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    sd |= {f"blip.text_encoder.{k}": v for k, v in bert.state_dict().items() if "token_type" not in k}
    sd |= {f"mlp.{k}": v for k, v in head.state_dict().items()}
    sd |= {"blip.text_encoder.embeddings.position_ids": torch.arange(40)[None], "blip.vision_proj.weight": torch.zeros(8, 32),
           "blip.vision_proj.bias": torch.zeros(8), "blip.text_proj.weight": torch.zeros(8, 32), "blip.text_proj.bias": torch.zeros(8)}
    converted = convert_imagereward_checkpoint(sd)
    assert not any("proj" in k and "projection" not in k for k in converted) and "text_encoder.embeddings.position_ids" not in converted
    torch.save(sd, tmp_path / "ImageReward.pt")
    m = ImageRewardModel.from_official(tmp_path / "ImageReward.pt", config=tiny_blip_config()).eval()  # strict load
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.vision_model(pixel_values=x).last_hidden_state, vit.forward_features(x), atol=1e-5)
        # BERT is causal when it has cross-attention; make it bidirectional like BLIP's MED encoder
        bert.config.is_decoder = False
        for layer in bert.encoder.layer:
            layer.attention.self.is_causal = False
        bert.embeddings.token_type_embeddings.weight.zero_()  # MED has no token types
        emb = torch.randn(2, 17, 32)
        ids = torch.tensor([[2, 5, 6, 8, 3, 0], [2, 9, 7, 10, 3, 0]])
        mask = (ids != 0).long()
        ours = m.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=emb).last_hidden_state
        ref = bert(input_ids=ids, attention_mask=mask, encoder_hidden_states=emb).last_hidden_state
        assert torch.allclose(ours[:, :5], ref[:, :5], atol=1e-5)
        assert torch.allclose(m.mlp(ours[:, 0]), head(ref[:, 0]), atol=1e-5)
    # the reward loads the same file (tokenizer from a folder; official config overridden for the tiny model)
    reward = ImageReward(tmp_path / "ImageReward.pt", tokenizer_name_or_path=blip_dir, config=tiny_blip_config(), backend="transformers")
    assert reward(images(2, 32), PROMPTS).shape == (2,)
    reward.save_pretrained(tmp_path / "converted")
    again = ImageReward(tmp_path / "converted", backend="transformers")
    assert torch.allclose(again(images(2, 32), PROMPTS), reward(images(2, 32), PROMPTS))


def test_imagereward_package_backend(blip_dir, monkeypatch):
    """With the ``ImageReward`` package installed, its ``load`` and modules are used (faked here)."""
    native = ImageReward(blip_dir, backend="transformers")
    calls = []

    class FakeViT(torch.nn.Module):  # BLIP's ViT: tokens after the final norm; knows its input size
        def __init__(self, vision_model):
            super().__init__()
            self.vision_model = vision_model
            self.patch_embed = types.SimpleNamespace(img_size=(32, 32))

        def forward(self, x):
            return self.vision_model(pixel_values=x).last_hidden_state

    class FakeRM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ImageRewardModel.from_pretrained(blip_dir)
            self.mlp = self.net.mlp
            self.mean, self.std = 0.16717362830052426, 1.0333394966054072
            self.blip = types.SimpleNamespace(visual_encoder=FakeViT(self.net.vision_model), text_encoder=self.net.text_encoder, tokenizer=native.tokenizer)

    fake = types.ModuleType("ImageReward")
    fake.load = lambda name, device="cpu": calls.append((name, device)) or FakeRM()
    monkeypatch.setitem(sys.modules, "ImageReward", fake)
    reward = get_reward("imagereward", name_or_path="ImageReward-v1.0")
    assert calls == [("ImageReward-v1.0", "cpu")]
    s = check_reward(reward, 32)
    assert torch.allclose(s, native(images(2, 32), PROMPTS), atol=1e-5)
    assert isinstance(ImageReward(blip_dir).model, ImageRewardModel)  # our own folder format stays native


def test_imagereward_package_backend_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # import fails
    with pytest.raises(ImportError, match="image-reward"):
        ImageReward(backend="package")


# ----------------------------------------------------------------------------- composites


class Const(Reward):
    """A toy reward: per-image mean brightness times ``k``."""

    def __init__(self, k: float, differentiable: bool = True, name: str = "const"):
        super().__init__()
        self.k, self.differentiable, self.name = k, differentiable, name

    def score(self, images, prompts):
        return self.k * images.mean((1, 2, 3))


def test_weighted_reward(oc_dir):
    clip = OpenCLIPScore(str(oc_dir))
    a, b = Const(2.0, name="bright"), clip
    w = WeightedReward({a: 0.5, b: -0.25})
    assert w.differentiable and "bright" in w.name
    x = images()
    assert torch.allclose(w(x, PROMPTS), 0.5 * a(x, PROMPTS) - 0.25 * b(x, PROMPTS), atol=1e-5)
    check_reward(w, 16)
    assert not WeightedReward([(a, 1.0), (Const(1.0, differentiable=False), 1.0)]).differentiable
    with pytest.raises(ValueError):
        WeightedReward({})


def test_rank_sum_reward():
    x = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.9, 0.5, 0.5)])
    r = RankSumReward([Const(1.0), Const(-1.0, name="dark"), Const(0.0, name="flat")])
    assert not r.differentiable
    # brightness ranks [0, 3, 1.5, 1.5], darkness ranks [3, 0, 1.5, 1.5], all-tied ranks 1.5 each
    assert torch.equal(r(x, "p"), torch.tensor([4.5, 4.5, 4.5, 4.5]))
    assert torch.equal(batch_ranks(torch.tensor([0.1, 0.9, 0.5, 0.5])), torch.tensor([0.0, 3.0, 1.5, 1.5]))
    r2 = RankSumReward([Const(1.0), Const(1.0)], weights=[1.0, 2.0])
    assert torch.equal(r2(x, "p"), 3 * torch.tensor([0.0, 3.0, 1.5, 1.5]))
    xg = x.clone().requires_grad_(True)
    assert not r(xg, "p").requires_grad


def test_normalized():
    a = Const(2.0, name="bright")
    n = Normalized(a, mean=0.5, std=0.25)
    x = images(grad=True)
    out = n(x, PROMPTS)
    assert n.name == "bright" and n.differentiable
    assert torch.allclose(out, (a(x, PROMPTS) - 0.5) / 0.25)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert torch.allclose(a.normalized(0.5, 0.25)(x, PROMPTS), out)
    with pytest.raises(ValueError):
        Normalized(a, 0.0, 0.0)


# ----------------------------------------------------------------------------- offline errors


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, empty cache: every download must fail fast with a clear message."""
    import huggingface_hub.constants as C

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # the package backend, if installed, is not used


@pytest.mark.parametrize(
    "build, names",
    [
        (lambda d: get_reward("clip"), ["ViT-B-32", "openai"]),
        (lambda d: get_reward("hf_clip"), ["openai/clip-vit-large-patch14"]),
        (lambda d: get_reward("pickscore"), ["yuvalkirstain/PickScore_v1"]),
        (lambda d: get_reward("aesthetic", clip_model=str(d["oc"])), ["trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"]),
        (lambda d: get_reward("aesthetic", head_path=d["head"]), ["ViT-L-14", "openai"]),
        (lambda d: get_reward("hpsv2"), ["xswu/HPSv2", "HPS_v2_compressed.pt"]),
        (lambda d: get_reward("hpsv2.1"), ["xswu/HPSv2", "HPS_v2.1_compressed.pt"]),
        (lambda d: HPSv2(checkpoint_path=d["missing"]), ["HPS", "missing.pt"]),
        (lambda d: get_reward("imagereward"), ["THUDM/ImageReward", "ImageReward.pt"]),
        (lambda d: ImageReward(d["blip_no_tok"]), ["bert-base-uncased"]),
    ],
    ids=["clip", "hf_clip", "pickscore", "aesthetic_head", "aesthetic_clip", "hpsv2", "hpsv2.1", "hps_path", "imagereward", "imagereward_tokenizer"],
)
def test_offline_errors(offline, build, names, oc_dir, aesthetic_head, blip_dir, tmp_path):
    import shutil

    no_tok = tmp_path / "blip_no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(blip_dir / f, no_tok / f)
    deps = {"oc": oc_dir, "head": aesthetic_head[0], "blip_no_tok": no_tok, "missing": tmp_path / "missing.pt"}
    with pytest.raises(RewardWeightsNotFound) as e:
        build(deps)
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError)
    for n in names:
        assert n in msg, msg
    assert "not available offline" in msg and "Hugging Face cache" in msg and "local path" in msg
