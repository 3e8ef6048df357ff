"""T2I-CompBench evaluators (Huang et al. 2023), reimplemented on current libraries.

Categories and metrics (``CompBenchEvaluator.evaluate``):

* ``color`` / ``shape`` / ``texture``: BLIP-VQA attribute binding (:class:`BlipVqaScorer`);
* ``spatial``: detector-based 2-D relation score (:class:`SpatialScorer`);
* ``non_spatial``: CLIP ViT-B/32 raw cosine (:class:`ClipScorer`);
* ``complex``: the "3-in-1" average of the three (:class:`ComplexScorer`);
* ``numeracy`` and ``3d_spatial`` are not supported (they need UniDet counting / a depth model).

The original scripts (github.com/Karine-Huang/T2I-CompBench: ``BLIPvqa_eval/BLIP_vqa.py``,
``BLIPvqa_eval/models/blip_vqa.py``, ``UniDet_eval/2D_spatial_eval.py``,
``CLIPScore_eval/CLIP_similarity.py``, ``3_in_1_eval/3_in_1.py``) were read, not copied; the
deviations are listed per class. Evaluator versions change the numbers: :meth:`CompBenchEvaluator.info`
records the model ids and library versions used.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .geneval import Detection

CATEGORIES: tuple[str, ...] = ("color", "shape", "texture", "spatial", "non_spatial", "complex", "numeracy", "3d_spatial")
SUPPORTED: tuple[str, ...] = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
UNSUPPORTED: dict[str, str] = {
    "numeracy": "needs UniDet object counting plus noun/number parsing (UniDet_eval/numeracy_eval.py)",
    "3d_spatial": "needs a depth model (DPT) next to the detector (UniDet_eval/3D_spatial_eval.py)",
}

#: 2-D relations of spatial_val.txt, in the order the original searches them in the prompt
RELATIONS: tuple[str, ...] = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of", "on the top of")
#: relation phrases as written in prompts (complex_val.txt uses "on top of") -> canonical relation
RELATION_PHRASES: dict[str, str] = {
    "on side of": "on side of",
    "next to": "next to",
    "near": "near",
    "on the left of": "on the left of",
    "on the right of": "on the right of",
    "on the bottom of": "on the bottom of",
    "on bottom of": "on the bottom of",
    "on the top of": "on the top of",
    "on top of": "on the top of",
}
#: prompt nouns -> COCO detector labels (the original maps girl/boy/man/woman to "person"; the
#: rest bridge UniDet's unified label names to COCO's)
COCO_ALIASES: dict[str, str] = {
    "girl": "person", "boy": "person", "man": "person", "woman": "person", "child": "person", "people": "person",
    "sofa": "couch", "phone": "cell phone", "cellphone": "cell phone", "television": "tv", "computer": "laptop",
    "table": "dining table", "desk": "dining table", "bag": "handbag", "plane": "airplane", "bike": "bicycle",
    "motorbike": "motorcycle", "doughnut": "donut", "ball": "sports ball", "hydrant": "fire hydrant",
    "plant": "potted plant", "glass": "wine glass", "drier": "hair drier", "mouse": "computer mouse", "remote": "tv remote",
}


# --------------------------------------------------------------------------- prompts and files


def read_prompts(folder: str | Path, category: str) -> list[str]:
    """Prompts of ``{folder}/{category}_val.txt``: stripped, empty lines skipped."""
    folder = Path(folder)
    if category not in CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category {category!r}; known: {', '.join(CATEGORIES)}")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"T2I-CompBench prompt folder {str(folder)!r} does not exist; it should hold {category}_val.txt "
            f"(files {{category}}_val.txt of the benchmark's examples/dataset folder)"
        )
    path = folder / f"{category}_val.txt"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}: expected the file {category}_val.txt in {folder}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def image_name(prompt: str, index: int) -> str:
    """The benchmark's file name ``f"{prompt}_{index:06d}.png"`` (``index``: global image counter).

    Path separators (``/`` and ``\\``) and NULs in the prompt become spaces, so a name never
    creates folders. The original scripts recover the prompt as ``name.split("_")[0]``: an
    underscore inside a prompt would be lost there (none of the shipped prompts has one).
    """
    safe = re.sub(r"[/\\\x00]", " ", prompt).strip()
    return f"{safe}_{int(index):06d}.png"


# --------------------------------------------------------------------------- noun phrases


def noun_chunks(doc: Any) -> list[str]:
    """Texts of ``doc.noun_chunks`` of a parsed spaCy ``Doc`` (needs POS and dependency annotation)."""
    return [chunk.text for chunk in doc.noun_chunks]


class NounPhraseSplitter:
    """spaCy noun-phrase splitter, as in the original (``doc.noun_chunks`` of ``en_core_web_sm``).

    Args:
        model: an installed spaCy pipeline package name or a pipeline folder (``nlp.to_disk``).
    """

    def __init__(self, model: str | Path = "en_core_web_sm"):
        try:
            import spacy
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("NounPhraseSplitter needs spaCy: pip install spacy (extra 'bench')") from e
        self.model = str(model)
        try:
            self.nlp = spacy.load(self.model)
        except OSError as e:
            raise OSError(
                f"could not load the spaCy pipeline {self.model!r} ({e}). Install it with "
                f"`python -m spacy download en_core_web_sm`, or pass the folder of a saved pipeline."
            ) from e

    def __call__(self, prompt: str) -> list[str]:
        return noun_chunks(self.nlp(prompt))

    def pos(self, text: str) -> list[tuple[str, str]]:
        """``(token text, coarse POS)`` pairs of ``text``."""
        return [(t.text, t.pos_) for t in self.nlp(text)]


# --------------------------------------------------------------------------- BLIP-VQA


class BlipVqaScorer:
    """BLIP-VQA attribute-binding score (color/shape/texture) with transformers' ``BlipForQuestionAnswering``.

    :meth:`prob_yes` computes, per (image, question): the vision encoder's patch embeddings; the
    question encoded by the text encoder with cross-attention to them (question lower-cased,
    ``.!"()*#:;~`` removed, at most 35 tokens, first token replaced by ``[ENC]`` when the tokenizer
    has it, as BLIP does); one text-decoder step from the decoder start token (``[DEC]``,
    ``text_config.bos_token_id``) cross-attending to the question states with the question's
    padding mask; ``p = softmax(logits at position 0)`` over the full vocabulary, and

    * ``normalize=True`` (default): ``p(yes) / (p(yes) + p(no))``, the first word-piece of each
      answer — what the original's ``inference='vqa_prob'`` does (``BLIPvqa_eval/models/blip_vqa.py``
      ``vqa_prob``, the default of ``VQA_main``);
    * ``normalize=False``: ``p(yes)`` over the full vocabulary — the first-answer-token probability
      of LAVIS-style rank scoring over the candidates ``["yes", "no"]``.

    Deviations: transformers' port of the weights ("Salesforce/blip-vqa-base") instead of BLIP's
    ``model_base_vqa_capfilt_large.pth``; images go through the model's ``BlipProcessor`` (384 px
    for blip-vqa-base) unless ``image_size`` is given (the original uses 480 px; other sizes
    interpolate the position embeddings).
    """

    def __init__(
        self,
        model: str | Path = "Salesforce/blip-vqa-base",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        normalize: bool = True,
        image_size: int | None = None,
        batch_size: int = 32,
        max_phrases: int = 8,
    ):
        from transformers import BlipForQuestionAnswering, BlipProcessor

        from steer.rewards.weights import RewardWeightsNotFound, hub_access, weights_not_found

        self.model_id = str(model)
        path = Path(self.model_id).expanduser()
        local = path.is_dir()
        if not local and (path.is_absolute() or self.model_id.startswith((".", "~"))):
            raise RewardWeightsNotFound(
                f"BLIP-VQA model folder {self.model_id!r} does not exist; pass a folder saved with save_pretrained "
                "(model + BlipProcessor) or a hub id such as 'Salesforce/blip-vqa-base'"
            )
        with nullcontext() if local else hub_access():
            try:
                self.processor = BlipProcessor.from_pretrained(str(path) if local else self.model_id)
                self.model = BlipForQuestionAnswering.from_pretrained(str(path) if local else self.model_id, dtype=dtype)
            except (OSError, ValueError) as e:
                raise weights_not_found(f"BLIP-VQA model {self.model_id!r}", e, repo_id=None if local else self.model_id) from e
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype or torch.float32
        self.normalize, self.image_size = normalize, image_size
        self.batch_size, self.max_phrases = batch_size, max_phrases
        tok = self.processor.tokenizer
        self.yes_id = self._first_piece("yes")
        self.no_id = self._first_piece("no")
        enc = tok.convert_tokens_to_ids("[ENC]")
        self.enc_id = enc if isinstance(enc, int) and enc != tok.unk_token_id else None
        self.start_id = self.model.config.text_config.bos_token_id

    def _first_piece(self, word: str) -> int:
        ids = self.processor.tokenizer(word, add_special_tokens=False).input_ids
        if not ids or ids[0] == self.processor.tokenizer.unk_token_id:
            raise ValueError(f"the BLIP tokenizer of {self.model_id!r} has no token for the answer {word!r}")
        return ids[0]

    @staticmethod
    def pre_question(question: str) -> str:
        """BLIP's question cleaning: lower case, ``.!"()*#:;~`` removed, trailing spaces stripped."""
        return re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")

    @torch.no_grad()
    def prob_yes(self, images: Sequence[Any], questions: Sequence[str]) -> torch.Tensor:
        """Probability of the answer "yes" to each ``questions[i]`` about ``images[i]`` (float32, CPU)."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        out = []
        for s in range(0, len(images), self.batch_size):
            out.append(self._prob_yes(images[s : s + self.batch_size], questions[s : s + self.batch_size]))
        return torch.cat(out) if out else torch.zeros(0)

    def _prob_yes(self, images: Sequence[Any], questions: Sequence[str]) -> torch.Tensor:
        kw = {} if self.image_size is None else {"size": {"height": self.image_size, "width": self.image_size}}
        pixels = self.processor.image_processor([im.convert("RGB") for im in images], return_tensors="pt", **kw).pixel_values
        text = self.processor.tokenizer(
            [self.pre_question(q) for q in questions], padding="longest", truncation=True, max_length=35, return_tensors="pt"
        )
        ids, mask = text.input_ids.to(self.device), text.attention_mask.to(self.device)
        if self.enc_id is not None:
            ids[:, 0] = self.enc_id
        m = self.model
        vision_size = m.config.vision_config.image_size
        image_embeds = m.vision_model(
            pixel_values=pixels.to(self.device, self.dtype), interpolate_pos_encoding=pixels.shape[-1] != vision_size
        ).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        question = m.text_encoder(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask
        ).last_hidden_state
        start = torch.full((len(questions), 1), self.start_id, dtype=torch.long, device=self.device)
        logits = m.text_decoder(input_ids=start, encoder_hidden_states=question, encoder_attention_mask=mask).logits[:, 0]
        prob = logits.float().softmax(-1)
        yes = prob[:, self.yes_id]
        if self.normalize:
            yes = yes / (yes + prob[:, self.no_id])
        return yes.cpu()

    def score(self, images: Sequence[Any], prompts: Sequence[str], splitter: Callable[[str], list[str]]) -> list[float]:
        """Per image: product over the prompt's noun phrases (at most ``max_phrases``, the original's
        ``np_num=8``) of P(yes | "{np}?"); a prompt without noun phrases scores 1, as in the original."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        phrases = {p: splitter(p)[: self.max_phrases] for p in dict.fromkeys(prompts)}
        pairs = [(i, f"{np}?") for i, p in enumerate(prompts) for np in phrases[p]]
        probs = self.prob_yes([images[i] for i, _ in pairs], [q for _, q in pairs]) if pairs else torch.zeros(0)
        scores = [1.0] * len(images)
        for (i, _), p in zip(pairs, probs.tolist()):
            scores[i] *= p
        return scores


