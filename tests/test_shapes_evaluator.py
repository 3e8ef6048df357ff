import copy
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from steer.eval.geneval import TASKS
from steer.shapes import detect, evaluate_image, render, sample_record, scene_for_record
from steer.shapes.geometry import coverage
from steer.shapes.prompts import parse_prompt
from steer.shapes.synthetic import blob_coverage, compose
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


# ------------------------------------------------------------------ adversarial scenes: the verdicts a careful person gives


class _Mid:
    """A stand-in generator whose draws are the middle of their range: canonical blobs."""

    def uniform(self, lo=0.0, hi=1.0, size=None):
        return (lo + hi) / 2 if size is None else np.full(size, (lo + hi) / 2)

    def integers(self, n):
        return 0


def _scene(*layers, blur=0.6, seed=0):
    return compose(list(layers), np.random.default_rng(seed), blur=blur)


@pytest.mark.parametrize("angle", [10, 15, 22.5, 30, 37.5, 45, 60, 80])
def test_tilted_square_is_a_square_not_a_circle(angle):
    img = _scene((coverage("square", 16, 16, 110, 1.0, angle)[0], "red"))
    assert [d.label for d in detect(img)] == ["square"]
    assert evaluate_image(img, parse_prompt("a photo of a red square")).correct
    assert not evaluate_image(img, parse_prompt("a photo of a circle")).correct


@pytest.mark.parametrize("angle", [20, 45, 90, 135, 180, 250])
def test_tilted_triangle_is_a_triangle(angle):
    img = _scene((coverage("triangle", 16, 16, 90, 1.0, angle)[0], "yellow"))
    assert [d.label for d in detect(img)] == ["triangle"]
    assert evaluate_image(img, parse_prompt("a photo of a yellow triangle")).correct


@pytest.mark.parametrize("kind", ["shield", "teardrop", "bean", "capsule", "long_ellipse", "slab", "fused_pair", "crescent", "l_shape", "kite"])
@pytest.mark.parametrize("angle", [0, 40, 100, 200])
def test_blobs_are_unrecognised(kind, angle):
    img = _scene((blob_coverage(kind, 16, 16, 110, angle, _Mid()), "blue"))
    (d,) = detect(img)
    assert d.label == "unknown", (kind, angle, d)
    for prompt in ("a photo of a circle", "a photo of a square", "a photo of a triangle"):
        assert not evaluate_image(img, parse_prompt(prompt)).correct


@pytest.mark.parametrize("shape, a, b", [("square", "yellow", "orange"), ("circle", "red", "orange"), ("triangle", "purple", "blue"),
                                         ("circle", "green", "blue")])
def test_colour_gradient_does_not_split_an_object(shape, a, b):
    img = _scene((coverage(shape, 16, 16, 120)[0], a, b))
    dets = [d for d in detect(img) if d.label != "unknown"]
    assert [d.label for d in dets] == [shape]
    assert evaluate_image(img, parse_prompt(f"a photo of {'an' if shape[0] in 'aeiou' else 'a'} {shape}")).correct
    assert not evaluate_image(img, parse_prompt(f"a photo of two {shape}s")).correct


def test_two_shaded_circles_count_as_two():
    img = _scene((coverage("circle", 9, 16, 70)[0], "yellow", "orange"), (coverage("circle", 23, 16, 70)[0], "red", "orange"))
    assert evaluate_image(img, parse_prompt("a photo of two circles")).correct
    assert not evaluate_image(img, parse_prompt("a photo of three circles")).correct


@pytest.mark.parametrize("left, right", [(("square", "red"), ("circle", "blue")), (("triangle", "yellow"), ("square", "purple")),
                                         (("circle", "green"), ("circle", "red")), (("square", "blue"), ("square", "yellow"))])
def test_touching_objects_of_two_colours_are_split_at_their_boundary(left, right):
    (ls, lc), (rs, rc) = left, right
    side = 10.0
    img = _scene((coverage(ls, 16 - side / 2, 16, side * side * (0.5 if ls == "triangle" else 1.0))[0], lc),
                 (coverage(rs, 16 + side / 2, 16, side * side * (np.pi / 4 if rs == "circle" else 1.0))[0], rc))
    found = sorted((d.label, d.color) for d in detect(img) if d.label != "unknown")
    assert found == sorted([left, right])
    if ls != rs:
        assert evaluate_image(img, parse_prompt(f"a photo of a {lc} {ls} and a {rc} {rs}")).correct
        assert evaluate_image(img, parse_prompt(f"a photo of a {ls} left of a {rs}")).correct
    else:
        assert evaluate_image(img, parse_prompt(f"a photo of two {ls}s")).correct


def test_audit_set_agreement():
    """The evaluator against 240 generated images judged by eye (tests/data/shapes_audit; benchmarks/shapes_audit.py).

    Guards the agreement measured when the detector was calibrated: false accepts 2/63 (sd) and 1/90 (flow) of the images a
    person calls wrong, false rejects 4/57 (sd) and 5/30 (flow) of the correct ones. The targets (3 % / 5 %) are met for
    flow's false accepts only; see the README.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from shapes_audit import agreement, load_audit

    items, images = load_audit(Path(__file__).parent / "data" / "shapes_audit")
    assert len(items) >= 240 and all(it["human"] is not None and it["note"] for it in items)
    assert {it["model"] for it in items} == {"sd", "flow"} and {it["record"]["tag"] for it in items} == set(TASKS)
    ag = agreement(items, [evaluate_image(im, it["record"]).correct for im, it in zip(images, items)])
    limits = {"sd": (0.035, 0.075), "flow": (0.035, 0.17)}  # (false accept rate, false reject rate)
    for model, (fa, fr) in limits.items():
        assert ag[model]["all"]["false_accept_rate"] <= fa, ag[model]["all"]
        assert ag[model]["all"]["false_reject_rate"] <= fr, ag[model]["all"]
