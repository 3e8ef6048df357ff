"""Tiny random-weight diffusers pipelines for CPU tests (after diffusers' ``get_dummy_components``).

Tokenizers are built locally (no hub): the shapes CLIP tokenizer and a word-level T5 tokenizer.
Images are 16×16 pixels.
"""

from __future__ import annotations

import torch

SIZE = 16


def clip_tokenizer():
    from steer.shapes.tokenizer import build_tokenizer

    return build_tokenizer()


def t5_tokenizer():
    from transformers import T5Tokenizer

    from steer.shapes.prompts import vocabulary

    words = sorted({w for s in vocabulary() for w in s.split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -1.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_text_encoder(tok, seed: int, projection: bool, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tok), max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, hidden_size=hidden, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, projection_dim=projection_dim, hidden_act="gelu",
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def t5_encoder(tok, seed: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=len(tok), d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(cfg).eval()


def vae(seed: int, latent_channels: int = 4, blocks=(8, 8), **kw):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=list(blocks), latent_channels=latent_channels, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * len(blocks), up_block_types=["UpDecoderBlock2D"] * len(blocks),
        layers_per_block=1, sample_size=SIZE, **kw,
    ).eval()


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd(prediction_type: str = "epsilon"):
    """``StableDiffusionPipeline`` with a ``DDIMScheduler`` (latents 4×8×8)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tok = clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4,
    ).eval()
    sched = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, prediction_type=prediction_type,
    )
    return _quiet(StableDiffusionPipeline(
        vae=vae(1), text_encoder=clip_text_encoder(tok, 2, False), tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ))


def sdxl():
    """``StableDiffusionXLPipeline`` (two CLIP encoders, text-time conditioning, DDIM)."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok = clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
        norm_num_groups=4,
    ).eval()
    sched = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, timestep_spacing="leading",
    )
    return _quiet(StableDiffusionXLPipeline(
        vae=vae(1), text_encoder=clip_text_encoder(tok, 2, False), text_encoder_2=clip_text_encoder(tok, 3, True),
        tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched,
    ))


def sd3(with_t5: bool = False, shift: float = 3.0):
    """``StableDiffusion3Pipeline`` with or without ``text_encoder_3`` (flow matching, latents 4×8×8)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = clip_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
        pos_embed_max_size=8,
    ).eval()
    t5 = dict(text_encoder_3=t5_encoder(t5_tok := t5_tokenizer(), 4, d_model=64), tokenizer_3=t5_tok) if with_t5 else dict(
        text_encoder_3=None, tokenizer_3=None
    )
    return _quiet(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=vae(1, shift_factor=0.1, scaling_factor=1.3),
        text_encoder=clip_text_encoder(tok, 2, True), tokenizer=tok, text_encoder_2=clip_text_encoder(tok, 3, True),
        tokenizer_2=tok, **t5,
    ))


def flux(guidance_embeds: bool = True):
    """``FluxPipeline`` (CLIP + T5, packed latents; unpacked 4×8×8)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    ).eval()
    sched = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )
    return _quiet(FluxPipeline(
        transformer=transformer, scheduler=sched, vae=vae(1, shift_factor=0.1, scaling_factor=1.3),
        text_encoder=clip_text_encoder(tok, 2, False), tokenizer=tok, text_encoder_2=t5_encoder(t5_tok, 4),
        tokenizer_2=t5_tok,
    ))
