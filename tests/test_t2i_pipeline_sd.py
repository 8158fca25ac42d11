"""Attention-guided SD pipeline: exact without guidance, reproduces diffusers' A&E, batches, errors."""

import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from attnsynth.t2i import AttentionGuidedStableDiffusionPipeline
from attnsynth.t2i.losses import DEFAULT_WEIGHTS
from attnsynth.t2i.testing import tiny_sd_pipeline

PROMPT = "a cat and a dog"
STEPS = 6
GUIDED = 3


@pytest.fixture(scope="module")
def plain():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def ours(plain):
    pipe = AttentionGuidedStableDiffusionPipeline.from_pipe(plain)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def attend_and_excite(plain):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import StableDiffusionAttendAndExcitePipeline

        pipe = StableDiffusionAttendAndExcitePipeline.from_pipe(plain)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _run(pipe, prompt=PROMPT, seed=0, output_type="np", **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=_gen(seed), output_type=output_type, **kwargs)


def test_without_guidance_the_images_equal_plain_diffusers_exactly(plain, ours):
    prompts = [PROMPT, "a red circle and a blue square"]
    reference = _run(plain, prompts, num_images_per_prompt=2).images
    mine = _run(ours, prompts, num_images_per_prompt=2)
    assert np.array_equal(mine.images, reference)
    assert mine.losses is None and mine.attention_maps is None
    # Recording maps keeps the images exact too (the original processors still make the outputs).
    recorded = _run(ours, prompts, num_images_per_prompt=2, subjects=["cat", "circle"], return_attention_maps=True)
    assert np.array_equal(recorded.images, reference)
    assert recorded.attention_maps.shape == (STEPS + 1, 4, 8, 8, 77)  # PNDM: one timestep more than steps
    torch.testing.assert_close(recorded.attention_maps.sum(-1), torch.ones(STEPS + 1, 4, 8, 8))


def test_our_loop_is_not_the_parent_call(ours, monkeypatch):
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", lambda *a, **k: pytest.fail("delegated to diffusers"))
    assert _run(ours).images.shape == (1, 64, 64, 3)


def _final_latents_and_images(pipe, **kwargs):
    """Run ``pipe`` once; keep its last latents through the step-end callback (legacy callback for A&E)."""
    latents = []
    if "token_indices" in kwargs:  # diffusers' A&E only has the legacy callback
        kwargs["callback"] = lambda i, t, z: latents.append(z)
    else:
        kwargs["callback_on_step_end"] = lambda p, i, t, kw: latents.append(kw["latents"]) or {}
    images = _run(pipe, **kwargs).images
    return latents[-1], images


@pytest.mark.parametrize("refine", [False, True], ids=["no-refinement", "refinement"])
def test_attend_excite_reproduces_diffusers(plain, ours, attend_and_excite, refine):
    common = dict(num_images_per_prompt=2)
    guided = dict(subjects=["cat", "dog"], method="attend-excite", guided_steps=GUIDED, step_size=200.0)
    thresholds = {}
    if refine:  # a target between the two images' first losses: image 0 refines a few times, image 1 not at all
        first = _run(ours, output_type="latent", refine_thresholds={}, **guided, **common).losses["total"][0]
        assert first[0] > first[1] + 2e-4
        thresholds = {0: 1.0 - (first[0].item() - 1.5e-4)}
    calls = []
    hook = ours.unet.mid_block.register_forward_hook(lambda *args: calls.append(1))
    try:
        mine_latents, mine_images = _final_latents_and_images(ours, refine_thresholds=thresholds, **guided, **common)
    finally:
        hook.remove()
    ref_latents, ref_images = _final_latents_and_images(
        attend_and_excite, token_indices=[2, 5], attn_res=(8, 8), max_iter_to_alter=GUIDED, scale_factor=200, thresholds=thresholds, **common
    )
    plain_latents, _ = _final_latents_and_images(plain, **common)
    effect = (ref_latents - plain_latents).abs().max().item()
    gap = (mine_latents - ref_latents).abs().max().item()
    assert effect > 1e-2 and gap < 5e-4 and gap < effect / 100
    assert np.abs(mine_images - ref_images).max() < 2e-3
    refinement_passes = len(calls) - (STEPS + 1) - GUIDED
    assert (1 <= refinement_passes < 20) if refine else refinement_passes == 0


