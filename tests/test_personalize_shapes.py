"""The novel shape (heart) of the shapes world: outside the training captions, drawn, parsed and found by the oracle.

The pinned digests below were recorded from the code *before* the heart was added (commit
29386f6): renders, sampled captions and oracle detections of the training world are unchanged.
"""

import hashlib
import json

import numpy as np
import pytest

from attnsynth.toyworld import shapes
from attnsynth.toyworld.shapes import ALL_SHAPES, COLOURS, NOVEL_SHAPES, SHAPES, ObjectSpec, detect, render, render_objects, score, spec_from_prompt
from attnsynth.toyworld.shapes_grammar import sample_caption, shape_words, vocabulary

RENDER_DIGEST = "6cab1550a871a28cabd6d0cd90ffc4835b76cf6a507b84036cf5ae5f0bb68976"  # seeds 0..63 at 32²: pixels + captions
CAPTION_DIGEST = "d48aaedc3beca8168b1a37575954cdc00a245509c3cf02144574b920ab66b91d"  # sample_caption, rng seeds 0..1999
DETECT_DIGEST = "5fc08994009bf6e4e5bcc196173dbdcd3b1d0a581496993146ebe9155e81a5a2"  # detect() on seeds 0..23 at 64²


def test_novel_shape_is_outside_the_training_world():
    assert NOVEL_SHAPES == ("heart",) and ALL_SHAPES == SHAPES + NOVEL_SHAPES
    assert "heart" not in SHAPES and "heart" not in shapes.SYNONYMS
    assert not {"heart", "hearts"} & set(vocabulary())  # training tokenizers never get the word


def test_training_captions_never_contain_the_novel_shape():
    for seed in range(3000):
        caption, spec = sample_caption(np.random.Generator(np.random.PCG64(seed)))
        assert "heart" not in caption and all(o.shape in SHAPES for o in spec.objects)
    for seed in range(300):
        assert "heart" not in render(seed, 32).caption


def test_training_renders_captions_and_detections_are_unchanged():
    digest = hashlib.sha256()
    for seed in range(64):
        scene = render(seed, 32)
        digest.update(scene.image.tobytes())
        digest.update(scene.caption.encode())
    assert digest.hexdigest() == RENDER_DIGEST
    digest = hashlib.sha256()
    for seed in range(2000):
        digest.update(sample_caption(np.random.Generator(np.random.PCG64(seed)))[0].encode())
    assert digest.hexdigest() == CAPTION_DIGEST
    digest = hashlib.sha256()
    for seed in range(24):
        digest.update(json.dumps([d.to_dict() for d in detect(render(seed, 64).image)], sort_keys=True).encode())
    assert digest.hexdigest() == DETECT_DIGEST


def test_prompts_with_the_novel_shape_parse():
    spec = spec_from_prompt("a red heart and two blue hearts")
    assert [(o.shape, o.colour, o.count) for o in spec.objects] == [("heart", "red", 1), ("heart", "blue", 2)]
    assert shape_words("heart") == ("heart",) and shape_words("circle")[0] == "circle"
    with pytest.raises(ValueError, match="shape must be one of"):
        shape_words("hexagon")


def test_render_objects_draws_given_subjects_deterministically():
    objects = [ObjectSpec("heart", "red"), ObjectSpec("circle", "blue")]
    a, b = render_objects(objects, 5, 64), render_objects(objects, 5, 64)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert "heart" in a.caption and [o.shape for o in a.spec.objects] == ["heart", "circle"]
    assert all(len(o.boxes) == 1 for o in a.spec.objects)
    with pytest.raises(ValueError, match="at least one"):
        render_objects([], 0)


def test_oracle_finds_hearts_beside_known_shapes():
    colours = list(COLOURS)
    correct = 0
    for seed in range(60):
        objects = [ObjectSpec("heart", colours[seed % 8]), ObjectSpec(SHAPES[seed % len(SHAPES)], colours[(seed + 3) % 8])]
        scene = render_objects(objects, seed, 64)
        result = score(scene.image, scene.spec.without_boxes())
        correct += result["all_present"] and result["extra_objects"] == 0
    assert correct >= 57  # 60/60 when recorded


def test_oracle_does_not_see_hearts_in_training_scenes():
    found = [d.shape for seed in range(80) for d in detect(render(seed, 64).image, shapes=ALL_SHAPES)]
    assert len(found) > 150 and found.count("heart") <= 1  # 0 of 523 detections on 200 scenes when recorded


def test_oracle_tells_a_heart_from_a_circle():
    heart = render_objects([ObjectSpec("heart", "red")], 3, 64)
    circle = render_objects([ObjectSpec("circle", "red")], 3, 64)
    spec = spec_from_prompt("a red heart")
    assert score(heart.image, spec)["all_present"]
    assert not score(circle.image, spec)["all_present"]


def test_detect_rejects_unknown_candidate_shapes():
    with pytest.raises(ValueError, match="shapes must be"):
        detect(render(0, 32).image, shapes=["hexagon"])