# --------------------------------------------------------------------------- CLIP


class ClipScorer:
    """Raw cosine similarity of open_clip image and text embeddings (no ×100, no clipping): ``non_spatial``.

    The original uses OpenAI's ``clip`` package (ViT-B/32) on the PIL image; here open_clip's
    ``ViT-B-32``/``openai`` with open_clip's eval transform of the model (same weights and
    preprocessing; small numeric differences).
    """

    def __init__(self, model: str | Path = "ViT-B-32", pretrained: str | None = "openai", device: str | torch.device = "cpu"):
        from steer.rewards.clip import load_open_clip, pil_transform

        self.model_id, self.pretrained = str(model), pretrained
        self.model, self.tokenizer, cfg = load_open_clip(model, pretrained, device)
        self.transform = pil_transform(self.model, cfg)
        self.device = torch.device(device)

    @torch.no_grad()
    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        """Cosine of the L2-normalised image and text embeddings, per (image, prompt) pair."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        dtype = next(self.model.parameters()).dtype
        pixels = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(self.device, dtype)
        img = self.model.encode_image(pixels, normalize=True).float()
        txt = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device), normalize=True).float()
        return (img * txt).sum(-1).cpu().tolist()


# --------------------------------------------------------------------------- spatial


def box_center(box: Sequence[float]) -> tuple[float, float]:
    """Centre ``(x, y)`` of an ``(x0, y0, x1, y1)`` box."""
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)


def box_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 for an empty union)."""
    ix = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    iy = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = ix * iy
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
    return inter / union if union > 0 else 0.0