def test_attend_excite_matches_per_prompt_for_several_prompts(ours, attend_and_excite):
    prompts = [PROMPT, "a red circle and a blue square"]
    reference = _run(attend_and_excite, prompts, token_indices=[[2, 5], [3, 7]], attn_res=(8, 8), max_iter_to_alter=GUIDED, scale_factor=200, thresholds={}, output_type="latent").images
    mine = _run(ours, prompts, subjects=[["cat", "dog"], ["circle", "square"]], method="attend-excite", guided_steps=GUIDED, step_size=200.0, refine_thresholds={}, output_type="latent").images
    assert (mine - reference).abs().max() < 5e-4


def test_ait2i_guides_lowers_its_loss_and_leaves_the_pipeline_plain_afterwards(plain, ours):
    processors = dict(ours.unet.attn_processors)
    flags = [p.requires_grad for p in ours.unet.parameters()]
    reference = _run(plain).images
    guided = _run(ours, subjects=["cat", "dog"], method="ait2i", guided_steps=GUIDED, step_size=200.0)
    assert np.abs(guided.images - reference).max() > 1e-3
    assert set(guided.losses) == {"total", *(k for k, w in DEFAULT_WEIGHTS["ait2i"].items() if w)}
    assert guided.losses["total"].shape == (GUIDED, 1) and torch.isfinite(guided.losses["total"]).all()
    assert all(ours.unet.attn_processors[k] is v for k, v in processors.items())
    assert [p.requires_grad for p in ours.unet.parameters()] == flags
    assert all(p.grad is None for p in ours.unet.parameters())
    assert np.array_equal(_run(ours).images, reference)


def test_one_guided_update_lowers_the_loss(ours):
    from attnsynth.attention.capture import AttentionCapture
    from attnsynth.t2i.guidance import LatentGuidance, plan_subjects
    from attnsynth.t2i.schedule import GuidanceSchedule

    unet, text = ours.unet, ours.encode_prompt(PROMPT, "cpu", 1, False)[0]
    prompts = plan_subjects(method="ait2i", prompt=PROMPT, subjects=["cat", "dog"], tokenizer=ours.tokenizer)
    with AttentionCapture(unet, latent_size=(32, 32)) as capture:
        guide = LatentGuidance(
            method="ait2i", schedule=GuidanceSchedule(num_inference_steps=1, guided_steps=1, step_size=2.0), prompts=prompts, capture=capture, unet=unet
        )

        def forward(z):
            unet(z, 500, encoder_hidden_states=text)

        z0 = torch.randn(1, 4, 32, 32, generator=_gen())
        with torch.no_grad():
            z1 = guide.update(z0, 0, forward)
            with torch.enable_grad():
                before = guide.loss(z0.clone().requires_grad_(True), forward)[0]
                after = guide.loss(z1.clone().requires_grad_(True), forward)[0]
    assert not z1.requires_grad and not torch.equal(z0, z1)
    assert after.item() < before.item()


def test_guided_pass_stops_before_the_last_up_block(ours):
    calls = []
    hook = ours.unet.up_blocks[-1].register_forward_hook(lambda *args: calls.append(1))
    try:
        _run(ours, subjects=["cat", "dog"], method="ait2i", guided_steps=GUIDED)
    finally:
        hook.remove()
    assert len(calls) == STEPS + 1  # only the ordinary denoising passes (PNDM: steps + 1) reach it


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(plain, ours):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == STEPS else {}

    out = _run(ours, subjects=["cat", "dog"], method="ait2i", guided_steps=GUIDED, callback_on_step_end=callback, output_type="latent")
    assert seen == list(range(STEPS + 1))
    assert torch.equal(out.images, torch.zeros_like(out.images))


def test_divide_bind_and_layout_run_in_batches(ours):
    # the opt-in binding term on; no refinement (the authors' step-0 refinement runs 100 updates here)
    out = _run(ours, [PROMPT, PROMPT], subjects=[["cat", "dog"], ["dog"]], method="divide-bind", guided_steps=2,
               loss_weights={"binding": 1.0}, refine_thresholds={})
    assert set(out.losses) == {"total", "attendance", "binding"} and out.losses["total"].shape == (2, 2)
    boxes = {"cat": (0.0, 0.0, 0.5, 1.0), "dog": (0.5, 0.0, 1.0, 1.0)}
    out = _run(ours, subjects=["cat", "dog"], method="layout", boxes=boxes, guided_steps=2, refine_thresholds={})
    assert "box" in out.losses and out.subjects[0][0].name == "cat"


