"""Joint-attention capture on tiny SD3 / SD3.5 / FLUX transformers: exact outputs, chunked maps, gradients."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, FusedJointAttnProcessor2_0, JointAttnProcessor2_0

from attnsynth.attention.joint import (
    JointAttentionCapture,
    default_joint_blocks,
    joint_attention_blocks,
    text_attention_probs,
)
from attnsynth.t2i.testing import tiny_flux_components, tiny_sd3_components

TEXT = 20  # text rows of the toy inputs
GRID = (4, 4)


def sd3(**kwargs):
    return tiny_sd3_components(sample_size=4, **kwargs)["transformer"]


def flux():
    return tiny_flux_components()["transformer"]


def sd3_inputs(batch=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(batch, 4, *GRID, generator=g, dtype=dtype),
        encoder_hidden_states=torch.randn(batch, TEXT, 32, generator=g, dtype=dtype),
        pooled_projections=torch.randn(batch, 64, generator=g, dtype=dtype),
        timestep=torch.full((batch,), 500.0, dtype=dtype),
        return_dict=False,
    )


def flux_inputs(batch=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    img_ids = torch.stack(torch.meshgrid(torch.arange(GRID[0]), torch.arange(GRID[1]), indexing="ij"), -1).reshape(-1, 2)
    return dict(
        hidden_states=torch.randn(batch, GRID[0] * GRID[1], 4, generator=g, dtype=dtype),
        encoder_hidden_states=torch.randn(batch, TEXT, 32, generator=g, dtype=dtype),
        pooled_projections=torch.randn(batch, 32, generator=g, dtype=dtype),
        timestep=torch.full((batch,), 0.5, dtype=dtype),
        guidance=torch.full((batch,), 3.5, dtype=dtype),
        txt_ids=torch.zeros(TEXT, 3, dtype=dtype),
        img_ids=torch.cat([torch.zeros(GRID[0] * GRID[1], 1), img_ids.float()], dim=1).to(dtype),
        return_dict=False,
    )


def naive_maps(transformer, inputs, layout_of):
    """Reference: the full joint softmax materialised, text columns sliced, mean over heads and blocks."""
    records = []

    def hook(name):
        def run(module, args, kwargs, _output):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            context = kwargs.get("encoder_hidden_states")
            rotary = kwargs.get("image_rotary_emb")
            records.append(_full_probs(module, hidden, context, rotary, layout_of[name]))

        return run

    handles = [transformer.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True) for n in layout_of]
    with torch.no_grad():
        transformer(**inputs)
    for h in handles:
        h.remove()
    return torch.stack(records).mean(0).unflatten(1, GRID)


def _full_probs(attn, hidden, context, rotary, layout):
    from diffusers.models.embeddings import apply_rotary_emb

    def heads(x):
        return x.unflatten(-1, (attn.heads, -1))  # [B, N, heads, d]

    if layout == "image_text":
        q, k, ek = heads(attn.to_q(hidden)), heads(attn.to_k(hidden)), heads(attn.add_k_proj(context))
        if attn.norm_q is not None:
            q, k, ek = attn.norm_q(q), attn.norm_k(k), attn.norm_added_k(ek)
        eq = heads(attn.add_q_proj(context))
        query, key = torch.cat([q, eq], 1), torch.cat([k, ek], 1)
        image, text = slice(0, q.shape[1]), slice(q.shape[1], None)
    else:
        q, k = attn.norm_q(heads(attn.to_q(hidden))), attn.norm_k(heads(attn.to_k(hidden)))
        if context is not None:
            eq, ek = attn.norm_added_q(heads(attn.add_q_proj(context))), attn.norm_added_k(heads(attn.add_k_proj(context)))
            q, k = torch.cat([eq, q], 1), torch.cat([ek, k], 1)
        q, k = apply_rotary_emb(q, rotary, sequence_dim=1), apply_rotary_emb(k, rotary, sequence_dim=1)
        query, key = q, k
        image, text = slice(TEXT, None), slice(0, TEXT)
    probs = torch.softmax(query.transpose(1, 2) @ key.transpose(1, 2).transpose(-1, -2) / query.shape[-1] ** 0.5, -1)
    return probs[:, :, image, text].mean(1)  # [B, N_img, T]


def run_with(transformer, inputs, capture, mode):
    with capture:
        with torch.no_grad(), (capture.observing(slice(None)) if mode == "observing" else capture.guiding()):
            out = transformer(**inputs)[0]
        return out, capture.maps()


@pytest.mark.parametrize("family", ["sd3", "sd3.5", "flux"])
def test_outputs_bit_identical_and_maps_match_the_full_softmax(family):
    if family == "flux":
        transformer, inputs = flux(), flux_inputs()
    else:
        kwargs = {"qk_norm": "rms_norm", "dual_attention_layers": (0,)} if family == "sd3.5" else {}
        transformer, inputs = sd3(**kwargs), sd3_inputs()
    with torch.no_grad():
        reference = transformer(**inputs)[0]
    blocks = [b.name for b in joint_attention_blocks(transformer)]  # FLUX: double and single blocks
    layouts = {b.name: b.layout for b in joint_attention_blocks(transformer)}
    expected = naive_maps(transformer, inputs, layouts)
    for mode in ("observing", "guiding"):
        capture = JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT, blocks=blocks, chunk_size=3)
        out, maps = run_with(transformer, inputs, capture, mode)
        assert torch.equal(out, reference), mode
        assert maps.shape == (2, *GRID, TEXT)
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
        assert (maps >= 0).all() and (maps.sum(-1) <= 1 + 1e-6).all()
    with torch.no_grad():
        assert torch.equal(transformer(**inputs)[0], reference)  # restored


def test_chunking_never_changes_the_maps_or_their_gradient():
    g = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3, 10, 8, generator=g, dtype=torch.float64, requires_grad=True)
    key = torch.randn(2, 3, 14, 8, generator=g, dtype=torch.float64, requires_grad=True)
    for chunk in (1, 3, 10, None):
        full = torch.softmax(query @ key.transpose(-1, -2) / 8**0.5, -1)[..., 4:12].mean(1)
        probs = text_attention_probs(query, key, slice(4, 12), chunk_size=chunk)
        torch.testing.assert_close(probs, full, rtol=1e-10, atol=1e-12)
        grads = torch.autograd.grad((probs**2).sum(), [query, key])
        expected = torch.autograd.grad((full**2).sum(), [query, key])
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_gradient_reaches_the_latents_and_agrees_with_finite_differences(family):
    # float64 (SD3.5's RMSNorm variance and FLUX's rotary embedding are computed in float32 by diffusers,
    # which limits the agreement there to ~1e-3 relative; SD3 without q/k norms is float64 throughout)
    if family == "flux":
        transformer, inputs = flux().double(), flux_inputs(batch=1, dtype=torch.float64)
    else:
        transformer, inputs = sd3().double(), sd3_inputs(batch=1, dtype=torch.float64)
    capture = JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT, chunk_size=5)

    def loss(latents):
        maps = capture.forward_until_captured(lambda: transformer(**{**inputs, "hidden_states": latents}))
        return (maps[..., 3] ** 2).sum() + (maps[..., 7] * maps[..., 12]).sum()

    with capture:
        z = inputs["hidden_states"].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(z), [z])
        assert grad.abs().sum() > 0
        direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        eps = 1e-3 if family == "flux" else 1e-5
        with torch.no_grad():
            numeric = (loss(z.detach() + eps * direction) - loss(z.detach() - eps * direction)) / (2 * eps)
    rtol = 1e-3 if family == "flux" else 1e-6
    assert torch.isclose((grad * direction).sum(), numeric, rtol=rtol, atol=1e-12)


def test_fused_projections_are_captured_as_diffusers_runs_them():
    transformer, inputs = sd3(), sd3_inputs()
    transformer.fuse_qkv_projections()  # replaces every processor: fuse first, then capture
    assert isinstance(transformer.transformer_blocks[0].attn.processor, FusedJointAttnProcessor2_0)
    with torch.no_grad():
        reference = transformer(**inputs)[0]
    layouts = {name: "image_text" for name in default_joint_blocks(transformer)}
    expected = naive_maps(transformer, inputs, layouts)  # SD3 without q/k norms: fused = unfused projections
    capture = JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT)
    out, maps = run_with(transformer, inputs, capture, "observing")
    assert torch.equal(out, reference)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)

    transformer, inputs = flux(), flux_inputs()
    with torch.no_grad():
        reference = transformer(**inputs)[0]
    capture = JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT)
    _, unfused_maps = run_with(transformer, inputs, capture, "observing")
    transformer.fuse_qkv_projections()
    out, maps = run_with(transformer, inputs, capture, "observing")
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps, unfused_maps, rtol=1e-5, atol=1e-6)


def test_dual_attention_blocks_keep_their_shared_processor_and_originals_come_back():
    transformer = sd3(qk_norm="rms_norm", dual_attention_layers=(0, 1))
    block = transformer.transformer_blocks[0]
    shared = block.attn.processor
    assert block.attn2.processor is shared
    capture = JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT)
    with capture:
        assert block.attn.processor is not shared and block.attn2.processor is shared
    assert block.attn.processor is shared and block.attn2.processor is shared


def test_bad_input_one_line_errors():
    transformer = sd3()
    with pytest.raises(ValueError, match="attention_blocks has 'transformer_blocks.9.attn'"):
        JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT, blocks=["transformer_blocks.9.attn"])
    with pytest.raises(ValueError, match="divides the 4x4 image-token grid"):
        JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT, resolution=(3, 3))
    transformer.transformer_blocks[1].attn.set_processor(AttnProcessor())
    with pytest.raises(ValueError, match="transformer_blocks.1.attn uses AttnProcessor, which joint capture does not support"):
        JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT)
    transformer.transformer_blocks[1].attn.set_processor(JointAttnProcessor2_0())
    unet = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="expected a diffusers SD3Transformer2DModel or FluxTransformer2DModel, got Linear"):
        JointAttentionCapture(unet, grid=GRID, text_tokens=TEXT)
    capture = JointAttentionCapture(transformer, grid=(2, 4), text_tokens=TEXT)
    with capture, pytest.raises(RuntimeError, match="has 16 image and 20 text tokens, expected a 2x4 grid"), capture.observing():
        transformer(**sd3_inputs())


def test_pooled_maps_are_area_averages_and_the_default_blocks_are_double_stream():
    transformer, inputs = flux(), flux_inputs()
    assert default_joint_blocks(transformer) == ("transformer_blocks.0.attn", "transformer_blocks.1.attn")
    fine = JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT)
    coarse = JointAttentionCapture(transformer, grid=GRID, text_tokens=TEXT, resolution=(2, 2))
    _, fine_maps = run_with(transformer, inputs, fine, "observing")
    _, coarse_maps = run_with(transformer, inputs, coarse, "observing")
    torch.testing.assert_close(coarse_maps, fine_maps.unflatten(1, (2, 2)).unflatten(3, (2, 2)).mean(dim=(2, 4)))


# Peer check against FOCUS (github.com/ericbill21/FOCUS, commit 3fb00e9): its own SD3AttnProcessor /
# FluxAttnProcessor and Controller (diffusers 0.33.1, transformers 4.53, in a separate scratch venv
# outside this project) were run on these exact tiny transformers (saved with save_pretrained) and
# inputs, with FOCUS's processors on every transformer_blocks.*.attn as its pipelines install them;
# recorded per selected text row: sum over pixels, max, first and last pixel of the map averaged over
# blocks and heads (FOCUS's storage before its blur). Our capture agreed to 1.6e-9 (SD3) / 5.6e-9 (FLUX).
FOCUS_SD3 = {  # row: (sum, max, first, last); rows 3, 6, 7 CLIP; 79, 82, 83 T5 ("cat", "sun", "flower")
    79: (0.6390054, 0.0034466, 0.0025305, 0.0023779), 3: (0.6465130, 0.0035994, 0.0026278, 0.0024954),
    82: (0.5907417, 0.0041064, 0.0022329, 0.0021275), 83: (0.6047391, 0.0038289, 0.0024353, 0.0021123),
    6: (0.6227342, 0.0031286, 0.0025808, 0.0023719), 7: (0.6330043, 0.0032848, 0.0027521, 0.0023077),
}
FOCUS_FLUX = {2: (0.5832832, 0.0169343, 0.0070607, 0.0076429), 5: (0.6327002, 0.0233705, 0.0050652, 0.0120565),
              6: (0.5938411, 0.0143052, 0.0077245, 0.0076955)}
FOCUS_PROMPT = "a red cat and a sunflower"


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_maps_agree_with_focus_on_the_same_model_and_inputs(family):
    from attnsynth.t2i.testing import tiny_flux_pipeline, tiny_sd3_pipeline

    if family == "sd3":
        pipe = tiny_sd3_pipeline(seed=0)
        embeds, _, pooled, _ = pipe.encode_prompt(FOCUS_PROMPT, None, None, do_classifier_free_guidance=False, max_sequence_length=77)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
        inputs = dict(hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=torch.tensor([700.0]))
        grid, text, expected = (16, 16), 154, FOCUS_SD3
    else:
        pipe = tiny_flux_pipeline(seed=0)
        embeds, pooled, text_ids = pipe.encode_prompt(FOCUS_PROMPT, None, max_sequence_length=32)
        latents, image_ids = pipe.prepare_latents(1, 1, 32, 32, embeds.dtype, "cpu", torch.Generator().manual_seed(6))
        inputs = dict(hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=torch.tensor([0.7]),
                      guidance=torch.tensor([3.5]), txt_ids=text_ids, img_ids=image_ids)
        grid, text, expected = (8, 8), 32, FOCUS_FLUX
    capture = JointAttentionCapture(pipe.transformer, grid=grid, text_tokens=text)  # default blocks = FOCUS's
    with capture, torch.no_grad():
        maps = capture.forward_until_captured(lambda: pipe.transformer(return_dict=False, **inputs))[0].flatten(0, 1)
    for row, numbers in expected.items():
        column = maps[:, row]
        ours = (column.sum(), column.max(), column[0], column[-1])
        torch.testing.assert_close(torch.stack(ours), torch.tensor(numbers), rtol=0, atol=2e-7)
