"""CA²-SIS model: parameter counts, shapes (square and not), token properties, SPADE baseline, save/load."""

import json

import pytest
import torch
from typer.testing import CliRunner

from attnsynth.cli import app
from attnsynth.sis.configs import SISConfig, get_config
from attnsynth.sis.mapping import MappingNetwork
from attnsynth.sis.model import (
    SISModel,
    build_discriminator,
    build_model,
    labels_to_onehot,
    load_safetensors,
    parameter_counts,
    present_classes,
)

C = 7


def _batch(resolution, batch=2, classes=C, absent=()):
    labels = torch.randint(0, classes, (batch, *resolution))
    for k in absent:
        labels[labels == k] = (k + 1) % classes
    return torch.rand(batch, 3, *resolution) * 2 - 1, labels_to_onehot(labels, classes)


def _small(arch="small", resolution=(32, 32), **overrides):
    return build_model(get_config(arch, num_classes=C, resolution=resolution, **overrides)).eval()


# ---- sizes -----------------------------------------------------------------------------------------
# The authors' CelebA model (TFonta/CA2SIS, --exclude_bg): counts of their RGB_model / MultiscaleDiscriminator,
# built from their code in a scratch directory (G's state dict: 77,229,243 values incl. the mapping network).
AUTHORS_COUNTS = {"style_encoder": 18_069_304, "mask_embedder": 4_194_560, "decoder": 26_721_155,
                  "discriminator": 1_364_098, "mapping_network": 28_244_224}


def test_faithful_parameter_counts_equal_the_authors_code():
    counts = parameter_counts(get_config("faithful", num_classes=19, resolution=256))
    assert {k: counts[k] for k in AUTHORS_COUNTS} == AUTHORS_COUNTS
    assert counts["total"] == sum(AUTHORS_COUNTS.values())
    generator = counts["style_encoder"] + counts["mask_embedder"] + counts["decoder"] + counts["mapping_network"]
    assert generator == 77_229_243


