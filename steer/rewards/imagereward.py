"""ImageReward (Xu et al. 2023): BLIP image-grounded text encoder + MLP head, trained on human rankings.

Uses the ``ImageReward`` pip package when it is installed, otherwise a re-implementation on
transformers' BLIP modules that loads the official ``ImageReward.pt`` through
:func:`convert_imagereward_checkpoint`, or a folder written by :meth:`ImageReward.save_pretrained`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .aesthetic import RewardMLP
from .base import Reward
from .preprocess import OPENAI_MEAN, OPENAI_STD, as_size, normalize_images
from .weights import from_pretrained, hub_file, load_state_dict, weights_not_found

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_FILE = "ImageReward.pt"
IMAGEREWARD_MODELS = {"ImageReward-v1.0": (IMAGEREWARD_REPO, IMAGEREWARD_FILE)}
#: z-scoring of the raw head output, from the reference implementation
IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072
MAX_LENGTH = 35  # the reference tokenizes with padding="max_length", max_length=35


def official_config():
    """The ``BlipConfig`` of ImageReward v1.0: BLIP ViT-L/16 at 224 px (LayerNorm eps 1e-6, as BLIP's
    timm-style ViT) and the BERT-base MED text encoder of ``med_config.json`` (vocab 30524 = BERT +
    ``[DEC]``, ``[ENC]``) with cross-attention to the 1024-wide image tokens."""
    from transformers import BlipConfig

    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
    text = dict(
        vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0, encoder_hidden_size=1024,
    )
    return BlipConfig(vision_config=vision, text_config=text)


# (official key regex, our key template); official keys not matched are dropped (vision_proj,
# text_proj, the text encoder's position_ids buffer, momentum encoders, ...).
_KEY_MAP: list[tuple[str, str]] = [
    (r"blip\.visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
    (r"blip\.visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
    (r"blip\.visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.qkv.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"blip\.visual_encoder\.norm\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"blip\.text_encoder\.embeddings\.position_ids", ""),  # a buffer, rebuilt by transformers
    (r"blip\.text_encoder\.(embeddings|encoder)\.(.+)", r"text_encoder.\1.\2"),  # BLIP's MED == BlipTextModel names
    (r"mlp\.layers\.(\d+)\.(weight|bias)", r"mlp.layers.\1.\2"),
]


def convert_imagereward_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``ImageReward.pt`` keys -> :class:`ImageRewardModel` keys.

    ========================================================  =====================================================
    official (BLIP ViT, MED BERT, MLP)                        ours (transformers ``BlipVisionModel``/``BlipTextModel``)
    ========================================================  =====================================================
    ``blip.visual_encoder.cls_token``                         ``vision_model.embeddings.class_embedding``
    ``blip.visual_encoder.pos_embed``                         ``vision_model.embeddings.position_embedding``
    ``blip.visual_encoder.patch_embed.proj.*``                ``vision_model.embeddings.patch_embedding.*``
    ``blip.visual_encoder.blocks.N.norm1|norm2.*``            ``vision_model.encoder.layers.N.layer_norm1|2.*``
    ``blip.visual_encoder.blocks.N.attn.qkv|proj.*``          ``vision_model.encoder.layers.N.self_attn.qkv|projection.*``
    ``blip.visual_encoder.blocks.N.mlp.fc1|fc2.*``            ``vision_model.encoder.layers.N.mlp.fc1|fc2.*``
    ``blip.visual_encoder.norm.*``                            ``vision_model.post_layernorm.*``
    ``blip.text_encoder.{embeddings,encoder}.*``              ``text_encoder.{embeddings,encoder}.*`` (same names)
    ``mlp.layers.N.*``                                        ``mlp.layers.N.*``
    ========================================================  =====================================================

    Dropped: ``blip.vision_proj``/``blip.text_proj`` (unused by the score), the text encoder's
    ``position_ids`` buffer, and any other key (e.g. momentum encoders).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        for pattern, template in _KEY_MAP:
            m = re.fullmatch(pattern, key)
            if m:
                if template:
                    out[m.expand(template)] = value
                break
    return out


class ImageRewardModel(nn.Module):
    """BLIP vision encoder -> image-grounded BLIP text encoder -> [CLS] state -> :class:`RewardMLP` (raw score)."""

    def __init__(self, config: Any):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.config = config
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False)
        self.mlp = RewardMLP(config.text_config.hidden_size)

    def text_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's [CLS] hidden state ``(B, D)``, cross-attending to the image tokens."""
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        return out.last_hidden_state[:, 0, :]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw (not z-scored) rewards ``(B,)``."""
        feats = self.text_features(pixel_values, input_ids, attention_mask)
        return self.mlp(feats.to(self.mlp.layers[0].weight.dtype)).squeeze(-1).float()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json`` (a ``BlipConfig``) and ``model.safetensors``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(folder)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ImageRewardModel":
        """Load a folder written by :meth:`save_pretrained`."""
        from transformers import BlipConfig

        model = cls(BlipConfig.from_pretrained(str(folder)))
        model.load_state_dict(load_state_dict(Path(folder) / "model.safetensors"))
        return model

    @classmethod
    def from_official(cls, checkpoint: str | Path | Mapping[str, torch.Tensor], config: Any = None) -> "ImageRewardModel":
        """Load the official ``ImageReward.pt`` (or its state dict); ``config`` defaults to :func:`official_config`."""
        model = cls(config if config is not None else official_config())
        sd = checkpoint if isinstance(checkpoint, Mapping) else load_state_dict(checkpoint)
        model.load_state_dict(convert_imagereward_checkpoint(sd), strict=True)
        return model


class _PackageModel(nn.Module):
    """The ``ImageReward`` package's model behind :class:`ImageRewardModel`'s interface (same computation)."""

    def __init__(self, rm: Any):
        super().__init__()
        self.rm = rm

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        blip = self.rm.blip
        image_embeds = blip.visual_encoder(pixel_values)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = blip.text_encoder(input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts, return_dict=True)
        return self.rm.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)


def _package():
    try:
        import ImageReward as RM  # noqa: N814
    except ImportError:
        return None
    return RM


def _add_blip_tokens(tokenizer: Any) -> Any:
    """BLIP's ``init_tokenizer``: ``[DEC]`` as BOS and ``[ENC]`` as an extra special token (no-ops if present)."""
    if tokenizer.bos_token != "[DEC]":
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    return tokenizer