def position_score(
    relation: str, box1: Sequence[float], box2: Sequence[float], iou_threshold: float = 0.1, distance_threshold: float = 150.0
) -> float:
    """Soft truth in [0, 1] of "object 1 {relation} object 2" for pixel boxes (y downwards).

    My reading of the original's ``determine_position``: with ``dx, dy`` = centre of box 2 minus
    centre of box 1 and ``iou`` of the boxes,

    * ``next to`` / ``near`` / ``on side of``: 1 if ``|dx| < distance_threshold`` or
      ``|dy| < distance_threshold`` (pixels), else ``distance_threshold / max(|dx|, |dy|)``;
    * ``on the left of`` (``dx > 0``), ``on the right of`` (``dx < 0``): requires the horizontal
      offset to dominate (``|dx| > |dy|``), then 1 if ``iou < iou_threshold`` else
      ``iou_threshold / iou``; otherwise 0;
    * ``on the top of`` (``dy > 0``: object 1 higher), ``on the bottom of`` (``dy < 0``): the same
      with the vertical offset dominating.

    The distance threshold is absolute (150 px, for the original's 512-px images), not scaled.
    """
    relation = RELATION_PHRASES.get(relation, relation)
    (x1, y1), (x2, y2) = box_center(box1), box_center(box2)
    dx, dy = x2 - x1, y2 - y1
    if relation in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    sides = {
        "on the left of": (dx > 0, abs(dx) > abs(dy)),
        "on the right of": (dx < 0, abs(dx) > abs(dy)),
        "on the top of": (dy > 0, abs(dy) > abs(dx)),
        "on the bottom of": (dy < 0, abs(dy) > abs(dx)),
    }
    if relation not in sides:
        raise ValueError(f"unknown spatial relation {relation!r}; known: {', '.join(RELATION_PHRASES)}")
    direction, dominant = sides[relation]
    if not (direction and dominant):
        return 0.0
    iou = box_iou(box1, box2)
    return 1.0 if iou < iou_threshold else iou_threshold / iou


