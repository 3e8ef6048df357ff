import json
from pathlib import Path

import pytest

from steer.eval.geneval import (
    Detection,
    MetadataError,
    evaluate_detections,
    load_metadata,
    relative_position,
    summarize,
    validate_metadata,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "geneval" / "evaluation_metadata.jsonl"


def det(label, box, score=0.95, color=None):
    return Detection(label, score, box, color)


def test_relative_position_axes_and_shrink():
    a, b = (0, 0, 10, 10), (20, 0, 30, 10)
    assert relative_position(a, b) == {"left of"}
    assert relative_position(b, a) == {"right of"}
    assert relative_position((0, 0, 10, 10), (0, 20, 10, 30)) == {"above"}
    # offsets smaller than the 0.1 x (size_a + size_b) shrink give no relation
    assert relative_position((0, 0, 10, 10), (1, 1, 11, 11)) == set()
    # a diagonal offset satisfies both axes
    assert relative_position((0, 0, 10, 10), (30, 30, 40, 40)) == {"left of", "above"}


def test_include_count_color_position_and_exclude():
    rec = {"tag": "position", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}], "prompt": "p"}
    assert evaluate_detections(rec, [det("cup", (0, 0, 10, 10)), det("dog", (20, 0, 30, 10))]).correct
    v = evaluate_detections(rec, [det("cup", (20, 0, 30, 10)), det("dog", (0, 0, 10, 10))])
    assert not v.correct and "right of" in v.reasons[0]
    v = evaluate_detections(rec, [det("dog", (20, 0, 30, 10))])
    assert not v.correct and "no target" in v.reasons[-1]

    count = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}], "prompt": "p"}
    two = [det("dog", (0, 0, 1, 1)), det("dog", (5, 5, 6, 6))]
    assert evaluate_detections(count, two).correct
    assert not evaluate_detections(count, two + [det("dog", (9, 9, 10, 10))]).correct
    # counting uses the 0.9 threshold: a 0.5-confidence third dog does not count
    assert evaluate_detections(count, two + [det("dog", (9, 9, 10, 10), score=0.5)]).correct

    color = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "p"}
    # the colour of the top-confidence instance decides
    assert evaluate_detections(color, [det("car", (0, 0, 1, 1), 0.9, "red"), det("car", (3, 3, 4, 4), 0.5, "blue")]).correct
    assert not evaluate_detections(color, [det("car", (0, 0, 1, 1), 0.5, "red"), det("car", (3, 3, 4, 4), 0.9, "blue")]).correct
    # below the 0.3 threshold nothing is found
    assert not evaluate_detections(color, [det("car", (0, 0, 1, 1), 0.2, "red")]).correct


def test_summarize_is_unweighted_mean_of_tasks():
    s = summarize([("single_object", True), ("single_object", True), ("counting", False), ("counting", True), ("counting", True), ("counting", True)])
    assert s["tasks"] == {"single_object": 1.0, "counting": 0.75}
    assert s["overall"] == pytest.approx(0.875)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"include": [], "prompt": "x"}, "missing key 'tag'"),
        ({"tag": "nope", "include": [{"class": "a", "count": 1}], "prompt": "x"}, "unknown tag"),
        ({"tag": "counting", "include": [], "prompt": "x"}, "non-empty list"),
        ({"tag": "counting", "include": [{"class": "a", "count": 0}], "prompt": "x"}, "integer 'count' >= 1"),
        ({"tag": "counting", "include": [{"count": 1}], "prompt": "x"}, "string 'class'"),
        ({"tag": "position", "include": [{"class": "a", "count": 1, "position": ["near", 0]}], "prompt": "x"}, "unknown relation"),
        ({"tag": "position", "include": [{"class": "a", "count": 1, "position": ["above", 0]}], "prompt": "x"}, "earlier include clause"),
        ({"tag": "colors", "include": [{"class": "a", "count": 1, "color": 3}], "prompt": "x"}, "'color' must be a string"),
        ({"tag": "colors", "include": [{"class": "a", "count": 1}], "prompt": ""}, "non-empty string"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_metadata_is_named(record, message):
    with pytest.raises(MetadataError, match=message):
        validate_metadata(record)


def test_unknown_class_and_color_are_named():
    rec = {"tag": "colors", "include": [{"class": "hexagon", "count": 1, "color": "red"}], "prompt": "x"}
    with pytest.raises(MetadataError, match="unknown class 'hexagon'"):
        validate_metadata(rec, classes=["circle"])
    rec = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "teal"}], "prompt": "x"}
    with pytest.raises(MetadataError, match="unknown color 'teal'"):
        validate_metadata(rec, classes=["circle"], colors=["red"])


