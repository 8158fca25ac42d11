"""Shapes toy world: determinism, grammar round trip and errors, oracle agreement/negatives/robustness, export."""

import json
import re

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from attnsynth.toyworld import shapes
from attnsynth.toyworld.shapes import (
    COLOURS,
    RELATIONS,
    SHAPES,
    SYNONYMS,
    Detection,
    ObjectSpec,
    Spec,
    detect,
    render,
    sample_prompt,
    score,
    spec_from_prompt,
    vocabulary,
)
from attnsynth.toyworld.shapes_draw import MIN_SIZE, Background, Instance, draw
from attnsynth.toyworld.shapes_oracle import oklab_hue, relation_satisfied

N_ORACLE = 300  # seeds at 64² for the agreement tests


def _distort(image, rng, *, blur=0.0, noise=0.0):
    x = image.astype(np.float64) / 255.0
    if blur:
        x = ndimage.gaussian_filter(x, sigma=(blur, blur, 0))
    if noise:
        x = x + rng.normal(0.0, noise, x.shape)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _correct(result):
    """The oracle agrees with a scene's own spec: every subject, count and relation found, nothing extra."""
    return result["all_present"] and all(result["relations_correct"]) and all(result["count_correct"]) and result["extra_objects"] == 0


@pytest.fixture(scope="module")
def scenes64():
    return [render(seed, 64) for seed in range(N_ORACLE)]


@pytest.fixture(scope="module")
def detections64(scenes64):
    return [detect(scene.image) for scene in scenes64]


# ----------------------------------------------------------------------------- world constants


def test_word_lists_cover_the_brief():
    assert {"circle", "square", "triangle", "star"} <= set(SHAPES) and len(SHAPES) >= 6
    assert {"red", "blue", "green", "yellow"} <= set(COLOURS) and len(COLOURS) >= 8
    assert sum(len(words) > 1 for words in SYNONYMS.values()) >= 3
    assert all(SYNONYMS[s][0] == s for s in SHAPES)
    assert set(RELATIONS) == {"left of", "right of", "above", "below", "next to"}
    words = vocabulary()
    assert words == sorted(set(words)) and all(w.isalpha() and w.islower() for w in words)


def test_palette_colours_are_far_apart_and_saturated():
    rgb = np.array(list(COLOURS.values())) / 255.0
    hues = oklab_hue(rgb)
    gaps = np.abs(hues[:, None] - hues[None, :]) % 360
    gaps = np.minimum(gaps, 360 - gaps) + np.eye(len(hues)) * 360
    assert gaps.min() >= 30.0
    assert (rgb.max(1) - rgb.min(1)).min() >= 0.55  # far above any background's chroma


# ----------------------------------------------------------------------------- rendering


def test_render_is_deterministic_and_resolution_independent():
    a, b = render(7, 64), render(7, 64)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.spec == b.spec
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    big = render(7, 256)
    assert big.image.shape == (256, 256, 3) and big.caption == a.caption and big.spec == a.spec
    assert not np.array_equal(render(8, 64).image, a.image)


