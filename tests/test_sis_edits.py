"""Edits as token algebra (identities that must hold for any weights) and the edit CLI commands."""


import numpy as np
import pytest
import torch
from PIL import Image

from attnsynth.data.labelsets import CELEBAMASK_HQ
from attnsynth.sis import edits
from attnsynth.sis.configs import get_config
from attnsynth.sis.mapping import MappingNetwork
from attnsynth.sis.model import build_model, labels_to_onehot
from attnsynth.toyworld import faces
from cli_runner import run_cli


@pytest.fixture(scope="module")
def model():
    """A random small model; its zero-initialised output projections are perturbed so styles reach the image."""
    torch.manual_seed(0)
    model = build_model(get_config("small", num_classes=19, resolution=32)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


def _face(seed):
    scene = faces.render(seed, 32)
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 127.5 - 1
    return image[None], torch.from_numpy(scene.labels.astype(np.int64))[None]


@pytest.fixture(scope="module")
def pair():
    return _face(0), _face(1)


def test_reconstruct_is_the_models_forward_and_returns_attention(model, pair):
    (image, labels), _ = pair
    result = edits.reconstruct(model, image, labels, return_attention=True)
    with torch.no_grad():
        expected = model(image, labels_to_onehot(labels, 19))
    assert torch.equal(result.images, expected)
    assert len(result.attention) == len(model.config.stage_sizes)
    assert result.attention[-1].shape == (1, 19, 32, 32)


def test_global_transfer_from_self_equals_reconstruct(model, pair):
    (image, labels), _ = pair
    assert torch.equal(edits.transfer(model, image, labels, image, labels).images, edits.reconstruct(model, image, labels).images)


def test_class_transfer_changes_only_that_style_token(model, pair):
    (image, labels), (ref, ref_labels) = pair
    own = edits.reconstruct(model, image, labels)
    other = edits.reconstruct(model, ref, ref_labels)
    result = edits.transfer(model, image, labels, ref, ref_labels, classes="hair", label_set=CELEBAMASK_HQ)
    changed = (result.style != own.style).any(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [13]
    assert torch.equal(result.style[0, 13], other.style[0, 13])
    assert torch.equal(result.shape, own.shape)  # the shape stays the image's own
    assert not torch.equal(result.images, own.images)
    preset = edits.transfer(model, image, labels, ref, ref_labels, classes="eyes", label_set=CELEBAMASK_HQ)
    assert (preset.style != own.style).any(dim=-1)[0].nonzero().flatten().tolist() == [4, 5]
    by_id = edits.transfer(model, image, labels, ref, ref_labels, classes="4,5", label_set=CELEBAMASK_HQ)
    assert torch.equal(by_id.images, preset.images)


def test_swap_shape_with_self_is_identity_and_with_donor_changes_one_token(model, pair):
    (image, labels), (_, donor) = pair
    own = edits.reconstruct(model, image, labels)
    assert torch.equal(edits.swap_shape(model, image, labels, labels, classes="hair", label_set=CELEBAMASK_HQ).images, own.images)
    swapped = edits.swap_shape(model, image, labels, donor, classes="hair", label_set=CELEBAMASK_HQ)
    hair_token = edits.shape_token_index(model, 13)  # 12: the background (class 0) has no shape token in this config
    assert hair_token == model.mask_embedder.kept_classes.index(13)
    assert (swapped.shape != own.shape).any(dim=-1)[0].nonzero().flatten().tolist() == [hair_token]
    assert torch.equal(swapped.style, own.style)


def test_shape_token_swap_equals_swapping_the_mask_channel(model, pair):
    """The mask embedder is linear, so swapping a class's token = embedding the mask with that channel swapped."""
    (image, labels), (_, donor) = pair
    swapped = edits.swap_shape(model, image, labels, donor, classes="hair", label_set=CELEBAMASK_HQ)
    onehot, donor_onehot = labels_to_onehot(labels, 19), labels_to_onehot(donor, 19)
    mixed = onehot.clone()
    mixed[:, 13] = donor_onehot[:, 13]
    with torch.no_grad():
        torch.testing.assert_close(swapped.shape, model.embed_shape(mixed), rtol=1e-5, atol=1e-6)


def test_interpolation_endpoints_equal_the_inputs_results(model, pair):
    (image, labels), (other, other_labels) = pair
    own = edits.reconstruct(model, image, labels).images
    shape = edits.interpolate(model, image, labels, None, other_labels, what="shape", alpha=[0.0, 0.5, 1.0])
    assert shape.images.shape[0] == 3
    torch.testing.assert_close(shape.images[0:1], own, rtol=0, atol=1e-5)
    with torch.no_grad():
        own_style = model.encode_style(image, labels_to_onehot(labels, 19))
        other_shape = model.decode(model.embed_shape(labels_to_onehot(other_labels, 19)), own_style)
    torch.testing.assert_close(shape.images[2:3], other_shape, rtol=0, atol=1e-5)
    style = edits.interpolate(model, image, labels, other, other_labels, what="style", alpha=[0.0, 1.0])
    torch.testing.assert_close(style.images[0:1], own, rtol=0, atol=1e-5)
    torch.testing.assert_close(style.images[1:2], edits.transfer(model, image, labels, other, other_labels).images, rtol=0, atol=1e-5)
    half = edits.interpolate(model, image, labels, other, other_labels, what="style", alpha=0.5, classes="skin", label_set=CELEBAMASK_HQ)
    assert (half.style != own_style).any(dim=-1)[0].nonzero().flatten().tolist() == [1, 2]  # skin preset = skin + nose


def test_sample_is_seeded_and_zeroes_absent_classes(model, pair):
    (_, labels), _ = pair
    torch.manual_seed(1)
    mapping = MappingNetwork(model.config).eval()
    a = edits.sample(model, mapping, labels, n=3, seed=5)
    b = edits.sample(model, mapping, labels, n=3, seed=5)
    c = edits.sample(model, mapping, labels, n=3, seed=6)
    assert a.images.shape == (3, 3, 32, 32) and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert not torch.equal(a.images[0], a.images[1])
    absent = [k for k in range(19) if not (labels == k).any()]
    assert absent and (a.style[:, absent] == 0).all()


def test_bad_class_selection_is_a_one_line_error(model, pair):
    (image, labels), (ref, ref_labels) = pair
    with pytest.raises(ValueError, match="moustache"):
        edits.transfer(model, image, labels, ref, ref_labels, classes="moustache", label_set=CELEBAMASK_HQ)
    with pytest.raises(ValueError, match="out of range"):
        edits.swap_shape(model, image, labels, ref_labels, classes="40", label_set=CELEBAMASK_HQ)
    with pytest.raises(ValueError, match="'shape' or 'style'"):
        edits.interpolate(model, image, labels, ref, ref_labels, what="colour")


# ---- CLI on a tiny checkpoint trained for 2 steps ------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from attnsynth.sis.train_config import TrainConfig
    from attnsynth.sis.trainer import train

    root = tmp_path_factory.mktemp("cli")
    train(TrainConfig(data="toy-faces", out=str(root / "run"), resolution=(32, 32), steps=2, batch_size=2, toy_n=4, sample_every=0, checkpoint_every=0, log_every=1))
    paths = {"run": root / "run"}
    for k in (0, 1):
        scene = faces.render(k, 32)
        Image.fromarray(scene.image).save(root / f"img{k}.png")
        Image.fromarray(scene.labels).save(root / f"mask{k}.png")
        paths[f"img{k}"], paths[f"mask{k}"] = root / f"img{k}.png", root / f"mask{k}.png"
    Image.fromarray(np.full((32, 32), 77, np.uint8)).save(root / "bad_values.png")
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(root / "small_mask.png")
    (root / "broken.png").write_bytes(b"\x89PNG garbage")
    for name in ("bad_values", "small_mask", "broken"):
        paths[name] = root / f"{name}.png"
    paths["root"] = root
    return paths


def _cli(capsys, monkeypatch, *args):
    """Run ``attnsynth sis ARGS`` in-process through the console entry point → (exit code, stderr)."""
    code, printed = run_cli(capsys, monkeypatch, "sis", *args)
    return code, printed.err


def test_cli_edit_commands_write_pngs(files, tmp_path):
    from attnsynth.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    base = ["--checkpoint", files["run"], "--image", files["img0"], "--mask", files["mask0"]]
    commands = {
        "rec.png": ["reconstruct", *base, "--save-attention", tmp_path / "att"],
        "tr.png": ["transfer", *base, "--reference", files["img1"], "--reference-mask", files["mask1"], "--classes", "hair,4"],
        "sw.png": ["swap-shape", *base, "--donor-mask", files["mask1"], "--classes", "hair"],
        "in.png": ["interpolate", *base, "--other-mask", files["mask1"], "--alphas", "0,0.5,1"],
        "st.png": ["interpolate", *base, "--other-mask", files["mask1"], "--other-image", files["img1"], "--what", "style", "--alpha", "0.3"],
    }
    for name, args in commands.items():
        result = runner.invoke(app, ["sis", *map(str, args), "--out", str(tmp_path / name)])
        assert result.exit_code == 0, (name, result.output)
    assert Image.open(tmp_path / "rec.png").size == (32, 32)
    assert Image.open(tmp_path / "in.png").size == (3 * 32 + 2 * 2, 32)  # three α side by side
    overlays = sorted(p.name for p in (tmp_path / "att").iterdir())
    present = sorted(np.unique(np.asarray(Image.open(files["mask0"]))).tolist())
    assert [int(n[:2]) for n in overlays] == present and "13_hair.png" in overlays


def test_cli_sample_after_train_mapping(files, tmp_path, capsys, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    code, err = _cli(capsys, monkeypatch, "sample", "--checkpoint", run, "--mask", files["mask0"], "--out", tmp_path / "s.png")
    assert code == 2 and "train-mapping" in err and not (tmp_path / "s.png").exists()  # no mapping network yet
    code, err = _cli(capsys, monkeypatch, "train-mapping", "--checkpoint", run, "--steps", "1", "--batch-size", "2", "--toy-n", "4")
    assert code == 0, err
    code, err = _cli(capsys, monkeypatch, "sample", "--checkpoint", run, "--mask", files["mask0"], "--n", "2", "--seed", "3", "--out", tmp_path / "s.png")
    assert code == 0, err
    assert Image.open(tmp_path / "s.png").size == (2 * 32 + 2, 32)


@pytest.mark.parametrize("case, expected", [
    ("unreadable", "broken.png"),
    ("size", "small_mask.png"),
    ("values", "77"),
    ("class", "moustache"),
])
def test_cli_bad_input_is_one_line_exit_2_and_no_output(files, tmp_path, capsys, monkeypatch, case, expected):
    args = {"image": files["img0"], "mask": files["mask0"], "classes": "hair"}
    if case == "unreadable":
        args["image"] = files["broken"]
    elif case == "size":
        args["mask"] = files["small_mask"]
    elif case == "values":
        args["mask"] = files["bad_values"]
    else:
        args["classes"] = "moustache"
    out = tmp_path / "out.png"
    code, err = _cli(capsys, monkeypatch, "transfer", "--checkpoint", files["run"], "--image", args["image"], "--mask", args["mask"], "--reference", files["img1"], "--reference-mask", files["mask1"], "--classes", args["classes"], "--out", out, "--save-attention", tmp_path / "att")
    assert code == 2
    assert err.startswith("error:") and err.strip().count("\n") == 0 and expected in err
    assert not out.exists() and not (tmp_path / "att").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary files either