def find_relation(prompt: str) -> tuple[str, int, int] | None:
    """``(canonical relation, start, end)`` of the first relation phrase in ``prompt`` (original's search order), or None."""
    text = prompt.lower()
    for phrase in ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of", "on bottom of", "on the top of", "on top of"):
        m = re.search(rf"\b{re.escape(phrase)}\b", text)
        if m:
            return RELATION_PHRASES[phrase], m.start(), m.end()
    return None


_SIMPLE = re.compile(
    r"^\s*(?:a|an)\s+(?P<a>[a-z\-]+(?:\s[a-z\-]+)?)\s+(?P<rel>%s)\s+(?:a|an)\s+(?P<b>[a-z\-]+(?:\s[a-z\-]+)?)\s*\.?\s*$"
    % "|".join(re.escape(p) for p in sorted(RELATION_PHRASES, key=len, reverse=True))
)
_VERBS = {"is", "are", "was", "were", "be", "sits", "sit", "sitting", "stands", "standing", "lies", "lying", "placed", "rests", "resting"}


def singular(word: str) -> str:
    """Crude English singular of a noun (``boxes`` -> ``box``, ``puppies`` -> ``puppy``, ``cars`` -> ``car``)."""
    w = word.lower()
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


def parse_spatial_prompt(prompt: str, pos: Callable[[str], list[tuple[str, str]]] | None = None) -> tuple[str, str, str] | None:
    """``(object 1, relation, object 2)`` of a spatial prompt, or None when no relation/objects are found.

    Simple prompts ("a|an {obj1} {relation} a|an {obj2}" with one- or two-word objects, all of
    spatial_val.txt) are parsed with a pattern; objects keep their words ("teddy bear"). Other sentences (complex category) need
    ``pos`` (``NounPhraseSplitter.pos``): as in the original, object 1 is the nearest NOUN/PROPN
    before the relation phrase and object 2 the first NOUN after it (else the first PROPN).
    """
    m = _SIMPLE.match(prompt.lower())
    if m and not (_VERBS & set(m.group("a").split() + m.group("b").split())):
        return m.group("a").strip(), RELATION_PHRASES[m.group("rel")], m.group("b").strip()
    found = find_relation(prompt)
    if found is None:
        return None
    if pos is None:
        raise ValueError(f"prompt {prompt!r} is not of the form 'a X <relation> a Y': parsing it needs a spaCy pipeline (pass splitter=)")
    relation, start, end = found
    before, after = pos(prompt[:start]), pos(prompt[end:])
    obj1 = next((t for t, p in reversed(before) if p in ("NOUN", "PROPN")), None)
    obj2 = next((t for t, p in after if p == "NOUN"), None) or next((t for t, p in after if p == "PROPN"), None)
    if obj1 is None or obj2 is None:
        return None
    return obj1.lower(), relation, obj2.lower()


