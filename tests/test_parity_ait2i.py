"""``method="ait2i"`` against numbers recorded from the authors' own AI-T2I pipeline.

Where the numbers come from (``tests/data/parity/ait2i_official.safetensors`` + ``.json``;
numbers only, none of the authors' code or text is in this project):

* Code: GitHub Hatter77/AI-T2I at commit bf7ebd9, ``pipeline_ait2i.py`` (class
  ``AttendAndExcitePipeline``) with its ``utils/ptp_utils.py`` (``AttentionStore``,
  ``register_attention_control``, ``aggregate_attention``) and ``utils/gaussian_smoothing.py``.
  It was run in a scratch directory outside this repository, patched only to run on CPU: the
  unused imports (nltk, sklearn, torchvision, cv2, IPython, its vis_utils) removed and
  ``.cuda()`` dropped from the smoothing kernel.
* Environment: its own venv, ``python3 -m venv v012; v012/bin/pip install torch==2.13.0
  diffusers==0.12.1 transformers==4.26.0 huggingface_hub==0.20.3 "numpy<2"``, on a 2-vCPU CPU
  machine (2026-12-01).
* Weights: ``tiny_sd_components(unet_config=sd14_map_shaped_unet_config(), seed=0)`` from
  :mod:`attnsynth.t2i.testing` (UNet Down / CrossAttnDown / CrossAttnDown, channels 32/64/64, 2
  layers per block, 8 heads, latent 32², so the 16×16 maps are the mean of 2 down + 3 up layers as
  SD 1.4 at 512²; a 2-layer CLIP text encoder; the generated CLIP BPE tokenizer), built with this
  project's diffusers 0.42 and saved as state dicts + configs; loaded into diffusers 0.12 models
  built from the same configs (the text encoder's keys prefixed with ``text_model.``; the VAE
  mid-block attention keys renamed ``to_q/to_k/to_v/to_out.0`` → ``query/key/value/proj_attn``),
  strict loading, and the token ids checked equal.
* Run (scratch scripts ``make_components.py`` → ``run_official.py`` → ``export_testdata.py``):
  prompt "a red cat and a blue dog", ``indices_to_alter=[3, 7]`` (the authors' run.py
  hard-codes [3, 7]; the tokens before them, "red" and "blue", are its adjectives), initial
  latents ``torch.randn(1, 4, 32, 32, generator=manual_seed(0))``, PNDM (skip_prk_steps, SD's
  scaled-linear betas, steps_offset 1) 50 steps, CFG 7.5, 64×64 output, the pipeline's defaults
  otherwise (scale_factor 20, scale_range (1.0, 0.5), guidance at steps i < 25). The per-step loss
  was read by wrapping ``compute_multi_token_loss`` (the authors print it to 4 decimals), the
  final latents by the pipeline's ``callback``; an unguided run (``run_standard_sd=True``) gives
  the diffusers 0.12 → 0.42 floor.
* Per-term numbers: on two seeded maps ``[16, 16, 77]`` (stored here; per-pixel noise
  ``softmax(3·randn)``, and smooth blobs from bicubically upsampled 4×4 noise), each term as
  ``compute_multi_token_loss`` forms it — ``1 − compute_centroid_distance_loss``, the two
  ``compute_radius_centroid_loss`` summed, ``_compute_loss_2token_max(process_cross(...))``, the two
  ``compute_adjective_alignment_loss`` summed — and the total, with ``torch.autograd.grad`` of each
  with respect to the maps (stored sparse: the nonzero entries).

Everything is float32, as the authors' pipeline runs (their smoothing kernel is float32-only) and
as attnsynth computes its losses; measured differences are ≤ 1e-6 per term, 3.4e-5 on the final
latents (the unguided floor is 4.2e-5), 1e-6 on the per-step losses. Before the parity fix
(commit c385f68) the same checks were off by 0.19 (final latents) and 0.92 (step losses).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnsynth.t2i.losses import guidance_loss
from attnsynth.t2i.subjects import count_prompt_tokens, resolve_subjects
from attnsynth.t2i.testing import sd14_map_shaped_unet_config, tiny_sd_components, tiny_tokenizer

DATA = Path(__file__).parent / "data" / "parity"
TERMS = ("isolation", "aggregation", "excitation", "attribute", "total")


@pytest.fixture(scope="module")
def official():
    meta = json.loads((DATA / "ait2i_official.json").read_text(encoding="utf-8"))
    return meta, load_file(str(DATA / "ait2i_official.safetensors"))


def _dense_gradient(tensors, name, shape):
    grad = torch.zeros(shape)
    index = tensors[f"{name}_index"].long()
    grad[tuple(index.T)] = tensors[f"{name}_value"]
    return grad


def _terms(maps, prompt_length):
    """attnsynth's ait2i total and parts for the recorded prompt's two subjects (maps [H, W, T])."""
    tokenizer = tiny_tokenizer()
    groups = resolve_subjects("a red cat and a blue dog", ["cat", "dog"], tokenizer)
    assert [(g.token_indices, g.attribute_indices) for g in groups] == [((3,), (2,)), ((7,), (6,))]
    total, parts = guidance_loss("ait2i", maps[None], groups, prompt_length=prompt_length)
    return {**parts, "total": total}


@pytest.mark.parametrize("maps_name", ["maps0", "maps1"])
def test_ait2i_terms_and_gradients_equal_the_authors(official, maps_name):
    meta, tensors = official
    maps = tensors[maps_name].clone().requires_grad_(True)  # [16, 16, 77]
    ours = _terms(maps, prompt_length=None)
    for term in TERMS:
        expected = meta["terms"][maps_name][term]
        torch.testing.assert_close(ours[term][0].item(), expected, atol=2e-6, rtol=0, msg=f"{maps_name} {term} value")
        (grad,) = torch.autograd.grad(ours[term].sum(), [maps], retain_graph=True)
        reference = _dense_gradient(tensors, f"{maps_name}_grad_{term}", maps.shape)
        torch.testing.assert_close(grad, reference, atol=1e-5, rtol=0, msg=f"{maps_name} {term} gradient")


def test_the_prompt_token_softmax_variant_is_not_the_authors_excitation(official):
    # The named variant (token_softmax="prompt") renormalises over the prompt's 7 words instead
    # of the 75 positions [1:-1]: measurably a different term, so the default must not be it.
    meta, tensors = official
    maps = tensors["maps1"]
    length = count_prompt_tokens("a red cat and a blue dog", tiny_tokenizer())
    variant = _terms(maps, prompt_length=length)["excitation"][0].item()
    assert abs(variant - meta["terms"]["maps1"]["excitation"]) > 0.1


def test_ait2i_pipeline_equals_the_authors_end_to_end(official):
    # 50 PNDM steps of the tiny SD-1.4-map-shaped pipeline, guided at the first 25: about 6 s of CPU.
    from attnsynth.t2i.pipeline_sd import AttentionGuidedStableDiffusionPipeline

    _, tensors = official
    components = tiny_sd_components(unet_config=sd14_map_shaped_unet_config(), seed=0)
    pipe = AttentionGuidedStableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    settings = dict(num_inference_steps=50, guidance_scale=7.5, height=64, width=64, output_type="latent")
    out = pipe(
        "a red cat and a blue dog",
        latents=tensors["initial_latents"].clone(),
        method="ait2i",
        subjects=["cat", "dog"],
        attention_res=(16, 16),
        **settings,
    )
    # Guidance moves these latents by 0.29; diffusers 0.12 → 0.42 alone differs by 4e-5.
    torch.testing.assert_close(out.images, tensors["final_latents"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.losses["total"][:, 0], tensors["step_losses"], atol=1e-4, rtol=0)


def test_token_softmax_option_sets_the_slice_and_rejects_unknown_values():
    from attnsynth.t2i.guidance import plan_subjects

    tokenizer = tiny_tokenizer()
    common = dict(method="ait2i", prompt="a red cat and a blue dog", subjects=["cat", "dog"], tokenizer=tokenizer)
    assert plan_subjects(**common)[0].prompt_length is None  # default: the authors' [1:-1]
    assert plan_subjects(**common, token_softmax="prompt")[0].prompt_length == 9  # BOS + 7 words + EOS
    with pytest.raises(ValueError, match="token_softmax='words' is invalid"):
        plan_subjects(**common, token_softmax="words")
