"""Attention capture: installed only where maps are read, exact when not guiding, correct maps, early stop."""

import pytest
import torch

from attnsynth.attention.capture import AttentionCapture, cross_attention_layers, default_attention_res
from attnsynth.t2i.testing import tiny_sd_components


@pytest.fixture(scope="module")
def unet():
    return tiny_sd_components(seed=0)["unet"]


def _inputs(batch=2, tokens=77, dim=32, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, size, size, generator=g), torch.randn(batch, tokens, dim, generator=g)


def test_layers_and_grids_follow_the_unet_structure(unet):
    layers = cross_attention_layers(unet)
    grids = {layer.name: layer.grid((32, 32)) for layer in layers}
    assert all(name.endswith(".attn2") for name in grids)
    assert grids["down_blocks.1.attentions.0.transformer_blocks.0.attn2"] == (16, 16)
    assert grids["down_blocks.2.attentions.0.transformer_blocks.0.attn2"] == (8, 8)
    assert grids["mid_block.attentions.0.transformer_blocks.0.attn2"] == (8, 8)
    assert grids["up_blocks.0.attentions.1.transformer_blocks.0.attn2"] == (8, 8)
    assert grids["up_blocks.1.attentions.0.transformer_blocks.0.attn2"] == (16, 16)
    assert [layer.name.split(".")[0] for layer in layers] == ["down_blocks"] * 2 + ["mid_block"] + ["up_blocks"] * 4
    assert default_attention_res((64, 64)) == (16, 16)  # SD at 512²: (H/32, W/32)
    assert default_attention_res((33, 30)) == (9, 8)  # stride-2 convolutions round up


def test_installs_only_on_the_map_layers_and_restores_the_originals(unet):
    before = dict(unet.attn_processors)
    with AttentionCapture(unet, latent_size=(32, 32)) as capture:
        during = unet.attn_processors
        changed = {k for k in before if during[k] is not before[k]}
        assert changed == {f"{name}.processor" for name in capture.layers}
        assert len(capture.layers) == 4 and all(".attn2" in name for name in capture.layers)
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_processors_are_restored_after_an_error(unet):
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionCapture(unet, latent_size=(32, 32)):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_outputs_are_bit_identical_when_not_guiding(unet):
    sample, text = _inputs()
    with torch.no_grad():
        reference = unet(sample, 10, encoder_hidden_states=text).sample
        with AttentionCapture(unet, latent_size=(32, 32)) as capture:
            idle = unet(sample, 10, encoder_hidden_states=text).sample
            with capture.observing(slice(1, 2)):
                observed = unet(sample, 10, encoder_hidden_states=text).sample
            maps = capture.maps()
    assert torch.equal(idle, reference) and torch.equal(observed, reference)
    assert maps.shape == (1, 8, 8, 77)
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 8, 8))


def _manual_layer_maps(unet, sample, text, names):
    """Reference maps from the layers' inputs: softmax(q kᵀ · scale) by hand, mean over heads."""
    inputs = {}
    hooks = [
        unet.get_submodule(name).register_forward_pre_hook(
            lambda module, args, kwargs, name=name: inputs.__setitem__(name, (args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"])),
            with_kwargs=True,
        )
        for name in names
    ]
    with torch.no_grad():
        unet(sample, 10, encoder_hidden_states=text)
    for hook in hooks:
        hook.remove()
    result = {}
    for name in names:
        attn = unet.get_submodule(name)
        hidden, context = inputs[name]
        q = attn.to_q(hidden).unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # [B, heads, N, d]
        k = attn.to_k(context).unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # [B, heads, T, d]
        probs = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
        result[name] = probs.mean(1)  # [B, N, T]
    return result


def test_captured_maps_equal_a_hand_computed_softmax(unet):
    sample, text = _inputs()
    capture = AttentionCapture(unet, latent_size=(32, 32))
    reference = _manual_layer_maps(unet, sample, text, capture.layers)
    with capture, torch.no_grad():
        with capture.observing(slice(0, 2)):
            unet(sample, 10, encoder_hidden_states=text)
        per_layer = capture.layer_maps()
        average = capture.maps()
    for name in capture.layers:
        torch.testing.assert_close(per_layer[name].flatten(1, 2), reference[name], atol=1e-6, rtol=1e-5)
    expected = torch.stack(list(reference.values())).mean(0).unflatten(1, (8, 8))
    torch.testing.assert_close(average, expected, atol=1e-6, rtol=1e-5)


def test_guiding_uses_explicit_attention_with_the_same_output(unet):
    sample, text = _inputs()
    with torch.no_grad():
        reference = unet(sample, 10, encoder_hidden_states=text).sample
        with AttentionCapture(unet, latent_size=(32, 32), resolution=(16, 16)) as capture:
            with capture.guiding():
                explicit = unet(sample, 10, encoder_hidden_states=text).sample
            assert capture.maps().shape == (2, 16, 16, 77)
    torch.testing.assert_close(explicit, reference, atol=1e-5, rtol=1e-5)


def test_early_stop_skips_later_blocks_and_keeps_the_gradient(unet):
    sample, text = _inputs()
    calls = []
    hook = unet.up_blocks[-1].register_forward_hook(lambda *args: calls.append(1))
    try:
        with AttentionCapture(unet, latent_size=(32, 32)) as capture:
            z = sample.clone().requires_grad_(True)
            with capture.guiding():
                unet(z, 10, encoder_hidden_states=text)
            full = capture.maps()
            (full_grad,) = torch.autograd.grad(full[..., 2].pow(2).sum(), [z])
            assert len(calls) == 1
            z = sample.clone().requires_grad_(True)
            early = capture.forward_until_captured(lambda: unet(z, 10, encoder_hidden_states=text))
            (early_grad,) = torch.autograd.grad(early[..., 2].pow(2).sum(), [z])
    finally:
        hook.remove()
    assert len(calls) == 1  # the stopped pass never reached the last up block
    torch.testing.assert_close(early, full)
    torch.testing.assert_close(early_grad, full_grad)
    assert early_grad.abs().sum() > 0


def test_bad_resolution_and_bad_model_are_one_line_errors(unet):
    with pytest.raises(ValueError, match=r"attention_res.*5x5.*available: \[\(8, 8\), \(16, 16\)\]"):
        AttentionCapture(unet, latent_size=(32, 32), resolution=(5, 5))
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        AttentionCapture(torch.nn.Linear(2, 2), latent_size=(32, 32))


def test_maps_before_any_pass_is_an_error(unet):
    with AttentionCapture(unet, latent_size=(32, 32)) as capture:
        with pytest.raises(RuntimeError, match="no attention captured"):
            capture.maps()