def test_load_metadata_reports_file_and_line(tmp_path):
    good = {"tag": "single_object", "include": [{"class": "a", "count": 1}], "prompt": "a photo of an a"}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(MetadataError, match=r"m.jsonl:2: not valid JSON"):
        load_metadata(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_metadata(tmp_path / "missing.jsonl")


@pytest.mark.skipif(not SHARED.exists(), reason="GenEval metadata not beside the checkout")
def test_official_geneval_metadata_validates():
    records = load_metadata(SHARED)
    assert len(records) == 553


def test_summarize_takes_fractional_correctness():
    s = summarize([("single_object", 0.5), ("single_object", 1.0), ("counting", 0.25)])
    assert s["tasks"] == {"single_object": 0.75, "counting": 0.25}
    assert s["overall"] == 0.5 and s["counts"] == {"single_object": 2, "counting": 1}


EVERY_TAG = {
    "single_object": ({"include": [{"class": "bench", "count": 1}]},
                      [det("bench", (0, 0, 10, 10), 0.5)], [det("chair", (0, 0, 10, 10)), det("bench", (0, 0, 5, 5), 0.2)]),
    "two_object": ({"include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1}]},
                   [det("cup", (0, 0, 5, 5)), det("dog", (9, 9, 20, 20), 0.4)], [det("cup", (0, 0, 5, 5)), det("cup", (9, 9, 20, 20))]),
    "counting": ({"include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}]},
                 [det("cat", (i, 0, i + 1, 1)) for i in range(3)] + [det("cat", (9, 9, 10, 10), 0.85)],  # 0.85 < 0.9: not counted
                 [det("cat", (i, 0, i + 1, 1)) for i in range(4)]),
    "colors": ({"include": [{"class": "car", "count": 1, "color": "blue"}]},
               [det("car", (0, 0, 5, 5), 0.9, "blue"), det("car", (6, 6, 9, 9), 0.5, "red")],
               [det("car", (0, 0, 5, 5), 0.9, "red"), det("car", (6, 6, 9, 9), 0.5, "blue")]),  # the top instance decides
    "position": ({"include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["above", 0]}]},
                 [det("cup", (0, 20, 10, 30)), det("dog", (0, 0, 10, 10))], [det("cup", (0, 0, 10, 10)), det("dog", (0, 20, 10, 30))]),
    "color_attr": ({"include": [{"class": "car", "count": 1, "color": "red"}, {"class": "bench", "count": 1, "color": "green"}]},
                   [det("car", (0, 0, 5, 5), 0.9, "red"), det("bench", (6, 6, 9, 9), 0.9, "green")],
                   [det("car", (0, 0, 5, 5), 0.9, "green"), det("bench", (6, 6, 9, 9), 0.9, "red")]),  # colours swapped
}


@pytest.mark.parametrize("tag", list(EVERY_TAG))
def test_geneval_rules_every_tag_right_and_wrong(tag):
    clauses, right, wrong = EVERY_TAG[tag]
    record = validate_metadata({"tag": tag, "prompt": "p", **clauses})
    assert evaluate_detections(record, right).correct
    v = evaluate_detections(record, wrong)
    assert not v.correct and v.reasons and v.tag == tag
