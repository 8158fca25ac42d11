"""CA²-SIS parity: attnsynth's `small` config computes the authors' function, checked against numbers from their code.

How the numbers in tests/data/parity/ca2sis_small* were produced (2026-12-01, 2-vCPU VM, torch 2.13.0+cpu):

* The authors' public code, TFonta/CA2SIS @ b8741cd (CC BY-NC-SA; it stays outside this project), run in a scratch
  directory on CPU: ``.cuda()`` made a no-op, ``torchvision`` stubbed (only VGG/transforms/save_image use it),
  options of their ``train_celeba.sh`` (``--exclude_bg --label_nc 19 --no_instance --att_loss``, so 18 shape
  tokens). Their ``RGB_model`` hard-codes the CelebA sizes, so their classes (``SingleLinearMaskEncoder``,
  ``MultiScaleEffStyleEncoder``, ``MappingNetwork``, ``ResBlock``, ``SpatialTransformer``,
  ``MultiscaleDiscriminator``) were built at the sizes of attnsynth's ``small`` preset at 19 classes, 32²
  (`PARITY_CONFIG`); ``RGB_model.forward`` / ``forward_noise`` are theirs, its ``decode`` re-stated as a loop over
  the stages. Their ``GroupNorm32`` casts to float32; for the float64 run it computed in float64 (fp32/16 unchanged).
* ``ca2sis_small_keys.json``: the key names and shapes of their generator and discriminator state dicts there.
* Weights: `parity_ca2sis_weights.seeded_tensor` per official key (no constant tensor: their zero-initialised
  ResBlock out-convs and ``proj_out`` are random too). Inputs: two toy faces (``attnsynth.toyworld.faces.render``
  seeds 3 and 7 at 32², stored as uint8 with their label maps), ``x = uint8 / 127.5 − 1``.
* ``ca2sis_small.safetensors``: their outputs computed in float64 (eval mode), stored as float32: style tokens
  (``style_encoder(x, m)``), head-mean pre-softmax cross-attention logits of every layer (the tensors their
  ``CrossAttention`` passes to its BCE), the image ``G(x, m, m)``, L_att, the raw mapping-network tokens for a fixed
  z and ``forward_noise``'s image, every discriminator feature (eval) for face 0, and the discriminator logits
  plus spectral-norm u/v after one train-mode forward (one power iteration). Their train-mode generator forward
  gave the same image (difference 0.0).

attnsynth (float32) must equal them within 1e-5 on every kernel path: efficient, reference, training forward
(grad on, fused autograd kernels) and training forward with gradient checkpointing.
"""

import pytest
import torch
from safetensors.torch import load_file

from parity_ca2sis_weights import DATA, PARITY_CONFIG, official_keys, official_state_dict
from attnsynth.sis import official
from attnsynth.sis.configs import get_config
from attnsynth.sis.losses import attention_loss
from attnsynth.sis.mapping import MappingNetwork
from attnsynth.sis.model import SISModel, build_discriminator, labels_to_onehot

TOLERANCE = 1e-5
GOLDEN = load_file(str(DATA / "ca2sis_small.safetensors"))
PATHS = {  # name → (config overrides, training forward?)
    "efficient": ({}, False),
    "reference": ({"kernels": "reference"}, False),
    "training": ({}, True),
    "training-reference": ({"kernels": "reference"}, True),
    "training-checkpointed": ({"gradient_checkpointing": True}, True),
}


def _inputs():
    image = GOLDEN["pixels"].permute(0, 3, 1, 2).float() / 127.5 - 1
    return image, labels_to_onehot(GOLDEN["labels"].long(), 19)


def _generator_tensors(config):
    state = official_state_dict("generator")
    official.check_layout(state, config, "generator", name="seeded state dict")
    return official.to_attnsynth(state, config, "generator")


def _model(**overrides):
    config = get_config(**PARITY_CONFIG, **overrides)
    tensors = _generator_tensors(config)
    model = SISModel(config)
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("mapping.")})
    mapping = MappingNetwork(config)
    mapping.load_state_dict({k.removeprefix("mapping."): v for k, v in tensors.items() if k.startswith("mapping.")})
    return model.eval(), mapping.eval()


def _max_diff(a, b):
    return float((a.detach().float() - b).abs().max())


def test_small_preset_has_the_authors_layout():
    """The conversion table describes exactly the key names and shapes their code creates at PARITY_CONFIG."""
    config = get_config(**PARITY_CONFIG)
    for part in ("generator", "discriminator"):
        assert official.official_shapes(config, part) == official_keys(part)