def test_scene_geometry(scenes64):
    counts = set()
    for scene in scenes64[:150]:
        boxes = [b for obj in scene.spec.objects for b in obj.boxes]
        counts.add(len(boxes))
        assert 1 <= len(boxes) <= 4 and scene.caption == scene.caption.lower()
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert max(x1 - x0, y1 - y0) >= MIN_SIZE - 1e-9 and min(x1 - x0, y1 - y0) >= 0.14
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                overlap = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
                assert overlap == 0
        for i, rel, j in scene.spec.relations:
            assert relation_satisfied(scene.spec.objects[i].box, scene.spec.objects[j].box, rel)
        # Background: light and barely saturated everywhere outside the objects.
        mask = np.ones((64, 64), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            mask[max(int(y0 * 64) - 1, 0) : int(np.ceil(y1 * 64)) + 1, max(int(x0 * 64) - 1, 0) : int(np.ceil(x1 * 64)) + 1] = False
        bg = scene.image[mask].astype(float) / 255
        assert (bg.max(1) - bg.min(1)).max() < 0.15 and bg.max(1).min() > 0.75
    assert counts == {1, 2, 3, 4}


def test_render_rejects_bad_arguments():
    for bad in (31, 513, 64.0):
        with pytest.raises(ValueError, match="resolution"):
            render(0, bad)
    with pytest.raises(ValueError, match="seed"):
        render(-1, 64)


# ----------------------------------------------------------------------------- grammar


def test_caption_round_trip_and_spans(scenes64):
    seen_words, seen_relations, seen_counts, seen_sizes = set(), set(), set(), set()
    for seed in range(500):
        scene = scenes64[seed] if seed < len(scenes64) else render(seed, 32)
        parsed = spec_from_prompt(scene.caption)
        assert parsed == scene.spec.without_boxes(), scene.caption
        for subject in parsed.subjects:
            obj = parsed.objects[subject.object_index]
            assert scene.caption[slice(*subject.noun_span)] == subject.noun
            assert subject.noun in SYNONYMS[obj.shape] or subject.noun[:-1] in SYNONYMS[obj.shape] or subject.noun[:-2] in SYNONYMS[obj.shape]
            if obj.colour is None:
                assert subject.attribute is None and subject.attribute_span is None
            else:
                assert scene.caption[slice(*subject.attribute_span)] == subject.attribute == obj.colour
        seen_words.update(re.findall(r"[a-z]+", scene.caption))
        seen_relations.update(r for _, r, _ in parsed.relations)
        seen_counts.update(o.count for o in parsed.objects)
        seen_sizes.add(len(parsed.objects))
    assert seen_words <= set(vocabulary())
    assert {"box", "disk", "disc", "rhombus"} <= seen_words  # synonyms are used
    assert seen_relations == set(RELATIONS) and seen_sizes == {1, 2, 3, 4} and {1, 2, 3} <= seen_counts
    assert any(s.attribute is None for seed in range(200) for s in render(seed, 32).spec.subjects)


def test_synonyms_counts_and_relations_parse():
    for shape, words in SYNONYMS.items():
        for word in words:
            assert spec_from_prompt(f"a red {word}").objects == (ObjectSpec(shape, "red"),)
    spec = spec_from_prompt("two red circles and a blue box")
    assert [(o.shape, o.colour, o.count) for o in spec.objects] == [("circle", "red", 2), ("square", "blue", 1)]
    spec = spec_from_prompt("a blue disk above a green star")
    assert spec.relations == ((0, "above", 1),) and [o.shape for o in spec.objects] == ["circle", "star"]
    assert spec_from_prompt("a red circle to the left of a blue box").relations == ((0, "left of", 1),)
    assert spec_from_prompt("a green star beside a yellow triangle").relations == ((0, "next to", 1),)
    three = spec_from_prompt("a red circle, a blue square, and three green stars")
    assert [o.count for o in three.objects] == [1, 1, 3]
    assert spec_from_prompt("a circle and a square").objects == (ObjectSpec("circle"), ObjectSpec("square"))
    shouted = "A Red  Circle"
    subject = spec_from_prompt(shouted).subjects[0]
    assert shouted[slice(*subject.noun_span)] == "Circle" and shouted[slice(*subject.attribute_span)] == "Red"


@pytest.mark.parametrize(
    ("prompt", "needles"),
    [
        ("a red hexagons", ["unknown shape", "'hexagons'", "word 3", "circle"]),
        ("a mauve circle", ["'mauve'", "colour", "red"]),
        ("the red circle", ["'the'", "word 1"]),
        ("two red circle", ["'circle'", "plural"]),
        ("a red circles", ["'circles'", "singular"]),
        ("a red circle with a star", ["'with'", "and"]),
        ("a red circle and", ["ends too early", "subject"]),
        ("a red circle, a star above a box", ["'above'", "two subjects"]),
        ("a red circle above two stars", ["singular"]),
        ("a circle, a star, a box, a cross and a disk", ["too many", "4"]),
        ("a red circle.", ["'.'"]),
        ("", ["empty"]),
    ],
)
def test_parse_errors_name_the_word(prompt, needles):
    with pytest.raises(ValueError) as info:
        spec_from_prompt(prompt)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_sample_prompt():
    caption, spec = sample_prompt(3, 3)
    assert (caption, spec) == sample_prompt(3, 3)
    assert spec_from_prompt(caption) == spec and len(spec.objects) == 3
    assert all(o.colour is not None and o.count == 1 and not o.boxes for o in spec.objects)
    for relation in RELATIONS:
        caption, spec = sample_prompt(11, 2, relation)
        assert spec.relations == ((0, relation, 1),) and spec_from_prompt(caption) == spec
    counted = [sample_prompt(s, 2, allow_counts=True)[1] for s in range(60)]
    assert any(o.count > 1 for spec in counted for o in spec.objects)
    bare = [sample_prompt(s, 2, colour_prob=0.0)[1] for s in range(5)]
    assert all(o.colour is None for spec in bare for o in spec.objects)
    bad = [((0, 0), "n_subjects"), ((0, 5), "n_subjects"), ((-1, 2), "seed"), ((0, 3, "above"), "2 subjects"), ((0, 2, "on"), "relation")]
    for args, word in bad:
        with pytest.raises(ValueError, match=word):
            sample_prompt(*args)


def test_spec_json_round_trip_and_validation(scenes64):
    for scene in scenes64[:50]:
        data = json.loads(json.dumps(scene.spec.to_dict()))
        assert Spec.from_dict(data) == scene.spec
    assert ObjectSpec("star", "red", box=(0.1, 0.1, 0.3, 0.3)).boxes == ((0.1, 0.1, 0.3, 0.3),)
    for kwargs, word in [
        ({"shape": "hexagon"}, "shape"),
        ({"shape": "star", "colour": "mauve"}, "colour"),
        ({"shape": "star", "box": (0.5, 0.1, 0.2, 0.3)}, "box"),
        ({"shape": "star", "count": 0}, "count"),
        ({"shape": "star", "count": 2, "boxes": ((0.1, 0.1, 0.2, 0.2),)}, "boxes"),
    ]:
        with pytest.raises(ValueError, match=word):
            ObjectSpec(**kwargs)
    with pytest.raises(ValueError, match="relation"):
        Spec(objects=(ObjectSpec("star"), ObjectSpec("circle")), relations=((0, "inside", 1),))


# ----------------------------------------------------------------------------- oracle


def test_oracle_agrees_with_ground_truth_at_64(scenes64, detections64):
    results = [score(s.image, s.spec, detections=d) for s, d in zip(scenes64, detections64)]
    assert np.mean([_correct(r) for r in results]) >= 0.98
    relations = [ok for r in results for ok in r["relations_correct"]]
    assert len(relations) >= 40 and np.mean(relations) >= 0.98
    assert np.mean([r["accuracy"] for r in results]) >= 0.98
    # Boxes come back accurately: each subject's matched box is near the truth.
    for scene, dets in zip(scenes64[:60], detections64[:60]):
        for obj in scene.spec.objects:
            for true_box in obj.boxes:
                assert min(np.abs(np.subtract(d.box, true_box)).max() for d in dets) < 0.04


def test_oracle_agrees_at_higher_resolutions():
    scenes = [render(seed, 128) for seed in range(1000, 1030)] + [render(seed, 256) for seed in range(2000, 2012)]
    assert np.mean([_correct(score(s.image, s.spec)) for s in scenes]) >= 0.97


def _truth_detections(scene):
    return [Detection(o.shape, o.colour, b, 0.0, 1.0, 0.0) for o in scene.spec.objects for b in o.boxes]


def test_oracle_rejects_specs_of_other_scenes(scenes64, detections64):
    """Image of scene s scored against the spec of scene s+1: the oracle must say what the truth says."""
    agree, negatives, pairs = 0, 0, 0
    for k in range(len(scenes64) - 1):
        image_scene, spec_scene = scenes64[k], scenes64[k + 1]
        if any(o.colour is None for o in image_scene.spec.objects):
            continue  # drawn colour of a colourless subject is not recorded
        expected = score(image_scene.image, spec_scene.spec, detections=_truth_detections(image_scene))["all_present"]
        got = score(image_scene.image, spec_scene.spec, detections=detections64[k])["all_present"]
        pairs += 1
        negatives += not expected
        agree += got == expected
    assert pairs >= 200 and negatives >= 0.9 * pairs
    assert agree / pairs >= 0.98


def test_oracle_catches_wrong_colour_and_wrong_shape(scenes64, detections64):
    colour_ok, shape_ok, trials = 0, 0, 0
    for scene, dets in zip(scenes64[:150], detections64[:150]):
        objects = list(scene.spec.objects)
        first = objects[0]
        if first.colour is None:
            continue
        used = {(o.shape, o.colour) for o in objects}
        new_colour = next(c for c in COLOURS if (first.shape, c) not in used and c != first.colour)
        new_shape = next(s for s in SHAPES if all(o.shape != s for o in objects))
        recoloured = Spec(objects=(ObjectSpec(first.shape, new_colour, count=first.count), *objects[1:]), relations=scene.spec.relations)
        reshaped = Spec(objects=(ObjectSpec(new_shape, first.colour, count=first.count), *objects[1:]), relations=scene.spec.relations)
        r = score(scene.image, recoloured, detections=dets)
        colour_ok += (not r["all_present"]) and r["present"][0] and r["colour_binding"][0] is False and r["colour_binding_rate"] < 1
        r = score(scene.image, reshaped, detections=dets)
        shape_ok += (not r["all_present"]) and not r["present"][0] and not r["satisfied"][0]
        trials += 1
    assert trials >= 100 and colour_ok / trials >= 0.98 and shape_ok / trials >= 0.98


@pytest.mark.parametrize(("blur", "noise", "n"), [(1.0, 0.0, 100), (0.0, 10 / 255, 100), (1.0, 10 / 255, 150)])
def test_oracle_is_robust_to_blur_and_noise(scenes64, blur, noise, n):
    rng = np.random.default_rng(0)
    results = [score(_distort(s.image, rng, blur=blur, noise=noise), s.spec) for s in scenes64[:n]]
    assert np.mean([_correct(r) for r in results]) >= 0.98


def _rotate(image, degrees):
    fill = np.median(image.reshape(-1, 3), axis=0)
    planes = [ndimage.rotate(image[..., c].astype(float), degrees, reshape=False, order=1, cval=fill[c]) for c in range(3)]
    return np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)


