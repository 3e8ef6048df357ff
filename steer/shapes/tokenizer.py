"""A CLIP BPE tokenizer whose vocabulary is the shapes world's words (one token each)."""

from __future__ import annotations

import json
import string

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from .prompts import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16  # longest template: 10 words + start/end tokens


def build_tokenizer(max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """Train BPE merges on the world's words until each is one token; wrap as a ``CLIPTokenizer``.

    Letters stay in the vocabulary, so any lowercase text still tokenizes. The end-of-text
    token gets the highest id, so CLIP's argmax pooling (open_clip) finds it.
    """
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = list(string.ascii_lowercase)
    trainer = trainers.BpeTrainer(
        vocab_size=10_000, min_frequency=1, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False
    )
    bpe.train_from_iterator(vocabulary(), trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # the trainer breaks frequency ties differently from run to run: number tokens canonically
    # (letters, then word pieces by length and spelling) so every build gives each word the same id
    tokens = sorted(state["vocab"], key=lambda t: (len(t.removesuffix("</w>")) > 1, len(t), t))
    tokens += [c + "</w>" for c in alphabet if c + "</w>" not in state["vocab"]]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