def test_faithful_preset_has_the_authors_checkpoint_layout():
    """Their CelebA checkpoint (RGB_model(opt, 19, 32, 32, 256), --exclude_bg): 388 generator tensors holding
    77,229,243 values (160 tensors noise_encoder.*), 20 discriminator tensors — counted from their code."""
    config = get_config("faithful", num_classes=19, resolution=256)
    generator = official.official_shapes(config, "generator")
    assert len(generator) == 388 and sum(torch.Size(s).numel() for s in generator.values()) == 77_229_243
    assert sum(k.startswith("noise_encoder.") for k in generator) == 160
    assert generator["reshape_conv.weight"] == (512, 18, 1, 1)
    assert len(official.official_shapes(config, "discriminator")) == 20


@pytest.mark.parametrize("path", list(PATHS))
def test_generator_equals_the_authors_code(path):
    overrides, training = PATHS[path]
    model, _ = _model(**overrides)
    image, onehot = _inputs()
    model.train(training)
    with torch.set_grad_enabled(training):
        if training:
            model.requires_grad_(True)
        style = model.encode_style(image, onehot)
        out, logits = model(image, onehot, return_attention=True)
    assert _max_diff(style, GOLDEN["style"]) < TOLERANCE
    assert len(logits) == 4
    for i, layer in enumerate(logits):
        assert _max_diff(layer, GOLDEN[f"logits.{i}"]) < TOLERANCE, i
    assert _max_diff(out, GOLDEN["image"]) < TOLERANCE
    assert abs(float(attention_loss(logits, onehot).detach()) - float(GOLDEN["att_loss"])) < TOLERANCE
    if training:
        out.mean().backward()  # the training path really is differentiable end to end
        assert model.generator.conv_in.weight.grad is not None


def test_mapping_network_and_random_styles_equal_the_authors_code():
    model, mapping = _model()
    _, onehot = _inputs()
    present = onehot.flatten(2).amax(-1) > 0
    with torch.no_grad():
        tokens = mapping(GOLDEN["z"], present)
        image = model.decode(model.embed_shape(onehot), tokens)
    assert _max_diff(tokens, GOLDEN["mapping"] * present[..., None]) < TOLERANCE
    assert _max_diff(image, GOLDEN["noise_image"]) < TOLERANCE


def test_discriminator_equals_the_authors_code():
    config = get_config(**PARITY_CONFIG)
    state = official_state_dict("discriminator")
    official.check_layout(state, config, "discriminator", name="seeded state dict")
    tensors = official.to_attnsynth(state, config, "discriminator")
    disc = build_discriminator(config)
    disc.load_state_dict(tensors)
    image, onehot = _inputs()
    with torch.no_grad():
        outputs = disc.eval()(image[:1], onehot[:1])
        for s, features in enumerate(outputs):
            assert len(features) == 4
            for n, feature in enumerate(features):
                assert _max_diff(feature, GOLDEN[f"disc_eval.{s}.{n}"]) < TOLERANCE, (s, n)
        outputs = disc.train()(image[:1], onehot[:1])  # one spectral-norm power iteration, as theirs
    for s, features in enumerate(outputs):
        assert _max_diff(features[-1], GOLDEN[f"disc_train.{s}.logits"]) < TOLERANCE, s
    updated = official.to_official({k: v.detach() for k, v in disc.state_dict().items()}, config, "discriminator")
    for key, value in updated.items():
        if key.endswith(("weight_u", "weight_v")):
            assert _max_diff(value, GOLDEN[f"disc_train_sn.{key}"]) < TOLERANCE, key


# ---- `attnsynth sis import-official` -------------------------------------------------------------------------
def _cli(*args):
    from typer.testing import CliRunner

    from attnsynth.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _write_face(tmp_path, index=0):
    from PIL import Image

    image, labels = tmp_path / f"face{index}.png", tmp_path / f"labels{index}.png"
    Image.fromarray(GOLDEN["pixels"][index].numpy()).save(image)
    Image.fromarray(GOLDEN["labels"][index].numpy()).save(labels)
    return image, labels


def _official_files(tmp_path):
    generator, discriminator = tmp_path / "latest_net_G.pth", tmp_path / "latest_net_D.pth"
    torch.save(official_state_dict("generator"), generator)
    torch.save(official_state_dict("discriminator"), discriminator)
    return generator, discriminator


SMALL_ARGS = ("--config", "small", "--classes", 19, "--resolution", 32)