class SpatialScorer:
    """2-D spatial relation score from object detections (``spatial``; the spatial part of ``complex``).

    Per image, for prompt "{obj1} {relation} {obj2}": with the best detection of each object
    (highest confidence; for ``obj1 == obj2`` the two best), the score is
    ``0.25·conf₁ + 0.25·conf₂ + 0.5·position_score(relation, box₁, box₂)``, set to 0 below 0.5 —
    so an image missing either object scores 0 (the original's one-object partial score 0.25·conf
    is always below 0.5). An object that is not a detector class can never be found: its prompts
    score 0.

    ``detector`` is any callable ``images -> list[list[Detection]]`` (labels compared lower-case to
    the prompt's nouns after ``aliases`` and a crude singular). It **replaces UniDet** of the
    original (here e.g. Mask2Former with COCO classes, whose thresholds are the detector's own),
    so the numbers differ from published ones. Other deviations: multi-word objects are matched
    whole (the original keeps one spaCy NOUN token); "on top of" (complex prompts) counts as "on
    the top of" (the original's ``determine_position`` has no branch for it and gives 0).
    ``3d_spatial`` (in front of / behind / hidden by) needs a depth model and is not supported.
    """

    def __init__(
        self,
        detector: Callable[[Sequence[Any]], list[list[Detection]]],
        splitter: NounPhraseSplitter | None = None,
        aliases: Mapping[str, str] | None = None,
        iou_threshold: float = 0.1,
        distance_threshold: float = 150.0,
        min_score: float = 0.5,
    ):
        self.detector, self.splitter = detector, splitter
        self.aliases = dict(COCO_ALIASES if aliases is None else aliases)
        self.iou_threshold, self.distance_threshold, self.min_score = iou_threshold, distance_threshold, min_score

    def names(self, obj: str) -> set[str]:
        """Detector labels that count as ``obj``."""
        obj = obj.lower().strip()
        last = obj.split()[-1] if obj.split() else obj
        cands = {obj, singular(obj), last, singular(last)}
        return cands | {self.aliases[c] for c in list(cands) if c in self.aliases}

    def parse(self, prompt: str) -> tuple[str, str, str] | None:
        return parse_spatial_prompt(prompt, self.splitter.pos if self.splitter is not None else None)

    def score_detections(self, detections: Iterable[Detection], prompt: str) -> float:
        """The score of one image's detections for ``prompt`` (0 when the prompt has no 2-D relation)."""
        parsed = self.parse(prompt)
        if parsed is None:
            return 0.0
        obj1, relation, obj2 = parsed
        dets = sorted(detections, key=lambda d: -float(d.score))
        n1, n2 = self.names(obj1), self.names(obj2)
        d1 = next((d for d in dets if d.label.lower() in n1), None)
        d2 = next((d for d in dets if d.label.lower() in n2 and d is not d1), None)
        if d1 is None or d2 is None:
            return 0.0
        pos = position_score(relation, d1.box, d2.box, self.iou_threshold, self.distance_threshold)
        score = 0.25 * float(d1.score) + 0.25 * float(d2.score) + 0.5 * pos
        return score if score >= self.min_score else 0.0

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        detections = self.detector(images) if len(images) else []
        return [self.score_detections(d, p) for d, p in zip(detections, prompts)]


