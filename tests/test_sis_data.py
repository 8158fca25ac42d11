"""Dataset loaders: layouts, sample contract, one-line errors naming the file, class-aware flip."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnsynth.data import load_dataset
from attnsynth.data.ade20k import ADE20K
from attnsynth.data.labelsets import CELEBAMASK_HQ
from attnsynth.data.transforms import PairTransform, hflip


def _write_pair(images_dir, labels_dir, stem, size=(12, 16), top=18, suffix=".png", seed=0):
    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images_dir / f"{stem}{suffix}")
    Image.fromarray(rng.integers(0, top + 1, size, dtype=np.uint8)).save(labels_dir / f"{stem}.png")


def _celeb(tmp_path, n=3, split="train"):
    for i in range(n):
        _write_pair(tmp_path / split / "images", tmp_path / split / "labels", f"{i:05d}", seed=i, suffix=".jpg" if i % 2 else ".png")
    return tmp_path


def test_celebamask_layout_contract(tmp_path):
    ds = load_dataset(_celeb(tmp_path), split="train", resolution=(8, 8))
    assert len(ds) == 3 and ds.label_set is CELEBAMASK_HQ
    sample = ds[1]
    assert sample["image"].shape == (3, 8, 8) and sample["image"].dtype == torch.float32
    assert -1.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["labels"].shape == (8, 8) and sample["labels"].dtype == torch.long
    assert sample["name"] == "00001"


def test_resize_keeps_label_values_nearest(tmp_path):
    labels = np.zeros((12, 16), np.uint8)
    labels[:, 8:] = 13
    _write_pair(tmp_path / "images", tmp_path / "labels", "a")
    Image.fromarray(labels).save(tmp_path / "labels" / "a.png")
    (tmp_path / "classes.json").write_text(json.dumps({"names": CELEBAMASK_HQ.class_names}))
    sample = load_dataset(tmp_path, resolution=(6, 8))[0]
    assert set(sample["labels"].unique().tolist()) == {0, 13}  # no interpolated ids
    assert (sample["labels"][:, :4] == 0).all() and (sample["labels"][:, 4:] == 13).all()


def test_label_out_of_range_names_file_value_and_range(tmp_path):
    root = _celeb(tmp_path)
    bad = root / "train" / "labels" / "00002.png"
    Image.fromarray(np.full((12, 16), 42, np.uint8)).save(bad)
    ds = load_dataset(root, resolution=(8, 8))
    with pytest.raises(ValueError) as info:
        ds[2]
    message = str(info.value)
    assert str(bad) in message and "42" in message and "0..18" in message and "\n" not in message


def test_size_mismatch_names_both_files(tmp_path):
    root = _celeb(tmp_path)
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(root / "train" / "labels" / "00000.png")
    with pytest.raises(ValueError, match=r"00000\.png.*10×16.*12×16"):
        load_dataset(root, resolution=(8, 8))[0]


def test_unpaired_files_are_named(tmp_path):
    root = _celeb(tmp_path)
    (root / "train" / "labels" / "00001.png").unlink()
    _write_pair(tmp_path / "x", root / "train" / "labels", "orphan")
    with pytest.raises(ValueError) as info:
        load_dataset(root, resolution=(8, 8))
    assert "00001.jpg" in str(info.value) and "orphan.png" in str(info.value)


def test_unreadable_image_is_named(tmp_path):
    root = _celeb(tmp_path)
    broken = root / "train" / "images" / "00000.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"cannot read image {broken}"):
        load_dataset(root, resolution=(8, 8))[0]


def test_rgb_label_map_is_rejected(tmp_path):
    root = _celeb(tmp_path)
    rgb = root / "train" / "labels" / "00000.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError, match="single-channel"):
        load_dataset(root, resolution=(8, 8))[0]


def test_generic_folder_reads_classes_json_or_infers(tmp_path):
    _write_pair(tmp_path / "images", tmp_path / "labels", "a", top=3)
    inferred = load_dataset(tmp_path, resolution=(8, 8))
    assert inferred.num_classes == 4 and inferred.label_set.class_names[0] == "class_0"
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["bg", "left", "right", "x", "y"], "flip_pairs": [[1, 2]], "presets": {"sides": [1, 2]}}))
    described = load_dataset(tmp_path, resolution=(8, 8))
    assert described.num_classes == 5 and described.label_set.flip_permutation() == [0, 2, 1, 3, 4]
    assert described.label_set.resolve("sides") == (1, 2)


def test_ade20k_layout(tmp_path):
    images = tmp_path / "ADEChallengeData2016" / "images" / "training"
    labels = tmp_path / "ADEChallengeData2016" / "annotations" / "training"
    _write_pair(images, labels, "ADE_train_00000001", top=150, suffix=".jpg")
    _write_pair(tmp_path / "ADEChallengeData2016" / "images" / "validation", tmp_path / "ADEChallengeData2016" / "annotations" / "validation", "ADE_val_00000001", suffix=".jpg")
    train = load_dataset(tmp_path, split="train", resolution=(8, 8))
    assert train.label_set is ADE20K and train.num_classes == 151 and len(train) == 1
    assert train.name(0) == "ADE_train_00000001"
    assert load_dataset(tmp_path, split="val", resolution=(8, 8)).name(0) == "ADE_val_00000001"


def test_unknown_layout_and_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_dataset(tmp_path / "nope", resolution=(8, 8))
    with pytest.raises(ValueError, match="no known layout"):
        load_dataset(tmp_path, resolution=(8, 8))


def test_flip_swaps_left_and_right_classes():
    labels = np.zeros((4, 6), np.int64)
    labels[1, 0] = 4  # l_eye on the left edge
    labels[1, 5] = 5  # r_eye on the right edge
    labels[2, 1] = 13  # hair has no partner
    pixels = np.zeros((4, 6, 3), np.uint8)
    _, flipped = hflip(pixels, labels, CELEBAMASK_HQ.flip_permutation())
    assert flipped[1, 5] == 5 and flipped[1, 0] == 4  # positions mirrored AND classes swapped
    assert flipped[2, 4] == 13
    _, plain = hflip(pixels, labels, None)
    assert plain[1, 5] == 4  # without the permutation the left eye would end up on the right


def test_augmentation_is_a_function_of_the_seed_and_flips_sometimes(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    labels[:, :8] = 4  # left half l_eye, right half r_eye
    labels[:, 8:] = 5
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, 8:] = 255  # the image tells whether a sample was flipped
    image = Image.fromarray(pixels)
    transform = PairTransform(resolution=(14, 14), augment=True, resize_ratio=16 / 14, flip_permutation=tuple(CELEBAMASK_HQ.flip_permutation()))
    pairs = [transform(image, Image.fromarray(labels), torch.Generator().manual_seed(s)) for s in range(16)]
    again = [transform(image, Image.fromarray(labels), torch.Generator().manual_seed(s)) for s in range(16)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(pairs, again))
    flipped = [float(img[0, 0, 0]) > 0 for img, _ in pairs]  # white on the left → mirrored
    assert any(flipped) and not all(flipped)
    outs = [lab for _, lab in pairs]
    # a flip mirrors AND relabels, so the left column always stays l_eye (4)
    assert all(int(o[0, 0]) == 4 and int(o[0, -1]) == 5 for o in outs)
    assert len({tuple(o[0].tolist()) for o in outs}) > 1  # the crop offset varies with the seed


def test_toy_faces_export_keeps_the_edit_presets_of_its_registered_label_set(tmp_path):
    from attnsynth.toyworld import faces

    faces.export(tmp_path / "toy", n=4, resolution=32, seed=0, test_fraction=0.5)
    ds = load_dataset(tmp_path / "toy", split="train", resolution=(16, 16))
    assert ds.label_set.class_names == CELEBAMASK_HQ.class_names
    assert ds.label_set.resolve("eyes") == ds.label_set.resolve("l_eye,r_eye")  # preset from celebamask_hq
    assert set(ds.label_set.resolve("mouth")) == {10, 11, 12}
