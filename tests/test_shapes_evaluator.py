import copy
from collections import defaultdict

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from steer.eval.geneval import TASKS
from steer.shapes import detect, evaluate_image, render, sample_record, scene_for_record
from steer.shapes.world import COLORS, SHAPES, Scene


def _drift(img, rng):
    """Blur, per-channel gain and noise, as a generative model's output has."""
    f = gaussian_filter(img.astype(float), sigma=(0.6, 0.6, 0)) * rng.uniform(0.9, 1.08, size=3) + rng.normal(0, 4, img.shape)
    return np.clip(f, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(123)
    return [(rec, scene_for_record(rec, rng)) for task in TASKS for rec in (sample_record(rng, task) for _ in range(80))]


def test_ground_truth_scenes_are_correct_per_task(scenes):
    hits = defaultdict(list)
    for rec, scene in scenes:
        hits[rec["tag"]].append(evaluate_image(render(scene), rec).correct)
    for task, h in hits.items():
        assert np.mean(h) >= 0.99, (task, np.mean(h))


def test_blurred_drifted_scenes_are_still_correct(scenes):
    rng = np.random.default_rng(5)
    hits = defaultdict(list)
    for rec, scene in scenes:
        hits[rec["tag"]].append(evaluate_image(_drift(render(scene), rng), rec).correct)
    for task, h in hits.items():
        assert np.mean(h) >= 0.95, (task, np.mean(h))


def test_detector_finds_shape_colour_and_box():
    rng = np.random.default_rng(0)
    from steer.shapes import parse_prompt

    for shape in SHAPES:
        for color in COLORS:
            scene = scene_for_record(parse_prompt(f"a photo of {'an' if color == 'orange' else 'a'} {color} {shape}"), rng)
            (d,) = detect(render(scene))
            assert (d.label, d.color) == (shape, color)
            assert d.score > 0.85
            assert np.allclose(d.box, scene.objects[0].box, atol=1.0)


def _perturbations(rec, scene, rng):
    """(name, scene) pairs that must fail ``rec``."""
    out = []
    objs = scene.objects
    if len(objs) >= 1:
        out.append(("missing object", Scene(objs[1:])))
    for i, o in enumerate(objs):
        clause = next((c for c in rec["include"] if c["class"] == o.shape), None)
        if clause and "color" in clause:
            other = copy.deepcopy(scene)
            other.objects[i].color = next(c for c in COLORS if c != o.color)
            out.append(("wrong colour", other))
            break
    if rec["tag"] == "counting":
        out.append(("one fewer", Scene(objs[:-1])))
    if rec["tag"] == "position":
        swapped = copy.deepcopy(scene)
        a, b = swapped.objects
        a.cx, a.cy, b.cx, b.cy = b.cx, b.cy, a.cx, a.cy
        out.append(("swapped relation", swapped))
    if rec["tag"] in ("single_object", "colors", "two_object", "color_attr"):
        other = copy.deepcopy(scene)
        other.objects[0].shape = next(s for s in SHAPES if s not in [o.shape for o in scene.objects])
        out.append(("wrong shape", other))
    return out


def test_perturbed_scenes_are_rejected(scenes):
    rng = np.random.default_rng(9)
    checked = defaultdict(int)
    for rec, scene in scenes:
        for name, bad in _perturbations(rec, scene, rng):
            assert not evaluate_image(render(bad), rec).correct, (rec["prompt"], name)
            checked[name] += 1
    assert set(checked) == {"missing object", "wrong colour", "one fewer", "swapped relation", "wrong shape"}


def test_extra_object_fails_counting():
    from steer.shapes import parse_prompt

    rng = np.random.default_rng(2)
    rec = parse_prompt("a photo of two squares")
    three = scene_for_record(parse_prompt("a photo of three squares"), rng)
    assert not evaluate_image(render(three), rec).correct
    assert evaluate_image(render(three), parse_prompt("a photo of three squares")).correct


def test_bad_image_input_is_named():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detect(np.zeros((32, 32)))
