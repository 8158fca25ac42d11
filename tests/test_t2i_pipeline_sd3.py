"""Attention-guided SD3 / SD3.5 pipeline on tiny offline components: exact off, maps, subjects, guidance, errors."""

import json

import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from attnsynth.t2i import AttentionGuidedStableDiffusion3Pipeline, load_pipeline
from attnsynth.t2i.losses import METHODS
from attnsynth.t2i.testing import tiny_sd3_pipeline

PROMPT = "a red cat and a sunflower"
T5_ROWS = 16  # max_sequence_length of these tests
CALL = dict(height=32, width=32, num_inference_steps=4, output_type="latent", max_sequence_length=T5_ROWS)
BOXES = {"cat": (0.0, 0.0, 0.5, 1.0), "sunflower": (0.5, 0.0, 1.0, 1.0)}


@pytest.fixture(scope="module", params=["sd3", "sd3.5"])
def plain(request):
    kwargs = {"qk_norm": "rms_norm", "dual_attention_layers": (0,)} if request.param == "sd3.5" else {}
    return tiny_sd3_pipeline(seed=0, **kwargs)


@pytest.fixture(scope="module")
def ours(plain):
    pipe = AttentionGuidedStableDiffusion3Pipeline.from_pipe(plain)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt=PROMPT, seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **{**CALL, **kwargs})


def test_without_guidance_equals_diffusers_bit_for_bit(plain, ours):
    reference = generate(plain).images
    assert torch.equal(generate(ours).images, reference)
    observed = generate(ours, subjects=["cat"], return_attention_maps=True)  # capture observing: still exact
    assert torch.equal(observed.images, reference)
    images = generate(ours, output_type="np").images
    assert (images == generate(plain, output_type="np").images).all()


def test_maps_shapes_ranges_and_token_alignment(ours):
    out = generate(ours, subjects=["cat", "sunflower"], return_attention_maps=True, num_images_per_prompt=2)
    maps = out.attention_maps  # [steps, B, h, w, T]: T = 77 CLIP rows + 16 T5 rows
    assert maps.shape == (4, 2, 8, 8, 77 + T5_ROWS)
    assert (maps >= 0).all() and (maps.sum(-1) <= 1 + 1e-5).all() and (maps.sum(-1) > 0).all()
    cat, sunflower = out.subjects[0]
    clip = ours.tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
    t5 = ours.tokenizer_3(PROMPT, padding="max_length", max_length=T5_ROWS).input_ids
    # "cat": CLIP row 3 (after BOS, "a", "red") and T5 row 77 + 2 (T5 has no BOS); its attribute "red" likewise.
    assert cat.token_indices == (3, 79) and cat.attribute_indices == (2, 78)
    assert ours.tokenizer.convert_ids_to_tokens(clip[3]) == "cat</w>" and ours.tokenizer_3.convert_ids_to_tokens(t5[2]) == "▁cat"
    # multi-piece words: every piece of both encoders, one group; padding rows never selected
    assert [ours.tokenizer.convert_ids_to_tokens(clip[i]) for i in sunflower.token_indices[:2]] == ["sun", "flower</w>"]
    assert [ours.tokenizer_3.convert_ids_to_tokens(t5[i - 77]) for i in sunflower.token_indices[2:]] == ["▁sun", "flower"]
    pad_rows = [i for i, t in enumerate(t5) if t == ours.tokenizer_3.pad_token_id]
    assert pad_rows and not set(77 + i for i in pad_rows) & set(sunflower.token_indices + cat.token_indices)


def test_every_method_guides_the_latents(plain, ours):
    reference = generate(plain).images
    for method in METHODS:
        boxes = BOXES if method == "layout" else None
        refine = {0: 0.5} if method in ("attend-excite", "layout") else None  # one refinement step (fast)
        out = generate(ours, subjects=["cat", "sunflower"], method=method, boxes=boxes, guided_steps=2, step_size=5.0,
                       refine_thresholds=refine)
        assert not torch.equal(out.images, reference), method
        assert out.losses["total"].shape == (2, 1) and torch.isfinite(out.losses["total"]).all(), method


def test_fused_projections_are_exact_off_and_guide(plain):
    fused_plain = tiny_sd3_pipeline(seed=0)
    fused_plain.transformer.fuse_qkv_projections()  # fuse first; the capture installs after
    fused = AttentionGuidedStableDiffusion3Pipeline.from_pipe(fused_plain)
    fused.set_progress_bar_config(disable=True)
    assert torch.equal(generate(fused, subjects=["cat"], return_attention_maps=True).images, generate(fused_plain).images)
    out = generate(fused, subjects=["cat", "sunflower"], method="ait2i", guided_steps=1)
    assert torch.isfinite(out.losses["total"]).all()


def test_bad_input_is_refused_in_one_line_before_compute(ours):
    with pytest.raises(ValueError, match="subject 'horse' not found in prompt"):
        generate(ours, subjects=["horse"], method="ait2i")
    with pytest.raises(ValueError, match="T5 text limit \\(max_sequence_length\\) is 16"):
        generate(ours, prompt="a cat " * 10, subjects=["cat"], method="ait2i")
    with pytest.raises(ValueError, match="attention_blocks has 'transformer_blocks.7.attn'"):
        generate(ours, subjects=["cat"], method="ait2i", attention_blocks=["transformer_blocks.7.attn"])
    with pytest.raises(ValueError, match="prompt_3 differ from prompt"):
        generate(ours, subjects=["cat"], method="ait2i", prompt_3="a dog")
    block = ours.transformer.transformer_blocks[0].attn
    original = block.processor
    block.set_processor(AttnProcessor2_0())
    try:
        with pytest.raises(ValueError, match="uses AttnProcessor2_0, which joint capture does not support"):
            generate(ours, subjects=["cat"], method="ait2i")
    finally:
        block.set_processor(original)


def test_lora_loaded_pipeline_is_exact_off_and_its_maps_see_the_lora(tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    # a LoRA on the joint attention projections, saved in diffusers' format and loaded with load_lora_weights
    trained = tiny_sd3_pipeline(seed=0)
    config = LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_k", "add_k_proj"])
    trained.transformer.add_adapter(config)
    StableDiffusion3Pipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(trained.transformer))
    base = AttentionGuidedStableDiffusion3Pipeline.from_pipe(tiny_sd3_pipeline(seed=0))
    base_maps = generate(base, subjects=["cat"], return_attention_maps=True).attention_maps
    lora = AttentionGuidedStableDiffusion3Pipeline.from_pipe(tiny_sd3_pipeline(seed=0))
    lora.set_progress_bar_config(disable=True)
    lora.load_lora_weights(tmp_path)
    assert torch.equal(generate(lora).images, generate(StableDiffusion3Pipeline.from_pipe(lora)).images)
    out = generate(lora, subjects=["cat"], method="ait2i", guided_steps=1, return_attention_maps=True)
    assert torch.isfinite(out.losses["total"]).all()
    assert (out.attention_maps[0] - base_maps[0]).abs().max() > 1e-4  # step 0: same latent, the LoRA'd keys


def test_load_pipeline_detects_a_saved_sd3_directory(tmp_path):
    pipe = tiny_sd3_pipeline(seed=0)
    pipe.save_pretrained(tmp_path / "sd3")
    assert json.loads((tmp_path / "sd3" / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    loaded = load_pipeline(tmp_path / "sd3")
    assert isinstance(loaded, AttentionGuidedStableDiffusion3Pipeline)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(generate(loaded).images, generate(pipe).images)
