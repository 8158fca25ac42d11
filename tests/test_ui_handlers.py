"""The web app's handlers as plain functions (no server, no gradio): edits, uploads, painting, T2I, limits.

They run on the embedded defaults (the shipped CA²-SIS toy-faces run and the shapes-world T2I
model) through the library's loaders, so they hold for whatever checkpoint ships there; what a
handler returns is compared with the library function it calls.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attnsynth.sis import edits
from attnsynth.sis.demo_page import TOY_CHECKPOINT
from attnsynth.ui import handlers, limits
from attnsynth.utils.images import colorize_labels, from_uint8, to_uint8


@pytest.fixture(scope="module")
def sis():
    return handlers.load_sis(TOY_CHECKPOINT)


@pytest.fixture(scope="module")
def t2i():
    return handlers.load_t2i()


def _save(path, array, mode=None):
    Image.fromarray(np.asarray(array), mode=mode).save(path)
    return str(path)


def test_sis_transfer_is_the_library_edit_and_scored_by_the_oracle(sis):
    source, reference = handlers.gallery_face(0, sis.resolution), handlers.gallery_face(1, sis.resolution)
    out = handlers.sis_edit(sis, source, reference, mode="transfer styles", classes=["hair", "eyes"])
    expected = edits.transfer(sis.model, from_uint8(source.image)[None], torch.from_numpy(source.labels.astype(np.int64))[None],
                              from_uint8(reference.image)[None], torch.from_numpy(reference.labels.astype(np.int64))[None],
                              classes="hair,eyes", label_set=sis.label_set)
    np.testing.assert_array_equal(out.image, to_uint8(expected.images))
    assert out.caption.startswith("oracle: transfer accuracy")
    present = set(np.unique(source.labels).tolist())
    if sis.model.config.arch == "ca2sis":
        assert [name.split(" (p")[0] for _, name in out.overlays] == [sis.label_set.class_names[c] for c in sorted(present)]
        assert out.overlays[0][0].shape == source.image.shape
    assert out.spade_image is None and out.spade_caption is None


@pytest.mark.parametrize("mode", ["swap shape", "interpolate shape", "interpolate style", "reconstruct"])
def test_every_sis_mode_runs(sis, mode):
    source, reference = handlers.gallery_face(2, sis.resolution), handlers.gallery_face(3, sis.resolution)
    out = handlers.sis_edit(sis, source, reference, mode=mode, classes=["hair"], alpha=0.25)
    assert out.image.shape == source.image.shape and out.image.std() > 0
    assert out.caption.startswith("oracle:")


def test_interpolate_at_alpha_one_equals_the_transfer(sis):
    source, reference = handlers.gallery_face(0, sis.resolution), handlers.gallery_face(4, sis.resolution)
    blended = handlers.sis_edit(sis, source, reference, mode="interpolate style", classes=["skin"], alpha=1.0)
    swapped = handlers.sis_edit(sis, source, reference, mode="transfer styles", classes=["skin"])
    assert np.abs(blended.image.astype(int) - swapped.image.astype(int)).max() <= 1


def test_random_styles_follow_the_checkpoint(sis):
    source = handlers.gallery_face(0, sis.resolution)
    if sis.mapping is None:
        with pytest.raises(ValueError, match="mapping network"):
            handlers.sis_edit(sis, source, None, mode="random styles", seed=3)
    else:
        out = handlers.sis_edit(sis, source, None, mode="random styles", seed=3)
        assert out.image.shape[1] == handlers.RANDOM_STYLE_SAMPLES * source.image.shape[1]


def test_spade_side_by_side(sis, tmp_path):
    """A SPADE run loads beside the CA²-SIS run (by the same loader) and renders every edit next to it."""
    from attnsynth.sis.configs import get_config
    from attnsynth.sis.model import build_model

    config = get_config("spade-small", num_classes=sis.model.config.num_classes, resolution=sis.resolution)
    build_model(config).save_pretrained(tmp_path / "spade")
    both = handlers.load_sis(TOY_CHECKPOINT, tmp_path / "spade")
    assert both.spade.config.arch == "spade" and both.spade_name == "spade"
    source, reference = handlers.gallery_face(0, sis.resolution), handlers.gallery_face(1, sis.resolution)
    out = handlers.sis_edit(both, source, reference, mode="transfer styles", classes=["hair"])
    expected = edits.transfer(both.spade, from_uint8(source.image)[None], torch.from_numpy(source.labels.astype(np.int64))[None],
                              from_uint8(reference.image)[None], torch.from_numpy(reference.labels.astype(np.int64))[None],
                              classes="hair", label_set=sis.label_set)
    np.testing.assert_array_equal(out.spade_image, to_uint8(expected.images))
    assert out.spade_caption.startswith("oracle:")
    np.testing.assert_array_equal(out.image, handlers.sis_edit(sis, source, reference, mode="transfer styles", classes=["hair"]).image)
    config_other = get_config("spade-small", num_classes=7, resolution=sis.resolution)
    build_model(config_other).save_pretrained(tmp_path / "spade7")
    with pytest.raises(ValueError, match="must share the label set"):
        handlers.load_sis(TOY_CHECKPOINT, tmp_path / "spade7")


def test_toy_faces_only_for_a_model_of_their_label_set(sis):
    from attnsynth.data.labelsets import LabelSet

    assert handlers.faces_fit(sis)  # the shipped run is trained on toy faces
    other = LabelSet(name="other", class_names=tuple(f"c{i}" for i in range(sis.model.config.num_classes)))
    assert not handlers.faces_fit(handlers.SISModels(model=sis.model, label_set=other))


def test_bad_sis_requests_are_one_line_errors(sis):
    source = handlers.gallery_face(0, sis.resolution)
    with pytest.raises(ValueError, match="needs at least one class"):
        handlers.sis_edit(sis, source, source, mode="swap shape", classes=[])
    with pytest.raises(ValueError, match="unknown class or preset 'wings'"):
        handlers.sis_edit(sis, source, source, mode="transfer styles", classes=["wings"])
    with pytest.raises(ValueError, match="reference: choose a toy face"):
        handlers.sis_edit(sis, source, None, mode="transfer styles")
    with pytest.raises(ValueError, match="alpha must be a number in"):
        handlers.sis_edit(sis, source, source, mode="interpolate shape", classes=["hair"], alpha=2.0)


def test_uploads_are_checked_before_decoding(sis, tmp_path):
    h, w = sis.resolution
    face = handlers.gallery_face(5, sis.resolution)
    image, mask = _save(tmp_path / "a.png", face.image), _save(tmp_path / "a_labels.png", face.labels, "L")
    picture = handlers.read_uploaded_pair(image, mask, resolution=sis.resolution, num_classes=19, upload_root=tmp_path)
    np.testing.assert_array_equal(picture.labels, face.labels)
    assert picture.record is None  # uploads have no ground truth: the oracle says so
    out = handlers.sis_edit(sis, picture, picture, mode="reconstruct")
    assert out.caption.startswith("oracle: only for toy faces")

    def refused(match, image_path, mask_path, root=tmp_path):
        with pytest.raises(ValueError, match=match):
            handlers.read_uploaded_pair(image_path, mask_path, resolution=sis.resolution, num_classes=19, upload_root=root)

    bad = face.labels.copy()
    bad[0, 0] = 19
    refused("contains value 19; valid class ids are 0..18", image, _save(tmp_path / "bad.png", bad, "L"))
    refused("mode RGB", image, _save(tmp_path / "rgb.png", colorize_labels(face.labels, 19)))
    small = np.asarray(Image.fromarray(face.labels).resize((w // 2, h // 2), Image.NEAREST))
    refused("they must match", image, _save(tmp_path / "small.png", small, "L"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    refused("not a readable image", str(broken), mask)
    refused("only files uploaded through the app", image, mask, root=tmp_path / "uploads")
    refused("no file was uploaded", image, None)
    huge = tmp_path / "bomb.png"
    Image.new("1", (8192, 8192)).save(huge)  # ~1 kB on disk, 67 M pixels decoded
    assert huge.stat().st_size < limits.MAX_UPLOAD_BYTES
    refused("decompression bomb refused", str(huge), mask)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (limits.MAX_UPLOAD_BYTES + 1))
    refused("too large", str(big), mask)


def test_painted_canvas_snaps_to_the_nearest_class():
    labels = np.zeros((8, 8), np.uint8)
    labels[2:6, 2:6] = 13
    canvas = handlers.labels_to_canvas(labels, 19, scale=4).astype(np.int32)
    canvas[0:4, 0:4] += 9  # an anti-aliased brush edge: near the background colour, not equal to it
    canvas[8:24, 8:24] = np.clip(canvas[8:24, 8:24] - 7, 0, 255)  # near hair's colour
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(handlers.canvas_to_labels(canvas, 19, (8, 8)), labels)
    rgba = np.concatenate([canvas, np.full((32, 32, 1), 255, np.uint8)], axis=2)
    rgba[8:24, 8:24, 3] = 0  # erased → background
    assert handlers.canvas_to_labels(rgba, 19, (8, 8)).max() == 0
    with pytest.raises(ValueError, match="RGB"):
        handlers.canvas_to_labels(np.zeros((4, 4)), 19, (4, 4))
    png = handlers.labels_png_bytes(labels)
    import io

    with Image.open(io.BytesIO(png)) as handle:
        assert handle.mode == "L"
        np.testing.assert_array_equal(np.asarray(handle), labels)


def test_t2i_generate_guided_and_unguided_of_one_seed(t2i):
    seen = []
    out = handlers.t2i_generate(t2i, prompt="a red circle and a blue square", subjects="circle,square", method="ait2i",
                                steps=6, guided_steps=3, seed=1, progress=lambda fraction, text: seen.append(fraction))
    plain = handlers.t2i_generate(t2i, prompt="a red circle and a blue square", subjects="circle,square", method="none",
                                  steps=6, seed=1)
    np.testing.assert_array_equal(out.unguided, plain.unguided)  # the unguided image is the method-none image
    assert plain.guided is None and out.guided.shape == out.unguided.shape
    assert not np.array_equal(out.guided, out.unguided)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) == 12
    assert out.attention is not None and out.attention.shape[0] > plain.attention.shape[0]  # more rows: two runs
    assert out.groups.splitlines() == ["circle ← tokens [circle]", "square ← tokens [square]"]
    assert t2i.shapes_oracle and out.guided_caption.startswith("oracle: ")


def test_t2i_layout_draws_boxes_and_recommended_settings(t2i):
    preset = handlers.recommended(t2i, "ait2i")
    assert preset["steps"] == int(t2i.defaults.get("num_inference_steps", 50))
    out = handlers.t2i_generate(t2i, prompt="a red circle and a blue square", subjects="circle,square", method="layout",
                                steps=4, guided_steps=2, boxes="circle=0,0,0.5,1;square=0.5,0,1,1")
    assert out.guided.shape[0] == 4 * out.unguided.shape[0] and "boxes drawn" in out.guided_caption


def test_bad_t2i_requests_are_one_line_errors(t2i):
    with pytest.raises(ValueError, match="not in the prompt|not found"):
        handlers.t2i_generate(t2i, prompt="a red circle", subjects="elephant", method="ait2i", steps=2)
    with pytest.raises(ValueError, match="prompt has 501 characters"):
        handlers.t2i_generate(t2i, prompt="a" * 501, method="none", steps=2)
    with pytest.raises(ValueError, match="prompt is empty"):
        handlers.t2i_generate(t2i, prompt="  ", method="none", steps=2)
    with pytest.raises(ValueError, match="method 'magic' is unknown"):
        handlers.t2i_generate(t2i, prompt="a red circle", method="magic")
    with pytest.raises(ValueError, match="steps must be an integer"):
        handlers.t2i_generate(t2i, prompt="a red circle", method="none", steps=10_000)
    with pytest.raises(ValueError, match="boxes"):
        handlers.t2i_generate(t2i, prompt="a red circle", subjects="circle", method="layout", steps=2, boxes="")
    long_prompt = " ".join(["a red circle and a blue square"] * 12)  # within the character cap, over the tokenizer's
    with pytest.raises(ValueError, match="prompt"):
        handlers.t2i_generate(t2i, prompt=long_prompt, subjects="circle", method="ait2i", steps=2)
    assert handlers.shapes_caption(t2i, "a photo of a cat", np.zeros((64, 64, 3), np.uint8)).startswith("oracle: prompt outside")


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_any_sd_or_sdxl_directory_works(tmp_path, family):
    """`--t2i-model DIR`: a diffusers SD / SDXL directory loads through attnsynth.t2i.load_pipeline and generates."""
    from attnsynth.t2i.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

    (tiny_sd_pipeline if family == "sd" else tiny_sdxl_pipeline)(seed=0).save_pretrained(tmp_path / family)
    model = handlers.load_t2i(tmp_path / family)
    assert not model.shapes_oracle and model.name == family
    assert ("XL" in type(model.pipe).__name__) == (family == "sdxl")
    out = handlers.t2i_generate(model, prompt="a cat and a dog", subjects="cat,dog", method="ait2i", steps=2, guided_steps=1,
                                step_size=20.0)
    assert out.guided.shape == out.unguided.shape and out.attention is not None
    assert out.guided_caption == "oracle: only for the shapes-world model"


def test_random_styles_with_a_mapping_network(sis, tmp_path):
    """A run with RUN/mapping.safetensors gets random styles: the library's seeded samples, side by side."""
    import shutil

    from attnsynth.sis.checkpoint import MAPPING_WEIGHTS
    from attnsynth.sis.mapping import MappingNetwork
    from attnsynth.sis.model import save_safetensors

    run = tmp_path / "run"
    shutil.copytree(TOY_CHECKPOINT, run)
    if not (run / MAPPING_WEIGHTS).is_file():
        save_safetensors(MappingNetwork(sis.model.config), run / MAPPING_WEIGHTS)
    models = handlers.load_sis(run)
    source = handlers.gallery_face(0, models.resolution)
    out = handlers.sis_edit(models, source, None, mode="random styles", seed=3)
    expected = edits.sample(models.model, models.mapping, torch.from_numpy(source.labels.astype(np.int64))[None],
                            n=handlers.RANDOM_STYLE_SAMPLES, seed=3)
    np.testing.assert_array_equal(out.image, np.concatenate([to_uint8(image) for image in expected.images], axis=1))
    assert out.caption.startswith("oracle: global consistency")