class ImageReward(Reward):
    """ImageReward score (z-scored: about -2..2, higher is better) of images against prompts.

    Args:
        name_or_path: ``"ImageReward-v1.0"`` (the official checkpoint from the HF cache), a path to
            the official ``ImageReward.pt`` (or a folder holding it), or a folder written by
            :meth:`save_pretrained` (``config.json``, ``model.safetensors``, tokenizer).
        tokenizer_name_or_path: BERT tokenizer (default: the folder's own, else ``bert-base-uncased``).
        config: ``BlipConfig`` for an official-layout checkpoint (default :func:`official_config`).
        backend: ``"auto"`` (the ``ImageReward`` package if installed, except for folders written by
            :meth:`save_pretrained`), ``"package"`` or ``"transformers"``.
        dtype: optional dtype for the encoders (the head runs in float32, as the reference).
    """

    name = "imagereward"
    differentiable = True

    def __init__(
        self,
        name_or_path: str | Path = "ImageReward-v1.0",
        tokenizer_name_or_path: str | Path | None = None,
        config: Any = None,
        backend: str = "auto",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if backend not in ("auto", "package", "transformers"):
            raise ValueError(f"backend must be 'auto', 'package' or 'transformers', got {backend!r}")
        ours = Path(name_or_path).is_dir() and (Path(name_or_path) / "model.safetensors").is_file()
        RM = _package() if backend == "package" or (backend == "auto" and not ours) else None
        if backend == "package" and RM is None:
            raise ImportError("backend='package' needs the ImageReward package: pip install image-reward")
        if RM is not None:
            try:
                rm = RM.load(str(name_or_path), device=device)
            except (OSError, RuntimeError, ValueError) as e:
                raise weights_not_found(f"ImageReward model {str(name_or_path)!r}", e) from e
            self.model: nn.Module = _PackageModel(rm)
            self.tokenizer = rm.blip.tokenizer
            patch_embed = getattr(rm.blip.visual_encoder, "patch_embed", None)
            self.image_size = as_size(getattr(patch_embed, "img_size", 224))
        else:
            self.model, tok_default = self._load_native(name_or_path, config)
            tok = tokenizer_name_or_path if tokenizer_name_or_path is not None else tok_default
            from transformers import AutoTokenizer

            self.tokenizer = _add_blip_tokens(from_pretrained(AutoTokenizer.from_pretrained, tok, "ImageReward's BERT tokenizer"))
            self.image_size = as_size(self.model.config.vision_config.image_size)
        self.model.to(device).eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype)
            if isinstance(self.model, ImageRewardModel):
                self.model.mlp.float()  # the reference runs the head on float32 features
        dt = dtype or torch.float32
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN, dtype=dt, device=device))
        self.register_buffer("std", torch.tensor(OPENAI_STD, dtype=dt, device=device))
        self.score_mean, self.score_std = IMAGEREWARD_MEAN, IMAGEREWARD_STD

    @staticmethod
    def _load_native(name_or_path: str | Path, config: Any) -> tuple[ImageRewardModel, str]:
        key = str(name_or_path)
        if key in IMAGEREWARD_MODELS:
            repo, filename = IMAGEREWARD_MODELS[key]
            path = Path(hub_file(repo, filename, what=f"ImageReward checkpoint {filename!r} (hub repo {repo!r})"))
            return ImageRewardModel.from_official(path, config), "bert-base-uncased"
        path = Path(name_or_path)
        if path.is_dir() and (path / "model.safetensors").is_file():
            tok = str(path) if (path / "tokenizer_config.json").is_file() else "bert-base-uncased"
            return ImageRewardModel.from_pretrained(path), tok
        if path.is_dir() and (path / IMAGEREWARD_FILE).is_file():
            path = path / IMAGEREWARD_FILE
        if path.is_file():
            return ImageRewardModel.from_official(path, config), "bert-base-uncased"
        raise weights_not_found(
            f"ImageReward model {key!r}", FileNotFoundError(f"not a known name {sorted(IMAGEREWARD_MODELS)}, file or folder")
        )

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the transformers-backend model and its tokenizer to ``folder`` (reload with ``ImageReward(folder)``)."""
        if not isinstance(self.model, ImageRewardModel):
            raise TypeError("save_pretrained needs the transformers backend (backend='transformers')")
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(str(folder))

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return tok.input_ids.to(self.mean.device), tok.attention_mask.to(self.mean.device)

    def raw_score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The head's output before z-scoring, ``(B,)``."""
        pixels = normalize_images(images, self.image_size, self.mean, self.std)
        return self.model(pixels, *self.tokenize(prompts))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return ((self.raw_score(images, prompts) - self.score_mean) / self.score_std).float()