# --------------------------------------------------------------------------- complex


def complex_score(blip: float | None, spatial: float | None, clip: float | None) -> float:
    """The 3-in-1 score: mean of the given parts (None = not applicable).

    The original (``3_in_1_eval/3_in_1.py``) averages attribute (BLIP-VQA) and spatial scores for
    prompts listed in ``complex_val_spatial.txt``, attribute and CLIP ("action") scores for those in
    ``complex_val_action.txt``, and all three for the rest.
    """
    parts = [float(v) for v in (blip, spatial, clip) if v is not None]
    if not parts:
        raise ValueError("complex_score needs at least one of blip, spatial, clip")
    return sum(parts) / len(parts)


def _key(prompt: str) -> str:
    return prompt.strip().split(".")[0].lower()


class ComplexScorer:
    """3-in-1 score of the ``complex`` category from a BLIP-VQA, a spatial and a CLIP scorer.

    Per image: BLIP-VQA noun-phrase product; spatial score (the relation found anywhere in the
    sentence, objects by spaCy POS; 0 when the sentence has no 2-D relation); CLIP cosine on the
    prompt without its adjectives (spaCy ``ADJ`` tokens dropped, as the original's ``--complex``).
    ``spatial_prompts`` / ``action_prompts`` (the original's ``complex_val_spatial.txt`` /
    ``complex_val_action.txt`` subsets, compared on the first sentence lower-cased) select the
    two-part averages; without them every prompt averages all three.
    """

    def __init__(
        self,
        blip: BlipVqaScorer,
        spatial: SpatialScorer,
        clip: ClipScorer,
        splitter: NounPhraseSplitter,
        spatial_prompts: Iterable[str] | None = None,
        action_prompts: Iterable[str] | None = None,
    ):
        self.blip, self.spatial, self.clip, self.splitter = blip, spatial, clip, splitter
        self.spatial_prompts = {_key(p) for p in spatial_prompts or ()}
        self.action_prompts = {_key(p) for p in action_prompts or ()}

    def without_adjectives(self, prompt: str) -> str:
        return " ".join(t for t, p in self.splitter.pos(prompt) if p != "ADJ")

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        b = self.blip.score(images, prompts, self.splitter)
        s = self.spatial.score(images, prompts)
        c = self.clip.score(images, [self.without_adjectives(p) for p in prompts])
        out = []
        for p, bi, si, ci in zip(prompts, b, s, c):
            k = _key(p)
            if k in self.spatial_prompts:
                out.append(complex_score(bi, si, None))
            elif k in self.action_prompts:
                out.append(complex_score(bi, None, ci))
            else:
                out.append(complex_score(bi, si, ci))
        return out