def test_cli_info_prints_the_authors_counts():
    result = CliRunner().invoke(app, ["sis", "info", "--config", "faithful", "--classes", "19", "--resolution", "256", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert counts["decoder"] == 26_721_155 and counts["mapping_network"] == 28_244_224


def test_small_config_is_cpu_sized():
    total = parameter_counts(get_config("small", num_classes=19, resolution=64))["total"]
    assert 1e6 <= total <= 3e6


def test_style_encoder_scales_with_classes():
    counts = parameter_counts(get_config("faithful", num_classes=151, resolution=256))
    assert abs(counts["style_encoder"] - 143.6e6) / 143.6e6 < 0.03


def test_cli_info_json_reports_every_module():
    result = CliRunner().invoke(app, ["sis", "info", "--config", "small", "--classes", "5", "--resolution", "64x128", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert set(counts) == {"style_encoder", "mask_embedder", "decoder", "discriminator", "mapping_network", "total"}
    assert counts == parameter_counts(get_config("small", num_classes=5, resolution=(64, 128)))


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    cfg = get_config("spade-small", num_classes=5, resolution=(32, 64), drop_background=True)
    data = json.loads(json.dumps(cfg.to_dict()))  # tuples become lists in JSON
    assert SISConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        SISConfig.from_dict({**data, "ngf": 64})
    assert cfg.num_shape_tokens == 4 and cfg.shape_grid == (32, 64) and cfg.stage_sizes[-1] == (32, 64)


@pytest.mark.parametrize("bad", [dict(resolution=100), dict(num_classes=1), dict(stage_heads=(8, 8))])
def test_bad_config_is_a_one_line_value_error(bad):
    with pytest.raises(ValueError, match="SISConfig"):
        get_config("faithful", **bad)
    with pytest.raises(ValueError, match="config name"):
        get_config("huge")


# ---- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [(32, 32), (32, 64), (64, 32)])
@pytest.mark.parametrize("arch", ["small", "spade-small"])
def test_shapes_square_and_non_square(arch, resolution):
    model = _small(arch, resolution)
    cfg = model.config
    image, onehot = _batch(resolution)
    with torch.no_grad():
        style = model.encode_style(image, onehot)
        shape = model.embed_shape(onehot)
        out, logits = model.decode(shape, style, return_attention=True)
    assert style.shape == (2, C, cfg.style_dim)
    assert out.shape == (2, 3, *resolution) and out.abs().max() <= 1
    if arch == "small":
        assert shape.shape == (2, C - 1, cfg.shape_dim)  # no background shape token (the authors' --exclude_bg)
        assert [tuple(x.shape) for x in logits] == [(2, C, h, w) for h, w in cfg.stage_sizes]
        assert cfg.stage_sizes[-1] == resolution
    else:  # the SPADE baseline: the shape is the mask itself, and there is no attention
        assert torch.equal(shape, onehot) and logits == []


def test_faithful_512x256_shapes_on_meta_device():
    cfg = get_config("faithful", num_classes=19, resolution=(512, 256))
    with torch.device("meta"):
        model, disc = build_model(cfg), build_discriminator(cfg)
        image, onehot = torch.empty(1, 3, 512, 256), torch.empty(1, 19, 512, 256)
        out, logits = model(image, onehot, return_attention=True)
        scales = disc(out, onehot)
    assert out.shape == (1, 3, 512, 256)
    assert [tuple(x.shape[-2:]) for x in logits] == [(32, 16), (64, 32), (128, 64), (256, 128), (512, 256)]
    assert len(scales) == 2 and all(s[-1].shape[1] == 1 for s in scales) and len(scales[0]) == 4


def test_wrong_input_shape_names_the_argument():
    model = _small()
    image, onehot = _batch((32, 32))
    with pytest.raises(ValueError, match="onehot"):
        model.encode_style(image, onehot[:, :3])
    with pytest.raises(ValueError, match="image"):
        model.encode_style(image[..., :16], onehot)
    with pytest.raises(ValueError, match="style"):
        model.decode(model.embed_shape(onehot), torch.zeros(2, C, 5))


def test_labels_to_onehot_and_range_check():
    labels = torch.tensor([[[0, 2], [1, 2]]])
    onehot = labels_to_onehot(labels, 3)
    assert onehot.shape == (1, 3, 2, 2) and torch.equal(onehot.argmax(1), labels) and torch.all(onehot.sum(1) == 1)
    assert present_classes(labels_to_onehot(torch.zeros(1, 2, 2, dtype=torch.long), 3)).tolist() == [[True, False, False]]
    with pytest.raises(ValueError, match="0..2"):
        labels_to_onehot(labels + 1, 3)


# ---- tokens ----------------------------------------------------------------------------------------
def test_absent_class_gets_the_learned_constant_token():
    model = _small()
    with torch.no_grad():
        for bias in model.style_encoder.proj_bias:
            bias.normal_()
        image, onehot = _batch((32, 32), absent=(3,))
        style = model.encode_style(image, onehot)
    constant = model.absent_tokens()[3]
    assert torch.allclose(style[0, 3], constant, atol=1e-6) and torch.allclose(style[1, 3], constant, atol=1e-6)
    assert not torch.allclose(style[0, 2], model.absent_tokens()[2])  # present classes are not the constant


def _classes_changed_by_perturbing_group(model, g):
    """Which classes' tokens change when class g's filters of the first decoder level change."""
    image, onehot = _batch((32, 32))
    with torch.no_grad():
        before = model.encode_style(image, onehot)
        conv = model.style_encoder.up[0][0]
        per_class = conv.out_channels // C
        conv.weight[g * per_class:(g + 1) * per_class].add_(0.5)
        after = model.encode_style(image, onehot)
    return ((after - before).abs().amax(dim=(0, 2)) > 1e-6).tolist()


def test_official_skip_concat_mixes_neighbouring_classes_like_the_authors_code():
    """Channel concat before a grouped conv: group g of the next level reads classes 2g and 2g+1, so class 5's
    change reaches class 2 at level 1 and class 1 at level 2 (the small config has 3 levels)."""
    changed = _classes_changed_by_perturbing_group(_small(), 5)
    assert changed == [c in (5, 2, 1) for c in range(C)]


def test_pooling_mask_nearest_drops_a_tiny_class_at_coarse_levels():
    """Nearest-resized 0/1 mask (the authors'), so a 1-pixel class pools nothing at 4², 8², 16² and gets the absent
    token there, although it is present in the image."""
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 8:24, 8:24] = 1
    labels[0, 1, 1] = 2  # one pixel: never sampled by nearest resizing to 4², 8² or 16²
    onehot = labels_to_onehot(labels, C)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    dim = get_config("small", num_classes=C, resolution=32).style_level_dim
    model = _small()
    with torch.no_grad():
        for bias in model.style_encoder.proj_bias:
            bias.normal_()
        tokens = model.encode_style(image, onehot)[0]
    absent = model.absent_tokens()
    assert torch.allclose(tokens[2], absent[2], atol=1e-6)  # every level
    assert not torch.allclose(tokens[1], absent[1])  # a big class does pool


def test_shape_tokens_are_linear_in_the_mask():
    model = _small()
    _, m1 = _batch((32, 32))
    _, m2 = _batch((32, 32))
    with torch.no_grad():
        e1, e2, mix = model.embed_shape(m1), model.embed_shape(m2), model.embed_shape(0.3 * m1 + 0.7 * m2)
    assert torch.allclose(mix, 0.3 * e1 + 0.7 * e2, atol=1e-5)


def test_swapping_a_mask_channel_swaps_its_shape_token():
    model = _small()
    _, m1 = _batch((32, 32))
    _, m2 = _batch((32, 32))
    k = 4
    swapped = m1.clone()
    swapped[:, k] = m2[:, k]
    with torch.no_grad():
        e1, e2, es = model.embed_shape(m1), model.embed_shape(m2), model.embed_shape(swapped)
    token = model.mask_embedder.kept_classes.index(k)  # background has no token: class k is token k - 1
    expected = e1.clone()
    expected[:, token] = e2[:, token]
    assert torch.allclose(es, expected, atol=1e-6)


def test_keeping_the_background_shape_token_is_an_option():
    model = _small(drop_background=False)
    _, onehot = _batch((32, 32))
    with torch.no_grad():
        assert model.embed_shape(onehot).shape[1] == C
    assert model.generator.conv_in.in_channels == C


def test_background_has_no_shape_token_by_default():
    model = _small()
    assert model.config.drop_background and get_config("faithful").drop_background
    _, onehot = _batch((32, 32))
    with torch.no_grad():
        tokens = model.embed_shape(onehot)
        full = model.mask_embedder.linear(torch.nn.functional.interpolate(onehot, size=model.config.shape_grid).flatten(2))
        out, logits = model(torch.zeros(2, 3, 32, 32), onehot, return_attention=True)
    assert tokens.shape[1] == C - 1 and torch.allclose(tokens, full[:, 1:])
    assert logits[0].shape[1] == C and out.shape == (2, 3, 32, 32)


# ---- generator options -----------------------------------------------------------------------------
@pytest.mark.parametrize("grad", [False, True])
def test_efficient_and_reference_kernels_compute_the_same_function(grad):
    """SDPA + fused/chunked feed-forward == explicit attention maps + plain autograd (the paper's way)."""
    torch.manual_seed(1)
    efficient = _small()
    reference = build_model(efficient.config.replace(kernels="reference")).eval()
    reference.load_state_dict(efficient.state_dict())
    _perturb_zero_inits(efficient, reference)
    image, onehot = _batch((32, 32))
    outputs = []
    for model in (efficient, reference):
        with torch.set_grad_enabled(grad):
            out, logits = model(image, onehot, return_attention=True)
        if grad:
            (out.square().mean() + sum(x.mean() for x in logits)).backward()
        outputs.append((out, logits, [p.grad for p in model.parameters()]))
    (a, la, ga), (b, lb, gb) = outputs
    assert torch.allclose(a, b, atol=1e-5) and all(torch.allclose(x, y, atol=1e-4) for x, y in zip(la, lb))
    if grad:
        assert all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(ga, gb))


def test_chunked_inference_path_matches_the_autograd_path(monkeypatch):
    from attnsynth.sis import generator as generator_module

    monkeypatch.setattr(generator_module, "INFERENCE_CHUNK_TOKENS", 100)  # chunks that do not divide the maps
    monkeypatch.setattr(generator_module, "GEGLU_CHUNK_ELEMENTS", 5000)
    monkeypatch.setattr(generator_module, "PER_IMAGE_PIXELS", 500)  # 16×32 and 32×64 maps: image by image
    model = _small(resolution=(32, 64))
    _perturb_zero_inits(model)
    image, onehot = _batch((32, 64), batch=5)  # 4×8 maps: blocks of 3 + 2 images; larger: token ranges, per image
    with torch.no_grad():
        chunked, chunked_logits = model(image, onehot, return_attention=True)
    full, full_logits = model(image, onehot, return_attention=True)  # grad mode: fused autograd feed-forward
    assert torch.allclose(chunked, full, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(chunked_logits, full_logits))


@pytest.mark.parametrize("keep_gelu", [True, False], ids=["gelu-kept", "gelu-recomputed"])
@pytest.mark.parametrize("trainable", ["all", "input-only", "weights-only"])
def test_fused_autograd_functions_give_exact_gradients(monkeypatch, trainable, keep_gelu):
    from attnsynth.sis import generator as generator_module

    monkeypatch.setattr(generator_module, "GEGLU_CHUNK_ELEMENTS", 48)  # several row chunks of 3 rows
    monkeypatch.setattr(generator_module, "GEGLU_SAVE_ELEMENTS", 10**9 if keep_gelu else 0)  # small layer / large layer
    ff = generator_module.FeedForward(dim=4, mult=4).double()
    ln, linear = torch.nn.LayerNorm(4).double(), torch.nn.Linear(4, 6, bias=False).double()
    with torch.no_grad():
        for norm in (ff.norm, ln):
            norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(2, 5, 4, dtype=torch.double, requires_grad=trainable != "weights-only")
    for module in (ff, ln, linear):
        module.requires_grad_(trainable != "input-only")
    inputs = tuple(t for t in (x, *ff.parameters()) if t.requires_grad)
    assert torch.autograd.gradcheck(lambda *_: ff(x), inputs)
    inputs = tuple(t for t in (x, *ln.parameters(), *linear.parameters()) if t.requires_grad)
    assert torch.autograd.gradcheck(lambda *_: generator_module.norm_linear(x, ln, linear), inputs)
    with torch.no_grad():
        value, gate = ff.proj(ff.norm(x)).chunk(2, dim=-1)
        assert torch.allclose(ff(x), ff.out(value * torch.nn.functional.gelu(gate)))


def _perturb_zero_inits(*models):
    """Zero-initialised output layers would hide the attention path; give them (shared) random values."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in models[0].named_parameters():
            if torch.count_nonzero(parameter) == 0 and parameter.ndim > 0:
                value = torch.randn(parameter.shape, generator=generator) * 0.05
                for model in models:
                    dict(model.named_parameters())[name].copy_(value)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    from attnsynth.sis import generator as generator_module

    monkeypatch.setattr(generator_module, "FF_CHUNK_TOKENS", 300)  # exercise the chunked feed-forward too
    plain = _small().train()
    _perturb_zero_inits(plain)
    checkpointed = build_model(plain.config.replace(gradient_checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    image, onehot = _batch((32, 32))
    grads = []
    for model in (plain, checkpointed):
        out, logits = model(image, onehot, return_attention=True)
        (out.square().mean() + sum(x.mean() for x in logits)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4) for n in grads[0])
    plain.set_gradient_checkpointing(True)
    assert plain.config.gradient_checkpointing and plain.generator.resblocks[0].gradient_checkpointing


# ---- persistence -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["small", "spade-small"])
def test_save_load_round_trip(tmp_path, arch):
    model = _small(arch, (32, 64))
    _perturb_zero_inits(model)
    disc = build_discriminator(model.config)
    path = tmp_path / "ckpt"
    model.save_pretrained(path, extra_state_dicts={"discriminator": disc.state_dict()})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "discriminator.safetensors", "model.safetensors"]
    loaded = SISModel.from_pretrained(path).eval()
    assert loaded.config == model.config
    image, onehot = _batch((32, 64))
    with torch.no_grad():
        assert torch.equal(model(image, onehot), loaded(image, onehot))
    disc2 = load_safetensors(build_discriminator(model.config), path / "discriminator.safetensors")
    with torch.no_grad():
        assert torch.equal(disc.eval()(image, onehot)[1][-1], disc2.eval()(image, onehot)[1][-1])
    with pytest.raises(FileExistsError):
        model.save_pretrained(path)
    with pytest.raises(ValueError, match="does not match"):
        load_safetensors(disc2, path / "model.safetensors")


def test_from_pretrained_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SISModel.from_pretrained(tmp_path / "nope")


# ---- mapping network -------------------------------------------------------------------------------
def test_mapping_network_zeroes_absent_classes():
    cfg = get_config("small", num_classes=C, resolution=64)
    mapping = MappingNetwork(cfg)
    present = torch.ones(3, C, dtype=torch.bool)
    present[0, 2] = present[2, 5] = False
    tokens = mapping(torch.randn(3, cfg.mapping_latent_dim), present)
    assert tokens.shape == (3, C, cfg.style_dim)
    norms = tokens.abs().amax(-1)
    assert torch.equal(norms > 0, present)
    with pytest.raises(ValueError, match="z has shape"):
        mapping(torch.randn(3, 4), present)
    model = _small()
    with torch.no_grad():
        assert model.decode(model.embed_shape(_batch((32, 32), batch=3)[1]), tokens).shape == (3, 3, 32, 32)


# ---- the authors' choices (tests/test_parity_ca2sis.py checks the numbers against their code) -------
def test_resblock_group_norm_is_eps_1e5_in_float32_under_bf16_autocast():
    from attnsynth.sis.generator import GroupNorm32, ResBlock

    block = ResBlock(in_channels=32, out_channels=32)
    assert isinstance(block.norm1, GroupNorm32) and block.norm1.eps == block.norm2.eps == 1e-5
    torch.manual_seed(0)
    x = (torch.randn(2, 32, 4, 4) * 3 + 100).to(torch.bfloat16)  # large mean: bf16 statistics would be off
    with torch.no_grad():
        block.norm1.weight.normal_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block.norm1(x)
    expected = torch.nn.functional.group_norm(x.float(), 32, block.norm1.weight, block.norm1.bias, 1e-5)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.to(torch.bfloat16))


def test_discriminator_uses_stride_2_in_every_intermediate_conv():
    cfg = get_config("small", num_classes=C, resolution=64)
    disc = build_discriminator(cfg)
    image, onehot = _batch((64, 64))
    scales = disc(image, onehot)
    # conv4×4/2 (pad 2): 64 → 33 → 17 → 9; last conv4×4/1: 9 → 10 (the authors' NLayerDiscriminator)
    assert [tuple(f.shape[-2:]) for f in scales[0]] == [(33, 33), (17, 17), (9, 9), (10, 10)]


def test_mapping_heads_have_four_layers_and_no_squashing():
    cfg = get_config("small", num_classes=C, resolution=64)
    mapping = MappingNetwork(cfg)
    linears = [m for m in mapping.heads if hasattr(m, "weight")]
    assert len(linears) == 4 and not any(isinstance(m, torch.nn.Tanh) for m in mapping.modules())
    with torch.no_grad():
        linears[-1].bias.fill_(3.0)
    tokens = mapping(torch.randn(2, cfg.mapping_latent_dim), torch.ones(2, C, dtype=torch.bool))
    assert tokens.abs().max() > 1  # not squashed into [-1, 1]


def test_config_json_with_the_retired_style_variant_key_still_loads():
    data = get_config("small", num_classes=C, resolution=32).to_dict()
    assert SISConfig.from_dict({**data, "style_variant": "official"}) == SISConfig.from_dict(data)
    with pytest.raises(ValueError, match="style_variant='class-aligned', a variant that was removed"):
        SISConfig.from_dict({**data, "style_variant": "class-aligned"})