def test_import_official_then_reconstruct_equals_the_authors_image(tmp_path):
    """State dicts in the authors' layout → import-official → `sis reconstruct` = their G(x, m, m) (uint8 ±1)."""
    import numpy as np
    from PIL import Image

    from attnsynth.sis.edits import load_mapping, load_model
    from attnsynth.utils.images import to_uint8

    generator, discriminator = _official_files(tmp_path)
    run = tmp_path / "run"
    result = _cli("sis", "import-official", "--generator", generator, "--discriminator", discriminator, "--out", run, *SMALL_ARGS)
    assert result.exit_code == 0, result.output
    image, labels = _write_face(tmp_path)
    result = _cli("sis", "reconstruct", "--checkpoint", run, "--image", image, "--mask", labels, "--out", tmp_path / "rec.png")
    assert result.exit_code == 0, result.output
    ours = np.asarray(Image.open(tmp_path / "rec.png").convert("RGB"), dtype=np.int16)
    theirs = to_uint8(GOLDEN["image"][0]).astype(np.int16)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1
    # the imported mapping network (their noise_encoder.*) is the one `sis sample` uses
    model, _ = load_model(run)
    mapping = load_mapping(run, model)
    with torch.no_grad():
        tokens = mapping(GOLDEN["z"], torch.ones(2, 19, dtype=torch.bool))
    assert _max_diff(tokens, GOLDEN["mapping"]) < TOLERANCE
    result = _cli("sis", "sample", "--checkpoint", run, "--mask", labels, "--n", 2, "--out", tmp_path / "sample.png")
    assert result.exit_code == 0, result.output


def test_import_official_refuses_a_pickle_that_carries_code(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "latest_net_G.pth"
    torch.save({"encs.encs.0.weight": Payload()}, evil)
    result = _cli("sis", "import-official", "--generator", evil, "--out", tmp_path / "run", *SMALL_ARGS)
    assert isinstance(result.exception, ValueError), result.output
    message = str(result.exception)
    assert "--generator" in message and "not a plain tensor state dict" in message and "\n" not in message
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_import_official_names_every_missing_extra_and_misshaped_tensor(tmp_path):
    state = official_state_dict("generator")
    del state["reshape_conv.bias"]
    state["cross2.transformer_blocks.0.attn2.to_v.weight"] = torch.zeros(3, 3)
    state["extra.tensor"] = torch.zeros(1)
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    result = _cli("sis", "import-official", "--generator", path, "--out", tmp_path / "run", *SMALL_ARGS)
    assert isinstance(result.exception, ValueError), result.output
    message = str(result.exception)
    assert "\n" not in message and not (tmp_path / "run").exists()
    assert "missing 1: reshape_conv.bias" in message and "extra 1: extra.tensor" in message
    assert "mis-shaped 1: cross2.transformer_blocks.0.attn2.to_v.weight (3, 3)" in message


@pytest.mark.slow  # ≈ 8 s of CPU, 25 s wall on the shared 2-core machine
def test_every_sis_command_accepts_an_imported_run_and_train_resume_fine_tunes_it(tmp_path):
    from safetensors.torch import load_file as load

    generator, discriminator = _official_files(tmp_path)
    run = tmp_path / "run"
    result = _cli("sis", "import-official", "--generator", generator, "--discriminator", discriminator, "--out", run,
                  *SMALL_ARGS, "--data", "toy-faces")
    assert result.exit_code == 0, result.output
    (image, labels), (other, other_labels) = _write_face(tmp_path, 0), _write_face(tmp_path, 1)
    common = ("--checkpoint", run, "--image", image, "--mask", labels)
    for args in (("transfer", *common, "--reference", other, "--reference-mask", other_labels, "--classes", "hair"),
                 ("swap-shape", *common, "--donor-mask", other_labels, "--classes", "hair"),
                 ("interpolate", *common, "--other-mask", other_labels, "--alphas", "0,1")):
        result = _cli("sis", *args, "--out", tmp_path / f"{args[0]}.png")
        assert result.exit_code == 0, (args[0], result.output)
    result = _cli("sis", "evaluate", "--checkpoint", run, "--data", "toy-faces", "--n", 2, "--noise-levels", "0", "--json")
    assert result.exit_code == 0, result.output
    before = load(str(run / "model.safetensors"))
    result = _cli("sis", "train", "--data", "toy-faces", "--out", run, "--config", "small", "--resolution", 32, "--resume",
                  "--steps", 2, "--sample-every", 0, "--checkpoint-every", 0, "--log-every", 1)
    assert result.exit_code == 0, result.output
    after = load(str(run / "model.safetensors"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert (run / "mapping.safetensors").is_file()  # fine-tuning keeps the imported mapping network beside the model
