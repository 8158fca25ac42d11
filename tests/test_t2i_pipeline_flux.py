"""Attention-guided FLUX pipeline on tiny offline components: exact off, T5-only maps, guidance, errors, loading."""

import pytest
import torch

from attnsynth.t2i import AttentionGuidedFluxPipeline, load_pipeline, pipeline_class_name
from attnsynth.t2i.losses import METHODS
from attnsynth.t2i.mmdit import flow_matching_schedule
from attnsynth.t2i.testing import tiny_flux_pipeline

PROMPT = "a cat and a sunflower"
T5_ROWS = 16
CALL = dict(height=32, width=32, num_inference_steps=4, output_type="latent", max_sequence_length=T5_ROWS)


@pytest.fixture(scope="module")
def plain():
    return tiny_flux_pipeline(seed=0)


@pytest.fixture(scope="module")
def ours(plain):
    pipe = AttentionGuidedFluxPipeline.from_pipe(plain)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt=PROMPT, seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **{**CALL, **kwargs})


def test_without_guidance_equals_diffusers_bit_for_bit(plain, ours):
    reference = generate(plain).images
    assert torch.equal(generate(ours).images, reference)
    every_block = [f"transformer_blocks.{i}.attn" for i in range(2)] + [f"single_transformer_blocks.{i}.attn" for i in range(2)]
    observed = generate(ours, subjects=["cat"], return_attention_maps=True, attention_blocks=every_block)
    assert torch.equal(observed.images, reference)
    assert (generate(ours, output_type="np").images == generate(plain, output_type="np").images).all()


def test_t5_rows_start_at_zero_and_maps_are_probabilities(ours):
    out = generate(ours, subjects=["cat", "sunflower"], return_attention_maps=True)
    maps = out.attention_maps  # [steps, B, h, w, T5 rows]; 32² image → 16² latent → 8² tokens → 4² maps
    assert maps.shape == (4, 1, 4, 4, T5_ROWS)
    assert (maps >= 0).all() and (maps.sum(-1) <= 1 + 1e-5).all()
    cat, sunflower = out.subjects[0]
    ids = ours.tokenizer_2(PROMPT, padding="max_length", max_length=T5_ROWS).input_ids
    assert cat.token_indices == (1,) and ours.tokenizer_2.convert_ids_to_tokens(ids[1]) == "▁cat"
    assert [ours.tokenizer_2.convert_ids_to_tokens(ids[i]) for i in sunflower.token_indices] == ["▁sun", "flower"]
    first = generate(ours, prompt="cat and a sunflower", subjects=["cat"]).subjects[0][0]
    assert first.token_indices == (0,)  # no BOS: the first word is row 0


def test_every_method_guides_the_latents(plain, ours):
    reference = generate(plain).images
    for method in METHODS:
        boxes = {"cat": (0.0, 0.0, 0.5, 1.0)} if method == "layout" else None
        refine = {0: 0.5} if method in ("attend-excite", "layout") else None
        out = generate(ours, subjects=["cat", "sunflower"], method=method, boxes=boxes, guided_steps=2, step_size=5.0,
                       refine_thresholds=refine)
        assert not torch.equal(out.images, reference), method
        assert out.losses["total"].shape == (2, 1) and torch.isfinite(out.losses["total"]).all(), method


def test_flow_matching_schedule_fits_the_method_defaults_to_the_step_count():
    schedule = flow_matching_schedule("attend-excite", 28, None, None, None)
    assert schedule.guided_steps == 14 and schedule.refine_thresholds == {0: 0.05, 6: 0.5, 11: 0.8}
    assert schedule.step_sizes[0] == pytest.approx(20.0) and schedule.step_sizes[-1] == pytest.approx(20.0 * 0.5**0.5)
    assert flow_matching_schedule("ait2i", 4, 3, 2.0, {}).guided_steps == 3