def test_from_pipe_works_after_textual_inversion(plain):
    personal = tiny_sd_pipeline(seed=0)
    width = personal.text_encoder.get_input_embeddings().weight.shape[1]
    personal.load_textual_inversion({"<toy>": torch.randn(width, generator=_gen(3))}, token="<toy>")
    guided = AttentionGuidedStableDiffusionPipeline.from_pipe(personal)
    guided.set_progress_bar_config(disable=True)
    prompt = "a <toy> and a dog"
    assert np.array_equal(_run(guided, prompt).images, _run(personal, prompt).images)
    out = _run(guided, prompt, subjects=["<toy>", "dog"], method="ait2i", guided_steps=2)
    toy_id = personal.tokenizer.convert_tokens_to_ids("<toy>")
    ids = personal.tokenizer(prompt).input_ids
    assert [ids[i] for i in out.subjects[0][0].token_indices] == [toy_id]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="excite"), "method='excite' is unknown"),
        (dict(method="ait2i", subjects=["cat", "dog"], boxes={"cat": (0, 0, 1, 1)}), "boxes were given"),
        (dict(method="layout", subjects=["cat"], boxes={"cat": (0, 0, 1.5, 1)}), r"boxes\['cat'\]"),
        (dict(method="layout", subjects=["cat"], boxes={"bird": (0, 0, 1, 1)}), "boxes has subject 'bird'"),
        (dict(method="ait2i", subjects=["bird"]), "bird"),
        (dict(method="ait2i", subjects=["cat"], prompt="a cat " + "and a dog " * 30), "limit is 77"),
        (dict(method="ait2i", subjects=["cat"], guided_steps=STEPS + 1), "guided_steps"),
        (dict(method="ait2i", subjects=["cat"], attention_res=(3, 3)), "attention_res"),
        (dict(method="ait2i", subjects=["cat"], loss_weights={"box": 1.0}), "loss_weights has term 'box'"),
        (dict(method="ait2i"), "needs at least one subject"),
        (dict(guided_steps=3), "method is None"),
    ],
)
def test_bad_guidance_input_is_a_one_line_error_before_any_compute(ours, monkeypatch, kwargs, message):
    monkeypatch.setattr(ours.text_encoder, "forward", lambda *a, **k: pytest.fail("computed before checking"))
    prompt = kwargs.pop("prompt", PROMPT)
    with pytest.raises(ValueError, match=message) as info:
        ours(prompt, num_inference_steps=STEPS, **kwargs)
    assert "\n" not in str(info.value)


def test_tiny_tokenizer_has_whole_words_and_multi_token_words():
    from attnsynth.t2i.testing import MULTI_TOKEN_WORDS, VOCABULARY, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a red circle and a blue square").input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "and</w>", "a</w>", "blue</w>", "square</w>", "<|endoftext|>"]
    assert all(len(tokenizer(word).input_ids) == 3 for word in VOCABULARY)
    for word, pieces in MULTI_TOKEN_WORDS.items():
        assert tokenizer.convert_ids_to_tokens(tokenizer(word).input_ids)[1:-1] == [*pieces[:-1], pieces[-1] + "</w>"]
    assert len(tokenizer("a giraffe").input_ids) > 4  # unknown words fall back to smaller pieces


def test_sd15_shaped_unet_has_the_layout_and_size_of_the_benchmark():
    from diffusers import UNet2DConditionModel

    from attnsynth.attention.capture import cross_attention_layers
    from attnsynth.t2i.testing import sd15_shaped_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_shaped_unet_config(0.1))
    assert 8.0e6 < sum(p.numel() for p in unet.parameters()) < 9.0e6
    grids = sorted({layer.grid((64, 64)) for layer in cross_attention_layers(unet)})
    assert grids == [(8, 8), (16, 16), (32, 32), (64, 64)]  # 3 levels + the mid block, as SD 1.5
    assert len(cross_attention_layers(unet)) == 16
