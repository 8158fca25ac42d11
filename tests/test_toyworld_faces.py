"""Toy faces: determinism, geometry, label set, oracles (style error, consistency, transfer), export."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
from PIL import Image

from attnsynth.data.labelsets import CELEBAMASK_HQ, LabelSet
from attnsynth.toyworld import faces
from attnsynth.toyworld.faces_record import Illumination

RES = 64
SEEDS = range(10)
SKIN_GROUP = (1, 2, 8, 9, 17)  # skin, nose, ears, neck
HAIR = 13


def _relit(scene: faces.FaceScene, light: Illumination) -> faces.FaceScene:
    return faces.render_record(scene.record.with_illumination(light), scene.labels.shape[0], labels=scene.labels)


def _opposite(light: Illumination) -> Illumination:
    return dataclasses.replace(light, direction=light.direction + math.pi)


# ------------------------------------------------------------------ label set


def test_labelset_resolve_names_ids_presets():
    ls = CELEBAMASK_HQ
    assert ls.num_classes == 19 and ls.class_names[13] == "hair" and ls.class_names[18] == "cloth"
    assert ls.resolve("hair,skin") == (1, 2, 13)  # "skin" is the preset skin+nose
    assert ls.resolve("4,5") == ls.resolve("eyes") == ls.resolve("L_EYE, r_eye") == (4, 5)
    assert ls.resolve("mouth") == (10, 11, 12) and ls.resolve("10") == (10,)
    assert ls.resolve("brows,0") == (0, 6, 7)
    assert ls.class_id("mouth") == 10
    with pytest.raises(ValueError, match=r"'hairs'.*valid names: background, skin"):
        ls.resolve("eyes,hairs")
    with pytest.raises(ValueError, match="out of range"):
        ls.resolve("19")
    with pytest.raises(ValueError, match="empty"):
        ls.resolve("hair,")
    with pytest.raises(ValueError, match="flip pair"):
        LabelSet(name="bad", class_names=("a", "b"), flip_pairs=((0, 2),))


def test_flip_permutation_swaps_left_and_right_on_a_rendered_scene():
    perm = np.array(CELEBAMASK_HQ.flip_permutation())
    assert perm[4] == 5 and perm[5] == 4 and perm[8] == 9 and perm[13] == 13 and sorted(perm) == list(range(19))
    for seed in range(4):
        labels = faces.render(seed, RES).labels
        mirrored = labels[:, ::-1]
        flipped = perm[mirrored]
        # The mirrored right eye becomes the left eye, pixel for pixel, and vice versa.
        assert np.array_equal(flipped == 4, mirrored == 5) and np.array_equal(flipped == 5, mirrored == 4)
        assert (flipped == 4).any()
        # The convention (l_* on the image's left) still holds after flip + permutation.
        cols = np.arange(RES)[None, :]
        for left, right in ((4, 5), (6, 7)):
            for lab in (labels, flipped):
                assert (cols * (lab == left)).sum() / (lab == left).sum() < (cols * (lab == right)).sum() / (lab == right).sum()


# ------------------------------------------------------------------ rendering


def test_render_is_deterministic_and_seed_dependent():
    a, b, c = faces.render(7, RES), faces.render(7, RES), faces.render(8, RES)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.record == b.record
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.labels, c.labels)
    assert a.image.shape == (RES, RES, 3) and a.image.dtype == np.uint8 and a.labels.shape == (RES, RES)


def test_labels_in_range_and_all_classes_drawn():
    seen: set[int] = set()
    for seed in range(40):
        labels = faces.render(seed, RES).labels
        present = set(np.unique(labels).tolist())
        assert labels.max() < faces.NUM_CLASSES and len(present) >= 10
        seen |= present
    assert seen == set(range(faces.NUM_CLASSES))  # rare classes (glasses, hat, earring, necklace) included


def test_same_scene_at_every_resolution():
    # Pixel j at 32² and pixel 3j+1 at 96² share a centre: same scene ⇒ identical samples there.
    for seed in range(3):
        small, large = faces.render(seed, 32), faces.render(seed, 96)
        assert (small.labels == large.labels[1::3, 1::3]).mean() > 0.99
        assert np.abs(small.image.astype(int) - large.image[1::3, 1::3]).mean() < 0.5
    assert faces.render(0, 512).labels.shape == (512, 512)


@pytest.mark.parametrize("resolution", [31, 513, 0, 64.0, True])
def test_bad_resolution_is_a_one_line_value_error(resolution):
    with pytest.raises(ValueError, match="resolution") as info:
        faces.render(0, resolution)
    assert "\n" not in str(info.value)


def test_record_json_round_trip_and_re_render(tmp_path):
    scene = faces.render(3, RES)
    data = json.loads(json.dumps(scene.record.to_dict()))
    assert faces.FaceRecord.from_dict(data) == scene.record
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    again = faces.render_record(faces.load_record(path), RES)
    assert np.array_equal(again.image, scene.image) and np.array_equal(again.labels, scene.labels)
    with pytest.raises(FileNotFoundError):
        faces.load_record(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        faces.load_record(path)
    del data["styles"]["hair"]
    with pytest.raises(ValueError, match="hair"):
        faces.FaceRecord.from_dict(data)


# ------------------------------------------------------------------ oracles


def test_style_error_own_record_near_zero_other_record_far():
    for seed in SEEDS:
        scene, other = faces.render(seed, RES), faces.render(seed + 1000, RES)
        own = faces.style_error(scene.image, scene.labels, scene.record)
        far = faces.style_error(scene.image, scene.labels, other.record)
        assert own < 0.005
        assert far > max(20 * own, 0.05)


def test_style_error_ignores_illumination():
    strong = Illumination(direction=2.5, strength=0.6, falloff=0.4, center=(0.3, -0.4), gain=(1.15, 0.95, 0.8))
    for seed in range(6):
        scene = faces.render(seed, RES)
        for light in (faces.render(seed + 500, RES).record.illumination, strong):
            relit = _relit(scene, light)
            assert np.abs(relit.image.astype(int) - scene.image).mean() > 5  # the pixels really changed
            assert faces.style_error(relit.image, relit.labels, scene.record) < 0.006


def test_per_class_style_error_localises_a_changed_class():
    scene, donor = faces.render(4, RES), faces.render(1004, RES)
    edited = faces.render_record(scene.record.with_styles_from(donor.record, [HAIR]), RES, labels=scene.labels)
    errors = faces.per_class_style_error(edited.image, edited.labels, scene.record)
    assert errors[HAIR] > 0.1
    assert max(e for c, e in errors.items() if c != HAIR) < 0.02
    only_eyes = faces.per_class_style_error(edited.image, edited.labels, scene.record, classes="eyes")
    assert set(only_eyes) == {4, 5}
    assert faces.style_error(edited.image, edited.labels, scene.record, classes=[HAIR]) == pytest.approx(errors[HAIR])
    with pytest.raises(ValueError, match="covers"):
        faces.style_error(scene.image, scene.labels, scene.record, classes=[14] if 14 not in scene.labels else [3])


def test_global_consistency_drops_when_classes_are_relit():
    own, mixed = [], []
    for seed in SEEDS:
        scene = faces.render(seed, RES)
        light = dataclasses.replace(scene.record.illumination, strength=0.35)
        base = _relit(scene, light)
        against = _relit(scene, _opposite(light))
        composite = base.image.copy()
        moved = np.isin(scene.labels, SKIN_GROUP + (HAIR,))
        composite[moved] = against.image[moved]
        own.append(faces.global_consistency(base.image, scene.labels))
        mixed.append(faces.global_consistency(composite, scene.labels))
        assert 0.0 <= mixed[-1] <= own[-1] - 0.1 and own[-1] <= 1.0
    assert np.mean(own) > 0.9 and min(own) > 0.8
    assert np.mean(mixed) < 0.75


def test_transfer_accuracy_scores_each_class_against_the_right_source():
    for seed in range(5):
        original, reference = faces.render(seed, RES), faces.render(seed + 2000, RES)
        for spec in ("eyes", "hair", "mouth,background"):
            moved = set(CELEBAMASK_HQ.resolve(spec))
            done = faces.render_record(original.record.with_styles_from(reference.record, sorted(moved)), RES, labels=original.labels)
            assert faces.transfer_accuracy(done.image, done.labels, original.record, reference.record, spec) == 1.0
            # Nothing transferred: exactly the transferred classes are wrong.
            verdicts = faces.per_class_transfer(original.image, original.labels, original.record, reference.record, spec)
            assert {c for c, ok in verdicts.items() if not ok} == moved & set(verdicts)
            assert len(verdicts) >= 10
    with pytest.raises(ValueError, match="distinguishable"):
        scene = faces.render(0, RES)
        faces.transfer_accuracy(scene.image, scene.labels, scene.record, scene.record, "eyes")


def test_oracles_reject_bad_inputs():
    scene = faces.render(0, RES)
    with pytest.raises(ValueError, match="uint8"):
        faces.style_error(scene.image.astype(np.float32), scene.labels, scene.record)
    with pytest.raises(ValueError, match="does not match"):
        faces.global_consistency(scene.image, scene.labels[:-1])
    with pytest.raises(ValueError, match=r"label values"):
        faces.global_consistency(scene.image, np.full_like(scene.labels, 19))
    with pytest.raises(ValueError, match="out of range"):
        faces.style_error(scene.image, scene.labels, scene.record, classes=[25])


# ------------------------------------------------------------------ export


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_layout_round_trip_and_byte_identical(tmp_path):
    out = faces.export(tmp_path / "toy", n=6, resolution=32, seed=5, test_fraction=0.34)
    train = sorted(p.name for p in (out / "train" / "images").iterdir())
    test = sorted(p.name for p in (out / "test" / "images").iterdir())
    assert train == [f"00000{i}.png" for i in range(4)] and test == ["000004.png", "000005.png"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labelset"] == "celebamask_hq" and meta["class_names"] == list(faces.CLASS_NAMES)
    assert (meta["n"], meta["n_train"], meta["n_test"], meta["resolution"], meta["seed"]) == (6, 4, 2, 32, 5)
    for split, i in (("train", 2), ("test", 5)):
        scene = faces.render(5 + i, 32)
        label_png = Image.open(out / split / "labels" / f"{i:06d}.png")
        assert label_png.mode == "L"
        assert np.array_equal(np.asarray(label_png), scene.labels)
        assert np.array_equal(np.asarray(Image.open(out / split / "images" / f"{i:06d}.png").convert("RGB")), scene.image)
        assert faces.load_record(out / split / "records" / f"{i:06d}.json") == scene.record
    again = faces.export(tmp_path / "again", n=6, resolution=32, seed=5, test_fraction=0.34)
    assert _digest(out) == _digest(again)
    with pytest.raises(FileExistsError):
        faces.export(out, n=1, resolution=32, seed=0)
    faces.export(out, n=1, resolution=32, seed=0, test_fraction=0.0, overwrite=True)
    assert [p.name for p in (out / "train" / "images").iterdir()] == ["000000.png"]
    assert not any((out / "test" / "images").iterdir())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"n": -1}, "n"), ({"resolution": 16}, "resolution"), ({"test_fraction": 1.0}, "test_fraction"),
     ({"test_fraction": -0.1}, "test_fraction"), ({"seed": -3}, "seed")],
)
def test_export_bad_arguments(tmp_path, kwargs, name):
    args = {"n": 2, "resolution": 32, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name) as info:
        faces.export(tmp_path / "x", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_cli_writes_toy_faces(tmp_path):
    from typer.testing import CliRunner

    from attnsynth.cli import app

    result = CliRunner().invoke(app, ["toyworld", "faces", "--n", "3", "--resolution", "32", "--seed", "2", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert _digest(tmp_path / "cli") == _digest(faces.export(tmp_path / "lib", n=3, resolution=32, seed=2))