def _stretch(image, factor):
    wide = ndimage.zoom(image.astype(float), (1, factor, 1), order=1)
    start = (wide.shape[1] - image.shape[1]) // 2
    return np.clip(wide[:, start : start + image.shape[1]], 0, 255).astype(np.uint8)


def test_oracle_tolerates_imperfect_shapes(scenes64):
    """Slightly rotated or stretched objects (as a model might draw them) are still recognised."""
    for distort in (lambda im: _rotate(im, 8.0), lambda im: _stretch(im, 1.15)):
        results = [score(distort(s.image), s.spec) for s in scenes64[:60]]
        assert np.mean([r["all_present"] for r in results]) >= 0.95


def test_oracle_tolerates_slightly_wrong_colours():
    rng = np.random.default_rng(1)
    import colorsys

    from attnsynth.toyworld.shapes_oracle import classify_colour

    wrong = 0
    for name, rgb in COLOURS.items():
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        for _ in range(100):
            shifted = colorsys.hsv_to_rgb((h + rng.uniform(-6, 6) / 360) % 1, s * rng.uniform(0.6, 1), v * rng.uniform(0.7, 1))
            mix = rng.uniform(0, 0.3)  # washed out towards white
            wrong += classify_colour(np.array(shifted) * (1 - mix) + mix)[0] != name
    assert wrong / (100 * len(COLOURS)) <= 0.01


