"""Attention processors.

:class:`CollapsedPaddingJointAttnProcessor` runs SD3's joint attention with the constant
text padding collapsed: SD3 without its T5 encoder feeds ``max_sequence_length`` all-zero
context tokens. Having no positional embedding, they stay identical through every block,
so they act like one token whose attention weight is multiplied by their count:
``softmax`` over ``n`` equal keys equals one key with its logit raised by ``log(n)``.
Feeding one zero token and this processor gives the same output at a fraction of the cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class CollapsedPaddingJointAttnProcessor:
    """SD3 joint attention where the last context token stands for ``count`` identical tokens."""

    def __init__(self, count: int):
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.count = int(count)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        b, n_img = hidden_states.shape[:2]

        def heads(x):
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        bias = None
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
            bias = torch.zeros(1, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
            bias[..., -1] = math.log(self.count)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[-1]).to(q.dtype)
        if encoder_hidden_states is not None:
            out, ctx = out[:, :n_img], out[:, n_img:]
            if not attn.context_pre_only:
                ctx = attn.to_add_out(ctx)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, ctx) if encoder_hidden_states is not None else out