def test_bad_input_is_refused_in_one_line(ours):
    with pytest.raises(ValueError, match="subject 'dog' not found in prompt"):
        generate(ours, subjects=["dog"], method="ait2i")
    with pytest.raises(ValueError, match="T5 text limit \\(max_sequence_length\\) is 16"):
        generate(ours, prompt="a cat " * 10, subjects=["cat"], method="ait2i")
    with pytest.raises(ValueError, match="attention_res=\\(3, 3\\) is invalid"):
        generate(ours, subjects=["cat"], method="ait2i", attention_res=(3, 3))
    with pytest.raises(ValueError, match="method='layout' needs boxes"):
        generate(ours, subjects=["cat"], method="layout")


def test_family_detection(tmp_path):
    assert pipeline_class_name({"_class_name": "FluxPipeline"}) == "AttentionGuidedFluxPipeline"
    assert pipeline_class_name({"_class_name": "StableDiffusion3Pipeline"}) == "AttentionGuidedStableDiffusion3Pipeline"
    assert pipeline_class_name({"_class_name": "X", "transformer": ["diffusers", "FluxTransformer2DModel"]}) == "AttentionGuidedFluxPipeline"
    assert pipeline_class_name({"_class_name": "StableDiffusionXLPipeline"}) == "AttentionGuidedStableDiffusionXLPipeline"
    assert pipeline_class_name({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}) == "AttentionGuidedStableDiffusionPipeline"
    with pytest.raises(ValueError, match="transformer 'PixArtTransformer2DModel' is not supported"):
        pipeline_class_name({"_class_name": "PixArtAlphaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"]})
    pipe = tiny_flux_pipeline(seed=1)
    pipe.save_pretrained(tmp_path / "flux")
    loaded = load_pipeline(tmp_path / "flux")
    assert isinstance(loaded, AttentionGuidedFluxPipeline)
    loaded.set_progress_bar_config(disable=True)
    # the reloaded scheduler config differs from the in-memory one in defaults diffusers fills in (~1e-7 on latents)
    torch.testing.assert_close(generate(loaded).images, generate(pipe).images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_cli_generate_detects_the_family_and_matches_the_library_call(tmp_path, family):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from attnsynth.cli import app
    from attnsynth.t2i.testing import tiny_sd3_pipeline

    (tiny_flux_pipeline if family == "flux" else tiny_sd3_pipeline)(seed=0).save_pretrained(tmp_path / family)
    out, figure = tmp_path / "cat.png", tmp_path / "maps.png"
    args = ["t2i", "generate", "--model", tmp_path / family, "--prompt", PROMPT, "--subjects", "cat,sunflower", "--method", "ait2i",
            "--steps", 2, "--guided-steps", 1, "--step-size", 5, "--resolution", 32, "--device", "cpu", "--out", out, "--save-attention", figure]
    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exit_code == 0, (result.output, result.exception)
    pipe = load_pipeline(tmp_path / family)
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(PROMPT, subjects=["cat", "sunflower"], method="ait2i", num_inference_steps=2, guided_steps=1, step_size=5.0,
                  height=32, width=32, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert (np.asarray(Image.open(out).convert("RGB")) == np.asarray(direct.convert("RGB"))).all()
    assert figure.is_file()


def test_each_prompt_of_a_batch_is_guided_in_its_own_loss_frame(ours):
    prompts = ["a cat and a sunflower", "a dog"]
    latents = torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(3))  # packed: 8² tokens × 4 channels
    common = dict(method="attend-excite", guided_steps=1, refine_thresholds={})
    batch = generate(ours, prompt=prompts, subjects=[["cat", "sunflower"], ["dog"]], latents=latents, **common)
    for row, (prompt, subjects) in enumerate(zip(prompts, (["cat", "sunflower"], ["dog"]))):
        alone = generate(ours, prompt=prompt, subjects=subjects, latents=latents[row : row + 1], **common)
        torch.testing.assert_close(batch.losses["total"][0, row], alone.losses["total"][0, 0], rtol=1e-5, atol=1e-6)