def test_detect_empty_touching_and_merged_objects():
    bg = Background(rgb=(0.93, 0.92, 0.9), amplitude=0.04, noise=2 / 255)
    rng = np.random.default_rng(0)
    assert detect(draw([], bg, 64, rng)) == []
    colour = {k: tuple(c / 255 for c in v) for k, v in COLOURS.items()}
    left, right = (0.2, 0.3, 0.45, 0.55), (0.45, 0.3, 0.7, 0.55)  # touching boxes
    image = draw([Instance("square", left, colour["orange"]), Instance("circle", right, colour["yellow"])], bg, 64, rng)
    found = sorted((d.shape, d.colour) for d in detect(image))
    assert found == [("circle", "yellow"), ("square", "orange")]
    merged = draw([Instance("square", left, colour["red"]), Instance("circle", right, colour["red"])], bg, 64, rng)
    result = score(merged, spec_from_prompt("a red square and a red circle"))
    assert not result["all_present"]  # one fused blob is not two objects
    as_float = detect(image.astype(np.float32) / 255)
    assert [(d.shape, d.colour) for d in as_float] == [(d.shape, d.colour) for d in detect(image)]
    for bad in (np.zeros((64, 64)), np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64, 3), np.int64)):
        with pytest.raises(ValueError, match="image"):
            detect(bad)


