"""Tiny random-weight BLIP-VQA (transformers) and a tiny trained spaCy pipeline, for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
COLOURS = ["red", "blue", "green", "brown", "black", "white", "yellow", "pink"]
OBJECTS = ["car", "bench", "bowl", "cake", "horse", "vase", "chair", "book", "dog", "cat"]
WORDS = ["a", "an", "and", "the", "?", ".", "yes", "no", "of", "on", "left", "right", "top", "bottom", "next", "to", "near"]


def write_blip_vqa_dir(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A ``BlipForQuestionAnswering`` + ``BlipProcessor`` folder (1-layer ViT/BERT, WordPiece vocab of ~45 words)."""
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + WORDS + COLOURS + OBJECTS + ["[DEC]", "[ENC]"]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tok)
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=32, encoder_hidden_size=32, bos_token_id=vocab.index("[DEC]"),
            pad_token_id=vocab.index("[PAD]"), sep_token_id=vocab.index("[SEP]"),
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=16),
    )
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(cfg).eval()
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def spacy_training_docs(nlp) -> list:
    """~16 hand-annotated CompBench-like phrases "a {colour} {object} and a {colour} {object}" (UPOS + UD-style deps)."""
    from spacy.tokens import Doc

    docs = []
    for i in range(16):
        c1, o1, c2, o2 = COLOURS[i % 6], OBJECTS[i % 8], COLOURS[(i + 1) % 6], OBJECTS[(i + 3) % 8]
        docs.append(Doc(
            nlp.vocab, words=["a", c1, o1, "and", "a", c2, o2],
            pos=["DET", "ADJ", "NOUN", "CCONJ", "DET", "ADJ", "NOUN"], heads=[2, 2, 2, 2, 6, 6, 2],
            deps=["det", "amod", "ROOT", "cc", "det", "amod", "conj"],
        ))
    return docs


def write_spacy_pipeline(folder: Path, iterations: int = 20) -> Path:
    """A blank English spaCy pipeline with a morphologizer (POS) and a parser, trained a few
    deterministic iterations on :func:`spacy_training_docs`, saved with ``nlp.to_disk``."""
    import spacy
    from spacy.training import Example

    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("morphologizer")
    nlp.add_pipe("parser", config={"min_action_freq": 1})  # keep cc/conj (16 examples each)
    examples = [Example(nlp.make_doc(d.text), d) for d in spacy_training_docs(nlp)]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(iterations):
        nlp.update(examples, sgd=optimizer, losses={})
    nlp.to_disk(folder)
    return folder
