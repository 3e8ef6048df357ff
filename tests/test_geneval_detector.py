"""The neural GenEval evaluator (Mask2Former + CLIP colours) on tiny random models saved to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steer.eval.detectors import (
    BACKGROUND,
    COLOR_TEMPLATES,
    COLORS,
    GENEVAL_CLASSES,
    ClipColorClassifier,
    GenEvalEvaluator,
    Mask2FormerDetector,
    geneval_label,
    instance_predictions,
    load_geneval_evaluator,
    mask_to_box,
    masked_crop,
)
from steer.eval.geneval import Detection, RuleConfig, Verdict
from test_rewards import write_open_clip_dir
from tiny_eval_models import write_mask2former_dir

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def m2f_dir(tmp_path_factory) -> Path:
    return write_mask2former_dir(tmp_path_factory.mktemp("m2f"))


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory) -> Path:
    return write_open_clip_dir(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def detector(m2f_dir) -> Mask2FormerDetector:
    return Mask2FormerDetector(m2f_dir, min_score=0.05)


@pytest.fixture(scope="module")
def colors(oc_dir) -> ClipColorClassifier:
    return ClipColorClassifier(oc_dir, pretrained=None)


def noise_image(seed: int, size=(64, 64)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))


RECORDS = {
    "single": {"tag": "single_object", "include": [{"class": "car", "count": 1}], "prompt": "a photo of a car"},
    "red": {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
    "blue": {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}], "prompt": "a photo of a blue car"},
    "count": {
        "tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}],
        "prompt": "a photo of two cups",
    },
}


# ----------------------------------------------------------------------------- detector


def check_detections(dets, image, min_score):
    for d in dets:
        assert isinstance(d, Detection) and d.label in GENEVAL_CLASSES
        assert d.score >= min_score
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
        assert d.mask.dtype == bool and d.mask.shape == (image.height, image.width) and d.mask.any()
        assert d.box == mask_to_box(d.mask)
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_geneval_mask2former_from_folder_detects_deterministically(detector):
    images = [noise_image(0), noise_image(1, (96, 64)), Image.new("RGB", (64, 48), "red")]
    first, second = detector(images), detector(images)
    assert len(first) == 3 and sum(map(len, first)) > 0
    for dets, image in zip(first, images):
        check_detections(dets, image, 0.05)
    for a, b in zip(first, second):
        assert [(d.label, d.score, d.box) for d in a] == [(d.label, d.score, d.box) for d in b]
        assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b))
    info = detector.info()
    assert info["transformers"] and info["processor"] == "Mask2FormerImageProcessor" and info["min_score"] == 0.05


def test_geneval_mask2former_batching_and_hf_postprocess(m2f_dir, detector):
    images = [noise_image(2), noise_image(3)]
    one_by_one = Mask2FormerDetector(m2f_dir, min_score=0.05, batch_size=1)(images)
    together = detector(images)
    for a, b in zip(one_by_one, together):
        assert [d.label for d in a] == [d.label for d in b]
        np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-4)
    hf = Mask2FormerDetector(m2f_dir, min_score=0.05, postprocess="hf")
    for dets, image in zip(hf(images), images):
        check_detections(dets, image, 0.05)
    with pytest.raises(ValueError, match="postprocess"):
        Mask2FormerDetector(m2f_dir, postprocess="panoptic")


def test_geneval_instance_predictions_match_mmdet_rules():
    # 2 queries, 3 classes (+ no-object); query 0 is a confident "class 1" over the left half
    cls = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    masks = torch.full((2, 4, 4), -10.0)
    masks[0] = 3.0
    scores, labels, binary = instance_predictions(cls, masks, (16, 16), (16, 16), (8, 8), max_per_image=3)
    assert labels[0] == 1 and scores.shape == (3,) and binary.shape == (3, 8, 8) and binary[0].all()
    expected = torch.softmax(cls[0], -1)[1] * torch.sigmoid(torch.tensor(3.0))  # class prob x mean mask prob
    assert abs(float(scores[0]) - float(expected)) < 1e-5 and float(scores[1]) < 1e-3
    masks[0] = -10.0
    masks[0, :, :2] = 10.0
    _, _, binary = instance_predictions(cls, masks, (16, 16), (16, 16), (8, 8), max_per_image=1)
    assert mask_to_box(binary[0].numpy()) == (0.0, 0.0, 4.0, 8.0)
    # padding: the valid region is the top half of the input, so the mask is stretched back over the image
    masks[0] = -10.0
    masks[0, :2, :2] = 10.0
    _, _, binary = instance_predictions(cls, masks, (16, 16), (8, 16), (8, 16), max_per_image=1)
    assert mask_to_box(binary[0].numpy()) == (0.0, 0.0, 8.0, 8.0)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("tvmonitor", "tv"), ("tv", "tv"), ("sofa", "couch"), ("motorbike", "motorcycle"), ("aeroplane", "airplane"),
        ("diningtable", "dining table"), ("dining_table", "dining table"), ("pottedplant", "potted plant"),
        ("mouse", "computer mouse"), ("remote", "tv remote"), ("keyboard", "computer keyboard"), ("cell phone", "cell phone"),
        ("hair dryer", "hair drier"), ("Hair Drier", "hair drier"), ("traffic-light", "traffic light"), ("sky-other-merged", "sky other merged"),
    ],
)
def test_geneval_label_spellings(name, expected):
    assert geneval_label(name) == expected


def test_geneval_detector_normalises_checkpoint_label_names(tmp_path):
    voc = {"tv": "tvmonitor", "couch": "sofa", "motorcycle": "motorbike", "computer mouse": "mouse", "hair drier": "hair dryer"}
    folder = write_mask2former_dir(tmp_path / "voc", labels=[voc.get(c, c) for c in GENEVAL_CLASSES])
    det = Mask2FormerDetector(folder)
    assert det.model.config.id2label[GENEVAL_CLASSES.index("tv")] == "tvmonitor"
    assert tuple(det.labels[i] for i in range(80)) == GENEVAL_CLASSES


# ----------------------------------------------------------------------------- colours


def test_geneval_masked_crop_is_grey_outside_the_mask():
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0] = np.arange(40)[None, :] * 5
    rgb[..., 1] = 200
    yy, xx = np.mgrid[:30, :40]
    mask = (xx - 20) ** 2 + (yy - 12) ** 2 <= 36
    det = Detection("apple", 0.9, mask_to_box(mask), mask=mask)
    assert det.box == (14.0, 6.0, 27.0, 19.0)
    crop = np.asarray(masked_crop(Image.fromarray(rgb), det))
    assert crop.shape == (13, 13, 3)
    inside = mask[6:19, 14:27]
    assert (crop[~inside] == 0x99).all() and BACKGROUND == "#999999"
    assert (crop[inside] == rgb[6:19, 14:27][inside]).all()
    no_mask = np.asarray(masked_crop(Image.fromarray(rgb), Detection("apple", 0.9, (2.4, 3.0, 10.6, 9.0))))
    assert no_mask.shape == (6, 9, 3) and (no_mask == rgb[3:9, 2:11]).all()
    with pytest.raises(ValueError, match="mask has shape"):
        masked_crop(Image.fromarray(rgb), Detection("apple", 0.9, (0, 0, 5, 5), mask=np.ones((5, 5), bool)))


def test_geneval_clip_colour_classifier_matches_a_manual_zero_shot(colors, oc_dir):
    import open_clip

    from steer.rewards.clip import load_open_clip

    image = noise_image(5)
    mask = np.zeros((64, 64), bool)
    mask[10:40, 20:50] = True
    dets = [Detection("car", 0.9, mask_to_box(mask), mask=mask), Detection("car", 0.8, (0, 0, 64, 64))]
    got = colors.classify(image, dets)
    assert all(c in COLORS for c in got) and got == colors.classify(image, dets)
    assert colors(image, dets[0], "car") == got[0]
    emb = colors.class_embeddings("car")
    assert emb.shape[0] == 10 and torch.allclose(emb.norm(dim=-1), torch.ones(10)) and colors.class_embeddings("car") is emb
    # reference: open_clip directly, the GenEval recipe written out
    model, tok, cfg = load_open_clip(oc_dir, None)
    text = model.encode_text(tok([t.format(c=c, cls="car") for c in COLORS for t in COLOR_TEMPLATES]), normalize=True)
    text = text.view(10, 3, -1).mean(1)
    text = text / text.norm(dim=-1, keepdim=True)
    tf = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"], resize_mode=cfg.get("resize_mode"), interpolation=cfg.get("interpolation"))
    with torch.no_grad():
        feats = model.encode_image(torch.stack([tf(masked_crop(image, d)) for d in dets]), normalize=True)
    assert got == [COLORS[int(i)] for i in (feats @ text.T).argmax(-1)]
    info = colors.info()
    assert info["colors"] == list(COLORS) and info["pretrained"] is None


# ----------------------------------------------------------------------------- evaluator


def test_geneval_evaluator_end_to_end_on_tiny_models(m2f_dir, oc_dir):
    evaluator = load_geneval_evaluator(m2f_dir, oc_dir, None, min_score=0.05)
    assert isinstance(evaluator.detector, Mask2FormerDetector) and isinstance(evaluator.color_classifier, ClipColorClassifier)
    images = [noise_image(7), Image.new("RGB", (64, 64), "red"), noise_image(8)]
    top = [dets[0] for dets in evaluator.detector(images)]  # records about what the random model finds
    assert all(d.score > 0.3 for d in top)
    records = [
        {"tag": "single_object", "include": [{"class": top[0].label, "count": 1}], "prompt": f"a photo of a {top[0].label}"},
        {"tag": "colors", "include": [{"class": top[1].label, "count": 1, "color": "red"}], "prompt": f"a photo of a red {top[1].label}"},
        {"tag": "counting", "include": [{"class": top[2].label, "count": 2}], "exclude": [{"class": top[2].label, "count": 3}], "prompt": "two"},
    ]
    calls = []
    real = evaluator.color_classifier
    evaluator.color_classifier = lambda image, det, cls: calls.append(cls) or real(image, det, cls)
    verdicts = evaluator(images, records)
    assert [v.tag for v in verdicts] == ["single_object", "colors", "counting"]
    assert all(isinstance(v, Verdict) and isinstance(v.correct, bool) for v in verdicts)
    assert calls == [top[1].label]  # one colour lookup, for the colour record only
    assert verdicts[0].correct and verdicts[1].correct == (real(images[1], top[1]) == "red")
    assert not verdicts[2].correct and "found 0" in verdicts[2].reasons[0]  # random scores stay below 0.9
    assert [(v.correct, v.reasons) for v in verdicts] == [(v.correct, v.reasons) for v in evaluator(images, records)]
    evaluator.color_classifier = real
    info = evaluator.info()
    assert info["detector"]["detector"] == "Mask2FormerForUniversalSegmentation" and info["detector"]["model"] == str(m2f_dir)
    assert info["color_classifier"]["model"] == str(oc_dir) and info["rules"]["counting_threshold"] == 0.9
    with pytest.raises(ValueError, match="one GenEval record per image"):
        evaluator(images, records[:2])


class FakeDetector:
    def __init__(self, dets):
        self.dets = dets

    def __call__(self, images):
        return [list(self.dets) for _ in images]


class FakeColors:
    def __init__(self, color="red"):
        self.color, self.calls = color, []

    def __call__(self, image, det, cls):
        self.calls.append((det.label, cls))
        return self.color


def test_geneval_evaluator_wiring_with_fixed_detections():
    car = Detection("car", 0.95, (10, 10, 30, 30))
    cups = [Detection("cup", s, (40 + i, 40, 50 + i, 50)) for i, s in enumerate((0.99, 0.97, 0.5))]
    colors = FakeColors("red")
    evaluator = GenEvalEvaluator(FakeDetector([car, *cups]), colors)
    image = Image.new("RGB", (64, 64))
    red, blue, single, count = evaluator([image] * 4, [RECORDS["red"], RECORDS["blue"], RECORDS["single"], RECORDS["count"]])
    assert (red.tag, red.correct) == ("colors", True)
    assert (blue.tag, blue.correct) == ("colors", False) and "blue car" in blue.reasons[0]
    assert single.correct and count.correct  # the 0.5 cup is below the counting threshold
    assert colors.calls == [("car", "car"), ("car", "car")]  # only colour records ask, once per instance
    strict = GenEvalEvaluator(FakeDetector([car, *cups]), FakeColors(), RuleConfig(counting_threshold=0.3))
    assert not strict([image], [RECORDS["count"]])[0].correct
    with pytest.raises(ValueError, match="no color_classifier"):
        GenEvalEvaluator(FakeDetector([car]))([image], [RECORDS["red"]])
    assert GenEvalEvaluator(FakeDetector([car]))([image], [RECORDS["single"]])[0].correct


# ----------------------------------------------------------------------------- errors


def test_geneval_missing_folders_are_named(tmp_path):
    missing = tmp_path / "no-such-mask2former"
    with pytest.raises(FileNotFoundError, match="no-such-mask2former.*hf download"):
        Mask2FormerDetector(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*incomplete"):
        Mask2FormerDetector(empty)
    with pytest.raises(FileNotFoundError, match="no-such-clip"):
        ClipColorClassifier(tmp_path / "no-such-clip", pretrained=None)


def test_geneval_unavailable_hub_id_is_named(monkeypatch, tmp_path):
    import huggingface_hub.constants as C

    from steer.rewards.weights import RewardWeightsNotFound

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RewardWeightsNotFound, match=r"steer-test/no-such-mask2former.*hf download steer-test/no-such-mask2former"):
        Mask2FormerDetector("steer-test/no-such-mask2former")
