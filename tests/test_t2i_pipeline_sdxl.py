"""Attention-guided SDXL pipeline: exact without guidance, guided batches, restored processors, errors."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from attnsynth.t2i import AttentionGuidedStableDiffusionXLPipeline
from attnsynth.t2i.testing import tiny_sdxl_pipeline

PROMPTS = ["a cat and a dog", "a red circle and a blue square"]
STEPS = 4
GUIDED = 2


@pytest.fixture(scope="module")
def plain():
    return tiny_sdxl_pipeline(seed=0)


@pytest.fixture(scope="module")
def ours(plain):
    pipe = AttentionGuidedStableDiffusionXLPipeline.from_pipe(plain)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, prompt=PROMPTS, output_type="np", **kwargs):
    return pipe(prompt, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type=output_type, **kwargs)


def test_without_guidance_the_images_equal_plain_diffusers_exactly(plain, ours, monkeypatch):
    reference = _run(plain, num_images_per_prompt=2).images
    monkeypatch.setattr(StableDiffusionXLPipeline, "__call__", lambda *a, **k: pytest.fail("delegated to diffusers"))
    mine = _run(ours, num_images_per_prompt=2)
    assert np.array_equal(mine.images, reference) and mine.losses is None
    recorded = _run(ours, num_images_per_prompt=2, return_attention_maps=True)
    assert np.array_equal(recorded.images, reference)
    assert recorded.attention_maps.shape == (STEPS, 4, 8, 8, 77)


def test_guided_batch_changes_the_latents_and_restores_the_pipeline(plain, ours):
    processors = dict(ours.unet.attn_processors)
    reference = _run(plain, output_type="latent", num_images_per_prompt=2).images
    subjects = [["cat", "dog"], ["circle", "square"]]
    guided = _run(ours, output_type="latent", num_images_per_prompt=2, subjects=subjects, method="ait2i", guided_steps=GUIDED, step_size=200.0)
    assert guided.losses["total"].shape == (GUIDED, 4) and torch.isfinite(guided.losses["total"]).all()
    assert [[g.name for g in groups] for groups in guided.subjects] == subjects
    change = (guided.images - reference).abs().flatten(1).amax(1)
    assert (change > 1e-3).all()  # every image of the batch is guided
    assert all(ours.unet.attn_processors[k] is v for k, v in processors.items())
    assert torch.equal(_run(ours, output_type="latent", num_images_per_prompt=2).images, reference)


def test_guided_pass_feeds_conditional_rows_and_stops_early(ours):
    seen, calls = [], []
    pre = ours.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].shape[0]), with_kwargs=True)
    post = ours.unet.up_blocks[-1].register_forward_hook(lambda *args: calls.append(1))
    try:
        _run(ours, PROMPTS[0], subjects=["cat", "dog"], method="attend-excite", guided_steps=GUIDED, refine_thresholds={})
    finally:
        pre.remove()
        post.remove()
    assert seen == [1, 2] * GUIDED + [2] * (STEPS - GUIDED)  # guided pass: conditional row only
    assert len(calls) == STEPS


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="ait2i", subjects=["bird"]), "bird"),
        (dict(method="layout", subjects=["cat"]), "boxes is None"),
        (dict(method="ait2i", subjects=["cat"], step_size="big"), "step_size"),
        (dict(method="ait2i", subjects=["cat", "dog", "cat"]), "share the word 'cat'"),
        (dict(method="ait2i", subjects=["cat", "dog"]), None),
    ],
)
def test_bad_input_is_rejected_before_any_compute(ours, monkeypatch, kwargs, message):
    monkeypatch.setattr(ours.text_encoder, "forward", lambda *a, **k: pytest.fail("computed before checking"))
    if message is None:  # a valid call gets past the checks and reaches the text encoder
        with pytest.raises(pytest.fail.Exception, match="computed before checking"):
            ours(PROMPTS[0], num_inference_steps=STEPS, **kwargs)
        return
    with pytest.raises(ValueError, match=message) as info:
        ours(PROMPTS[0], num_inference_steps=STEPS, **kwargs)
    assert "\n" not in str(info.value)