def _det(shape, colour, box=(0.4, 0.4, 0.6, 0.6), confidence=0.9):
    return Detection(shape, colour, box, 0.02, confidence, 0.0)


def test_score_matching_rules():
    image = np.zeros((8, 8, 3), np.uint8)  # not looked at when detections are given
    spec = spec_from_prompt("two red circles and a blue square")
    r = score(image, spec, detections=[_det("circle", "red"), _det("circle", "red"), _det("circle", "blue")])
    assert r["satisfied"] == [True, False] and r["present"] == [True, False] and not r["all_present"]
    assert r["count_correct"] == [True, False] and r["extra_objects"] == 1 and r["accuracy"] == 0.5
    assert r["matched_boxes"] == [[[0.4, 0.4, 0.6, 0.6]] * 2, []]  # where each subject's strict matches are
    r = score(image, spec, detections=[_det("circle", "red"), _det("circle", "red"), _det("circle", "red"), _det("square", "blue")])
    assert r["all_present"] and r["count_correct"] == [False, True] and r["extra_objects"] == 1
    # Swapped colours: both shapes present, neither bound.
    r = score(image, spec_from_prompt("a red circle and a blue square"), detections=[_det("circle", "blue"), _det("square", "red")])
    assert r["present"] == [True, True] and r["colour_binding"] == [False, False] and r["colour_binding_rate"] == 0.0 and r["extra_objects"] == 0
    # Hungarian, not greedy: the colourless subject must leave the red circle to the red one.
    r = score(image, spec_from_prompt("a circle and a red circle"), detections=[_det("circle", "red"), _det("circle", "blue")])
    assert r["all_present"] and r["colour_binding"] == [None, True]
    # Low-confidence detections do not count.
    r = score(image, spec_from_prompt("a red star"), detections=[_det("star", "red", confidence=0.3)])
    assert not r["all_present"] and r["extra_objects"] == 0
    # Relations from box centres.
    left, right, low = (0.1, 0.4, 0.3, 0.6), (0.6, 0.4, 0.8, 0.6), (0.6, 0.75, 0.8, 0.95)
    spec = spec_from_prompt("a red circle to the left of a blue box")
    assert score(image, spec, detections=[_det("circle", "red", left), _det("square", "blue", right)])["relations_correct"] == [True]
    assert score(image, spec, detections=[_det("circle", "red", right), _det("square", "blue", left)])["relations_correct"] == [False]
    assert score(image, spec, detections=[_det("square", "blue", right)])["relations_correct"] == [False]
    assert relation_satisfied(right, low, "above") and relation_satisfied(low, right, "below") and not relation_satisfied(left, low, "above")
    assert relation_satisfied(left, (0.45, 0.4, 0.65, 0.6), "next to")
    assert not relation_satisfied(left, right, "next to") and not relation_satisfied((0.0, 0.0, 0.1, 0.1), (0.7, 0.7, 0.9, 0.9), "next to")


