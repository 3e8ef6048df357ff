"""T2I-CompBench evaluators (steer.eval.compbench) on tiny offline models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from steer.eval import compbench as cb
from steer.eval.geneval import Detection

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "t2i_compbench"


def _images(n: int, size: int = 40) -> list[Image.Image]:
    g = torch.Generator().manual_seed(1)
    return [Image.fromarray((torch.rand(size, size + 6, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(n)]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    from tiny_vqa_models import write_blip_vqa_dir

    return write_blip_vqa_dir(tmp_path_factory.mktemp("blip_vqa"))


@pytest.fixture(scope="module")
def blip(blip_dir) -> cb.BlipVqaScorer:
    return cb.BlipVqaScorer(str(blip_dir), batch_size=3)


@pytest.fixture(scope="module")
def spacy_dir(tmp_path_factory) -> Path:
    from tiny_vqa_models import write_spacy_pipeline

    return write_spacy_pipeline(tmp_path_factory.mktemp("spacy_en"))


@pytest.fixture(scope="module")
def splitter(spacy_dir) -> cb.NounPhraseSplitter:
    return cb.NounPhraseSplitter(str(spacy_dir))


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory) -> Path:
    from test_rewards import write_open_clip_dir

    return write_open_clip_dir(tmp_path_factory.mktemp("open_clip"))


class FakeDetector:
    name = "fake"

    def __init__(self, detections):
        self.detections, self.calls = detections, 0

    def __call__(self, images):
        self.calls += 1
        return [list(self.detections) for _ in images]


# --------------------------------------------------------------------------- prompts and names


def test_compbench_read_prompts_shared_folder():
    if not SHARED.is_dir():
        pytest.skip("shared T2I-CompBench prompts absent")
    for cat in cb.CATEGORIES:
        prompts = cb.read_prompts(SHARED, cat)
        assert len(prompts) == 300, cat
        assert all(p == p.strip() and p for p in prompts)


def test_compbench_read_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="color_val.txt"):
        cb.read_prompts(tmp_path / "nope", "color")
    with pytest.raises(FileNotFoundError, match="shape_val.txt"):
        cb.read_prompts(tmp_path, "shape")
    with pytest.raises(ValueError, match="non_spatial"):
        cb.read_prompts(tmp_path, "colour")
    (tmp_path / "color_val.txt").write_text("a red car\n\n  a blue bench  \na green bowl")
    assert cb.read_prompts(tmp_path, "color") == ["a red car", "a blue bench", "a green bowl"]


def test_compbench_image_name():
    assert cb.image_name("a red car", 7) == "a red car_000007.png"
    name = cb.image_name("an AC/DC poster", 1234567)
    assert "/" not in name and name.endswith("_1234567.png")
    assert cb.image_name("a\\b", 0) == "a b_000000.png"


# --------------------------------------------------------------------------- spaCy splitter


def test_compbench_noun_phrase_splitter_trained_pipeline(splitter):
    assert splitter("a red car and a blue cake") == ["a red car", "a blue cake"]  # a training phrase
    assert splitter("a red car and a blue bench") == ["a red car", "a blue bench"]
    assert splitter("a green bench and a red car") == ["a green bench", "a red car"]
    assert dict(splitter.pos("a red car"))["car"] == "NOUN"


def test_compbench_noun_chunks_on_annotated_doc():
    import spacy
    from spacy.tokens import Doc

    nlp = spacy.blank("en")
    doc = Doc(nlp.vocab, words=["a", "brown", "horse", "and", "a", "blue", "vase"],
              pos=["DET", "ADJ", "NOUN", "CCONJ", "DET", "ADJ", "NOUN"], heads=[2, 2, 2, 2, 6, 6, 2],
              deps=["det", "amod", "ROOT", "cc", "det", "amod", "conj"])
    assert cb.noun_chunks(doc) == ["a brown horse", "a blue vase"]


def test_compbench_splitter_missing_model(tmp_path):
    with pytest.raises(OSError, match="spacy download en_core_web_sm"):
        cb.NounPhraseSplitter(str(tmp_path / "no_pipeline"))


# --------------------------------------------------------------------------- BLIP-VQA


def test_compbench_blip_prob_yes(blip):
    imgs = _images(4)
    qs = ["a red car?", "a blue bench?", "a green bowl?", "a black cat?"]
    p = blip.prob_yes(imgs, qs)
    assert p.shape == (4,) and p.dtype == torch.float32
    assert bool(((p > 0) & (p < 1)).all())
    assert torch.equal(p, blip.prob_yes(imgs, qs))  # deterministic
    one = torch.cat([blip.prob_yes([im], [q]) for im, q in zip(imgs, qs)])
    torch.testing.assert_close(p, one, atol=1e-5, rtol=1e-4)  # padding-independent batching


def test_compbench_blip_prob_yes_definition(blip):
    """prob_yes is the first decoder step's softmax of "yes" (optionally over yes+no) from the model's own modules."""
    img, q = _images(1), "a red car?"
    m, proc = blip.model, blip.processor
    px = proc.image_processor(img, return_tensors="pt").pixel_values
    ids = proc.tokenizer([q], return_tensors="pt")
    input_ids = ids.input_ids.clone()
    input_ids[:, 0] = proc.tokenizer.convert_tokens_to_ids("[ENC]")
    with torch.no_grad():
        emb = m.vision_model(pixel_values=px).last_hidden_state
        qs = m.text_encoder(input_ids=input_ids, attention_mask=ids.attention_mask, encoder_hidden_states=emb).last_hidden_state
        start = torch.tensor([[m.config.text_config.bos_token_id]])
        prob = m.text_decoder(input_ids=start, encoder_hidden_states=qs).logits[0, 0].softmax(-1)
    y, n = proc.tokenizer.convert_tokens_to_ids(["yes", "no"])
    torch.testing.assert_close(blip.prob_yes(img, [q]), (prob[y] / (prob[y] + prob[n])).view(1), atol=1e-6, rtol=1e-5)
    blip.normalize = False
    try:
        torch.testing.assert_close(blip.prob_yes(img, [q]), prob[y].view(1), atol=1e-6, rtol=1e-5)
    finally:
        blip.normalize = True


def test_compbench_blip_score_is_product(blip, splitter, monkeypatch):
    table = {"a red car?": 0.5, "a blue bench?": 0.4, "a green bench?": 0.9}
    seen = []

    def fake(images, questions):
        seen.append(list(questions))
        return torch.tensor([table[q] for q in questions])

    monkeypatch.setattr(blip, "prob_yes", fake)
    imgs = _images(2)
    scores = blip.score(imgs, ["a red car and a blue bench", "a green bench and a red car"], splitter)
    assert scores == pytest.approx([0.5 * 0.4, 0.9 * 0.5])
    assert len(seen) == 1 and len(seen[0]) == 4  # one batched call
    assert blip.score(imgs[:1], ["and"], lambda p: []) == [1.0]  # no noun phrase -> 1, as the original


def test_compbench_blip_real_score_runs(blip, splitter):
    s = blip.score(_images(2), ["a red car and a blue bench"] * 2, splitter)
    assert all(0 < v < 1 for v in s)


def test_compbench_blip_missing_folder(tmp_path):
    from steer.rewards.weights import RewardWeightsNotFound

    with pytest.raises(RewardWeightsNotFound, match="does not exist"):
        cb.BlipVqaScorer(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- CLIP


def test_compbench_clip_score_is_raw_cosine(oc_dir):
    import open_clip

    scorer = cb.ClipScorer(str(oc_dir), None)
    imgs, prompts = _images(2, size=20), ["a red circle", "a blue square"]
    got = scorer.score(imgs, prompts)
    model = open_clip.create_model(f"local-dir:{oc_dir.resolve()}").eval()
    tok = open_clip.get_tokenizer(f"local-dir:{oc_dir.resolve()}")
    # hand preprocessing: shortest side -> 16 (bicubic), centre crop 16, /255, (x - mean) / std
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    px = []
    for im in imgs:
        w, h = im.size
        r = im.resize((16, int(16 * h / w)) if w < h else (int(16 * w / h), 16), Image.BICUBIC)
        x0, y0 = round((r.size[0] - 16) / 2), round((r.size[1] - 16) / 2)
        r = r.crop((x0, y0, x0 + 16, y0 + 16))
        px.append((torch.tensor(list(r.getdata()), dtype=torch.float32).view(16, 16, 3).permute(2, 0, 1) / 255 - mean) / std)
    with torch.no_grad():
        a = model.encode_image(torch.stack(px))
        b = model.encode_text(tok(prompts))
    ref = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert got == pytest.approx(ref.tolist(), abs=2e-3)
    assert all(-1 <= v <= 1 for v in got)


# --------------------------------------------------------------------------- spatial geometry


def test_compbench_box_helpers():
    assert cb.box_center((0, 0, 10, 20)) == (5, 10)
    assert cb.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert cb.box_iou((0, 0, 10, 10), (20, 0, 30, 10)) == 0
    assert cb.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_compbench_position_score_left_right_top_bottom():
    left, right = (0, 100, 100, 200), (300, 100, 400, 200)
    assert cb.position_score("on the left of", left, right) == 1
    assert cb.position_score("on the left of", right, left) == 0
    assert cb.position_score("on the right of", right, left) == 1
    assert cb.position_score("on the right of", left, right) == 0
    top, bottom = (100, 0, 200, 100), (100, 300, 200, 400)
    assert cb.position_score("on the top of", top, bottom) == 1
    assert cb.position_score("on top of", top, bottom) == 1
    assert cb.position_score("on the top of", bottom, top) == 0
    assert cb.position_score("on the bottom of", bottom, top) == 1
    # horizontal offset must dominate for left/right: diagonal mostly vertical -> 0
    assert cb.position_score("on the left of", (0, 0, 10, 10), (5, 100, 15, 110)) == 0
    # overlap above the IoU threshold -> threshold / IoU
    a, b = (0, 0, 100, 100), (40, 0, 140, 100)
    iou = cb.box_iou(a, b)
    assert iou > 0.1 and cb.position_score("on the left of", a, b) == pytest.approx(0.1 / iou)


def test_compbench_position_score_near():
    a = (0, 0, 10, 10)
    assert cb.position_score("near", a, (100, 500, 110, 510)) == 1  # |dx| < 150 suffices
    far = (400, 700, 410, 710)  # dx = 400, dy = 700
    assert cb.position_score("next to", a, far) == pytest.approx(150 / 700)
    assert cb.position_score("on side of", a, far, distance_threshold=300) == pytest.approx(300 / 700)
    with pytest.raises(ValueError, match="unknown spatial relation"):
        cb.position_score("in front of", a, far)


def test_compbench_parse_spatial_prompts():
    assert cb.parse_spatial_prompt("a giraffe next to a lamp") == ("giraffe", "next to", "lamp")
    assert cb.parse_spatial_prompt("an apple on the top of a teddy bear") == ("apple", "on the top of", "teddy bear")
    assert cb.parse_spatial_prompt("a bee on the right of a refrigerator") == ("bee", "on the right of", "refrigerator")
    assert cb.parse_spatial_prompt("a dog and a cat") is None
    with pytest.raises(ValueError, match="spaCy"):
        cb.parse_spatial_prompt("The red hat was on top of the brown coat rack.")
    pos = lambda text: [(w, "NOUN" if w in ("hat", "rack", "coat") else "X") for w in text.replace(".", " .").split()]  # noqa: E731
    assert cb.parse_spatial_prompt("The red hat was on top of the brown coat rack.", pos) == ("hat", "on the top of", "coat")
    if SHARED.is_dir():
        assert all(cb.parse_spatial_prompt(p) for p in cb.read_prompts(SHARED, "spatial"))


def test_compbench_spatial_score_fake_detector():
    dets = [Detection("dog", 0.9, (0, 100, 100, 200)), Detection("cat", 0.8, (300, 100, 400, 200)),
            Detection("dog", 0.4, (350, 100, 450, 200)), Detection("person", 0.7, (0, 0, 50, 50))]
    det = FakeDetector(dets)
    sp = cb.SpatialScorer(det)
    imgs = _images(4)
    prompts = ["a dog on the left of a cat", "a dog on the right of a cat", "a dog next to a horse", "a girl near a dogs"]
    s = sp.score(imgs, prompts)
    assert det.calls == 1
    assert s[0] == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)  # true relation, best dog used
    assert s[1] == 0  # 0.425 < 0.5 -> 0
    assert s[2] == 0  # no horse detected
    assert s[3] == pytest.approx(0.25 * 0.7 + 0.25 * 0.9 + 0.5)  # girl -> person, plural "dogs" -> dog
    assert sp.score_detections(dets, "a giraffe on the left of a cat") == 0  # not a detector class
    twins = [Detection("dog", 0.9, (0, 0, 10, 10)), Detection("dog", 0.6, (300, 0, 310, 10))]
    assert sp.score_detections(twins, "a dog on the left of a dog") == pytest.approx(0.25 * 1.5 + 0.5)


# --------------------------------------------------------------------------- complex and evaluator


def test_compbench_complex_score():
    assert cb.complex_score(0.3, 0.6, 0.3) == pytest.approx(0.4)
    assert cb.complex_score(0.3, None, 0.5) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        cb.complex_score(None, None, None)


class _Fixed:
    def __init__(self, values):
        self.values = values

    def score(self, images, prompts, *args):
        return list(self.values[: len(images)])


def test_compbench_complex_scorer_subsets(splitter):
    blip, sp, clip = _Fixed([0.2, 0.2, 0.2]), _Fixed([0.8, 0.8, 0.8]), _Fixed([0.5, 0.5, 0.5])
    prompts = ["The red car was near the bench.", "A cat sat on a dog.", "The blue bowl is on the left of a cake."]
    scorer = cb.ComplexScorer(blip, sp, clip, splitter, spatial_prompts=["the red car was near the bench"], action_prompts=["A cat sat on a dog."])
    assert scorer.score(_images(3), prompts) == pytest.approx([0.5, 0.35, 0.5])
    assert scorer.without_adjectives("a red car") == "a car"


def test_compbench_evaluator_dispatch(blip, splitter, oc_dir, monkeypatch):
    det = FakeDetector([Detection("dog", 0.9, (0, 100, 100, 200)), Detection("cat", 0.8, (300, 100, 400, 200))])
    clip_built = []

    def make_clip():
        clip_built.append(1)
        return cb.ClipScorer(str(oc_dir), None)

    ev = cb.CompBenchEvaluator(blip=blip, clip=cb.Lazy(make_clip), spatial=cb.SpatialScorer(det, splitter), splitter=splitter)
    imgs = _images(2)
    monkeypatch.setattr(blip, "prob_yes", lambda images, qs: torch.full((len(qs),), 0.5))
    assert ev.evaluate("color", imgs, ["a red car and a blue bench"] * 2) == pytest.approx([0.25, 0.25])
    assert not clip_built  # color never builds CLIP
    assert ev.evaluate("spatial", imgs, ["a dog on the left of a cat"] * 2) == pytest.approx([0.925, 0.925])
    ns = ev.evaluate("non_spatial", imgs, ["a dog", "a cat"])
    assert len(ns) == 2 and clip_built == [1]
    complex_prompts = ["The dog is on the left of the cat."] * 2
    cx = ev.evaluate("complex", imgs, complex_prompts)
    b = blip.score(imgs, complex_prompts, splitter)
    s = ev._parts["spatial"].score(imgs, complex_prompts)
    c = ev._parts["clip"].score(imgs, [" ".join(t for t, p in splitter.pos(q) if p != "ADJ") for q in complex_prompts])
    assert cx == pytest.approx([(bi + si + ci) / 3 for bi, si, ci in zip(b, s, c)])
    with pytest.raises(NotImplementedError, match="depth"):
        ev.evaluate("3d_spatial", imgs, ["a"] * 2)
    with pytest.raises(NotImplementedError, match="numeracy"):
        ev.evaluate("numeracy", imgs, ["a"] * 2)
    with pytest.raises(ValueError, match="unknown T2I-CompBench category"):
        ev.evaluate("colour", imgs, ["a"] * 2)
    info = ev.info()
    assert info["blip_vqa"]["model"] == blip.model_id and info["detector"] == "fake"
    assert info["versions"]["transformers"] and info["versions"]["spacy"] and info["versions"]["open_clip_torch"]
    with pytest.raises(ValueError, match="SpatialScorer"):
        cb.CompBenchEvaluator(blip=blip, splitter=splitter).evaluate("spatial", imgs, ["a dog near a cat"] * 2)


def test_compbench_loader_is_lazy(blip_dir, spacy_dir, monkeypatch):
    ev = cb.load_compbench_evaluator(blip=str(blip_dir), clip="/nonexistent/clip", spacy_model=str(spacy_dir))
    assert ev.info()["clip"] == {"model": "/nonexistent/clip", "pretrained": "openai", "loaded": False}
    s = ev.evaluate("texture", _images(1), ["a red car and a blue bench"])
    assert len(s) == 1 and 0 < s[0] < 1 and not math.isnan(s[0])
    info = ev.info()
    assert info["blip_vqa"]["model"] == str(blip_dir) and info["spacy_model"]["model"] == str(spacy_dir)
    assert info["clip"]["loaded"] is False  # never built for texture
    with pytest.raises(ValueError, match="detector"):
        ev.evaluate("spatial", _images(1), ["a dog near a cat"])
    from steer.rewards.weights import RewardWeightsNotFound

    with pytest.raises(RewardWeightsNotFound, match="does not exist"):
        cb.load_compbench_evaluator(blip="./missing_blip_folder").evaluate("color", _images(1), ["a red car"])