# --------------------------------------------------------------------------- evaluator


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


class Lazy:
    """A component built on first use: ``Lazy(lambda: BlipVqaScorer(...), {"model": ...})``;
    ``info`` is what :meth:`CompBenchEvaluator.info` reports while it is not built."""

    def __init__(self, factory: Callable[[], Any], info: Mapping[str, Any] | None = None):
        self.factory, self.info = factory, dict(info or {})


class CompBenchEvaluator:
    """Dispatches a T2I-CompBench category to its scorer.

    Components are scorer objects or :class:`Lazy` factories (built once, on first use); a
    category only touches the components it needs.
    """

    def __init__(
        self,
        blip: BlipVqaScorer | Lazy | None = None,
        clip: ClipScorer | Lazy | None = None,
        spatial: SpatialScorer | Lazy | None = None,
        splitter: NounPhraseSplitter | Lazy | None = None,
        complex_kwargs: Mapping[str, Any] | None = None,
    ):
        self._parts: dict[str, Any] = {"blip": blip, "clip": clip, "spatial": spatial, "splitter": splitter}
        self.complex_kwargs = dict(complex_kwargs or {})

    _CLASSES = {"blip": "BlipVqaScorer", "clip": "ClipScorer", "spatial": "SpatialScorer", "splitter": "NounPhraseSplitter"}

    def _get(self, name: str, category: str) -> Any:
        part = self._parts[name]
        if part is None:
            raise ValueError(f"category {category!r} needs a {self._CLASSES[name]} ({name}=...), which this evaluator was not given")
        if isinstance(part, Lazy):
            part = self._parts[name] = part.factory()
        return part

    def evaluate(self, category: str, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        """Per-image scores of ``images`` (PIL) for ``prompts`` under ``category``'s metric."""
        if category in UNSUPPORTED:
            raise NotImplementedError(f"T2I-CompBench category {category!r} is not supported ({UNSUPPORTED[category]})")
        if category not in CATEGORIES:
            raise ValueError(f"unknown T2I-CompBench category {category!r}; known: {', '.join(CATEGORIES)}")
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if category in ("color", "shape", "texture"):
            return self._get("blip", category).score(images, prompts, self._get("splitter", category))
        if category == "spatial":
            return self._get("spatial", category).score(images, prompts)
        if category == "non_spatial":
            return self._get("clip", category).score(images, prompts)
        scorer = ComplexScorer(
            self._get("blip", category), self._get("spatial", category), self._get("clip", category),
            self._get("splitter", category), **self.complex_kwargs,
        )
        return scorer.score(images, prompts)

    def info(self) -> dict[str, Any]:
        """Model ids (of loaded parts) and library versions; evaluator versions change the numbers."""
        parts = self._parts
        out: dict[str, Any] = {
            "benchmark": "T2I-CompBench",
            "versions": {m: _version(m) for m in ("transformers", "open_clip_torch", "spacy", "torch")},
        }
        if isinstance(parts["blip"], BlipVqaScorer):
            out["blip_vqa"] = {"model": parts["blip"].model_id, "normalize": parts["blip"].normalize, "image_size": parts["blip"].image_size}
        if isinstance(parts["clip"], ClipScorer):
            out["clip"] = {"model": parts["clip"].model_id, "pretrained": parts["clip"].pretrained}
        if isinstance(parts["splitter"], NounPhraseSplitter):
            meta = getattr(parts["splitter"].nlp, "meta", {})
            out["spacy_model"] = {"model": parts["splitter"].model, "name": meta.get("name"), "version": meta.get("version")}
        if isinstance(parts["spatial"], SpatialScorer):
            det = parts["spatial"].detector
            out["detector"] = getattr(det, "name", None) or type(det).__name__
        keys = {"blip": "blip_vqa", "clip": "clip", "splitter": "spacy_model", "spatial": "detector"}
        for name, part in parts.items():
            if isinstance(part, Lazy) and part.info:
                out[keys[name]] = {**part.info, "loaded": False}
        return out


def load_compbench_evaluator(
    blip: str | Path = "Salesforce/blip-vqa-base",
    clip: str | Path = "ViT-B-32",
    clip_pretrained: str | None = "openai",
    detector: Callable[[Sequence[Any]], list[list[Detection]]] | None = None,
    spacy_model: str | Path = "en_core_web_sm",
    device: str | torch.device = "cpu",
    blip_kwargs: Mapping[str, Any] | None = None,
) -> CompBenchEvaluator:
    """A :class:`CompBenchEvaluator` that loads each model on first use, so a category loads only
    what it needs (``color`` needs BLIP-VQA + spaCy, never the detector or CLIP). Without a
    ``detector``, ``spatial`` and ``complex`` raise a clear error."""
    state: dict[str, Any] = {}

    def splitter() -> NounPhraseSplitter:
        if "splitter" not in state:
            state["splitter"] = NounPhraseSplitter(spacy_model)
        return state["splitter"]

    def spatial() -> SpatialScorer:
        if detector is None:
            raise ValueError("categories 'spatial' and 'complex' need an object detector: load_compbench_evaluator(detector=...)")
        return SpatialScorer(detector, splitter=_LazySplitter(splitter))

    return CompBenchEvaluator(
        blip=Lazy(lambda: BlipVqaScorer(blip, device=device, **dict(blip_kwargs or {})), {"model": str(blip), **dict(blip_kwargs or {})}),
        clip=Lazy(lambda: ClipScorer(clip, clip_pretrained, device=device), {"model": str(clip), "pretrained": clip_pretrained}),
        spatial=Lazy(spatial, {"detector": None if detector is None else getattr(detector, "name", None) or type(detector).__name__}),
        splitter=Lazy(splitter, {"model": str(spacy_model)}),
    )


class _LazySplitter:
    """Loads the spaCy pipeline on first use: simple spatial prompts never need it."""

    def __init__(self, factory: Callable[[], NounPhraseSplitter]):
        self._factory = factory

    def __call__(self, prompt: str) -> list[str]:
        return self._factory()(prompt)

    def pos(self, text: str) -> list[tuple[str, str]]:
        return self._factory().pos(text)


__all__ = [
    "CATEGORIES", "SUPPORTED", "RELATIONS", "COCO_ALIASES", "read_prompts", "image_name", "noun_chunks",
    "NounPhraseSplitter", "BlipVqaScorer", "ClipScorer", "box_center", "box_iou", "position_score", "find_relation",
    "parse_spatial_prompt", "singular", "SpatialScorer", "complex_score", "ComplexScorer", "CompBenchEvaluator",
    "load_compbench_evaluator", "Lazy",
]