# ----------------------------------------------------------------------------- export


def test_export_round_trip_and_byte_identical(tmp_path):
    out = shapes.export(tmp_path / "a", n=5, resolution=32, seed=40)
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"{i:06d}.png" for i in range(5)]
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["file_name"] == "images/000000.png"
    info = json.loads((out / "dataset.json").read_text())
    assert info["n"] == 5 and info["resolution"] == 32 and info["vocabulary"] == vocabulary()
    for i, scene in enumerate(shapes.read_export(out)):
        again = render(40 + i, 32)
        assert np.array_equal(scene.image, again.image) and scene.caption == again.caption and scene.spec == again.spec
    shapes.export(tmp_path / "b", n=5, resolution=32, seed=40, progress=True)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    with pytest.raises(FileExistsError):
        shapes.export(out, n=1, resolution=32, seed=0)
    shapes.export(out, n=1, resolution=32, seed=0, overwrite=True)
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 1
    assert shapes.export(tmp_path / "empty", n=0, resolution=32, seed=0).joinpath("metadata.jsonl").read_text() == ""


@pytest.mark.parametrize(
    ("kwargs", "word"), [({"n": -1}, "n"), ({"resolution": 16}, "resolution"), ({"resolution": 600}, "resolution"), ({"seed": -3}, "seed")]
)
def test_export_rejects_bad_arguments(tmp_path, kwargs, word):
    args = {"n": 2, "resolution": 32, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=word) as info:
        shapes.export(tmp_path / "x", **args)
    assert "\n" not in str(info.value) and not (tmp_path / "x").exists()


def test_read_export_needs_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        next(shapes.read_export(tmp_path / "missing"))


def test_cli_exports(tmp_path):
    from attnsynth.cli import app

    result = CliRunner().invoke(app, ["toyworld", "shapes", "--n", "3", "--resolution", "32", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "cli" / "metadata.jsonl").read_text().splitlines()) == 3


def test_object_masks_cover_what_is_drawn(scenes64):
    ious = []
    for scene in scenes64[:20]:
        masks = shapes.object_masks(scene.spec.objects, 64)  # [K, 64, 64]
        assert masks.shape == (len(scene.spec.objects), 64, 64) and masks.min() >= 0 and masks.sum(0).max() <= 1 + 1e-5
        image = scene.image / 255.0
        drawn = image.max(-1) - image.min(-1) > 0.2  # saturated = some object
        covered = masks.sum(0) > 0.5
        ious.append((drawn & covered).sum() / (drawn | covered).sum())
        coarse = shapes.object_masks(scene.spec.objects, 16)  # same areas on a coarser grid
        np.testing.assert_allclose(coarse.sum((1, 2)) * 16, masks.sum((1, 2)), rtol=0.1, atol=2.0)
    assert np.mean(ious) > 0.85 and min(ious) > 0.6, ious
    with pytest.raises(ValueError, match="no boxes"):
        shapes.object_masks(shapes.spec_from_prompt("a red circle").objects, 16)
