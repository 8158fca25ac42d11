"""Textual inversion (attnsynth.t2i.textual_inversion) and the shapes-world personalisation benchmark.

Tiny random SD pipelines from attnsynth.t2i.testing for the trainer; the shipped shapes model
(offline) for one short end-to-end benchmark call.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attnsynth.shapes_t2i.personalize import (
    PersonalizeBenchConfig,
    concept_data,
    concept_presence,
    personalize_markdown,
    personalize_prompts,
    run_personalize_benchmark,
    train_concept,
)
from attnsynth.t2i.testing import tiny_sd_pipeline
from attnsynth.t2i.textual_inversion import EMBEDS_FILE, TextualInversionConfig, train_textual_inversion
from attnsynth.toyworld.shapes import ALL_SHAPES, SHAPES, detect

CAPTIONS = ["a red <heart>", "a blue <heart>", "a <heart>", "a green <heart>"]


def _images():
    return torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [4, 3, 64, 64]


def _config(**overrides):
    settings = dict(placeholder="<heart>", initializer="circle", steps=4, batch_size=2, learning_rate=5e-2, checkpoint_every=2)
    settings.update(overrides)
    return TextualInversionConfig(**settings)


def test_only_the_new_row_is_learned_and_the_file_loads_with_diffusers(tmp_path):
    pipe = tiny_sd_pipeline(scheduler="ddim")
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()  # [V, D]
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = train_textual_inversion(pipe, _images(), CAPTIONS, _config(), out_dir=tmp_path)
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert after.shape[0] == before.shape[0] + 1 and torch.equal(after[:-1], before)  # no old row moved
    init = before[pipe.tokenizer.convert_tokens_to_ids("circle</w>")]
    assert not torch.allclose(result.embedding, init) and torch.equal(after[result.token_id], result.embedding)
    assert all(torch.equal(v, unet_before[k]) for k, v in pipe.unet.state_dict().items())
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))

    saved = load_file(str(tmp_path / EMBEDS_FILE))
    assert list(saved) == ["<heart>"] and saved["<heart>"].shape == (1, before.shape[1])
    assert json.loads((tmp_path / "textual_inversion.json").read_text())["placeholder"] == "<heart>"

    fresh = tiny_sd_pipeline(scheduler="ddim")
    fresh.load_textual_inversion(str(tmp_path), token="<heart>")
    token_id = fresh.tokenizer.convert_tokens_to_ids("<heart>")
    assert torch.allclose(fresh.text_encoder.get_input_embeddings().weight[token_id], result.embedding)
    call = dict(num_inference_steps=2, output_type="np")
    a = pipe("a red <heart> and a blue circle", generator=torch.Generator().manual_seed(1), **call).images
    b = fresh("a red <heart> and a blue circle", generator=torch.Generator().manual_seed(1), **call).images
    assert np.allclose(a, b, atol=1e-5)


def test_training_is_deterministic_and_resumes_bit_for_bit(tmp_path):
    straight = train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images(), CAPTIONS, _config(steps=4))
    again = train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images(), CAPTIONS, _config(steps=4))
    assert torch.equal(straight.embedding, again.embedding) and straight.losses == again.losses
    first = train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images(), CAPTIONS, _config(steps=2), out_dir=tmp_path)
    assert len(first.losses) == 2
    resumed = train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images(), CAPTIONS, _config(steps=4), out_dir=tmp_path)
    assert torch.equal(resumed.embedding, straight.embedding) and resumed.losses == straight.losses
    with pytest.raises(ValueError, match="other settings"):
        train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images(), CAPTIONS, _config(steps=6, seed=3), out_dir=tmp_path)


@pytest.mark.parametrize(
    "images, captions, config, message",
    [
        (torch.rand(4, 3, 64, 64) * 4, CAPTIONS, {}, "scaled to"),
        (torch.rand(4, 64, 64), CAPTIONS, {}, "images must be a tensor"),
        (None, CAPTIONS[:3], {}, "one caption per image"),
        (None, ["a red heart"] * 4, {}, "must contain the placeholder"),
        (None, [c.replace("<heart>", "circle</w>") for c in CAPTIONS], {"placeholder": "circle</w>"}, "already a token"),
        (None, CAPTIONS, {"initializer": "sunflower"}, "single token"),
    ],
)
def test_bad_input_is_rejected_before_training(images, captions, config, message):
    with pytest.raises(ValueError, match=message):
        train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images() if images is None else images, captions, _config(**config))


def test_config_checks():
    with pytest.raises(ValueError, match="placeholder"):
        TextualInversionConfig(placeholder="two words")
    with pytest.raises(ValueError, match="steps"):
        TextualInversionConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        TextualInversionConfig(learning_rate=0)


def test_concept_images_show_the_novel_shape_in_every_colour():
    images, captions = concept_data("heart", n=8, resolution=64)
    assert images.shape == (8, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    assert captions[0] == "a red <heart>" and all(c.endswith("<heart>") and "heart " not in c for c in captions)
    uint8 = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
    found = [[(d.shape, d.colour) for d in detect(im, shapes=ALL_SHAPES)] for im in uint8]
    assert [f[0][0] for f in found] == ["heart"] * 8 and len({f[0][1] for f in found}) == 8
    with pytest.raises(ValueError, match="shape must be one of"):
        concept_data("hexagon")


def test_personalize_prompts_combine_the_novel_shape_with_known_ones():
    prompts = personalize_prompts(2, 6)
    assert prompts == personalize_prompts(2, 6)
    for prompt, spec, _ in prompts:
        shapes_named = [o.shape for o in spec.objects]
        assert shapes_named.count("heart") == 1 and len(shapes_named) == 3 and prompt.count("heart") == 1
        assert all(s in SHAPES for s in shapes_named if s != "heart") and all(o.colour for o in spec.objects)
    with pytest.raises(ValueError, match="n_known"):
        personalize_prompts(4, 1)


def test_placeholder_prompts_resolve_for_guidance_even_before_a_comma():
    from attnsynth.shapes_t2i.personalize import with_placeholder
    from attnsynth.t2i.subjects import resolve_subjects

    pipe = tiny_sd_pipeline()
    pipe.tokenizer.add_tokens(["<heart>"])
    prompt, spec, _ = next(p for p in personalize_prompts(2, 20) if "heart," in p[0])
    text = with_placeholder(prompt, spec, "heart", "<heart>")
    assert "<heart> ," in text and "heart" not in text.replace("<heart>", "")
    assert pipe.tokenizer(text).input_ids == pipe.tokenizer(text.replace("<heart> ,", "<heart>,")).input_ids  # same ids
    groups = resolve_subjects(text, ["<heart>"], pipe.tokenizer)
    assert groups[0].token_indices == (pipe.tokenizer(text).input_ids.index(pipe.tokenizer.convert_tokens_to_ids("<heart>")),)


def test_personalize_benchmark_end_to_end_on_the_shipped_model(tmp_path):
    from attnsynth.shapes_t2i.model import load_t2i_pipeline

    pipe = load_t2i_pipeline()
    with pytest.raises(ValueError, match="no token"):
        run_personalize_benchmark(pipe, PersonalizeBenchConfig.for_pipeline(pipe, n_prompts=1, n_seeds=1))
    train_concept(pipe, _config(steps=2, batch_size=2, learning_rate=1e-3), n_images=4, out_dir=tmp_path)
    fresh = load_t2i_pipeline()
    fresh.load_textual_inversion(str(tmp_path), token="<heart>")
    config = PersonalizeBenchConfig.for_pipeline(fresh, n_prompts=1, n_seeds=1, known_counts=(1,), num_inference_steps=4, guided_steps=2)
    results = run_personalize_benchmark(fresh, config)
    assert set(results["methods"]) == {"control", "none", "attend-excite", "ait2i"}
    row = results["methods"]["ait2i"]["1"]
    assert row["images"] == 1 and 0 <= row["novel_shape"] <= 1 and row["novel_bound"] <= row["novel_shape"]
    assert "<heart>" not in results["prompts"]["1"][0] and "heart" in results["prompts"]["1"][0]
    table = personalize_markdown(results)
    assert table.count("\n") == 2 + 2 * 4 - 1 and "| 1 | ait2i | 1 |" in table
    presence = concept_presence(fresh, "<heart>", "heart", n_images=2, num_inference_steps=3)
    assert presence["images"] == 2 and 0 <= presence["in_colour"] <= presence["shape_shown"] <= 1
    assert all(shape in ALL_SHAPES for shape in presence["found_shapes"])


def test_cli_trains_a_concept_and_checks_the_bench_arguments(tmp_path):
    from typer.testing import CliRunner

    from attnsynth.cli import app

    runner = CliRunner()
    out = tmp_path / "ti"
    result = runner.invoke(app, ["personalize", "train", "--out", str(out), "--steps", "2", "--n-images", "2", "--batch-size", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert list(load_file(str(out / EMBEDS_FILE))) == ["<heart>"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (80, 64), (200, 30, 40)).save(folder / "a.png")
    result = runner.invoke(app, ["personalize", "train", "--out", str(tmp_path / "ti2"), "--images", str(folder), "--caption", "a {}",
                                 "--steps", "1", "--batch-size", "1", "--placeholder", "<red>"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["personalize", "bench", "--embeds", str(out), "--methods", "none,bogus"])
    assert result.exit_code != 0 and "methods" in str(result.exception)


def test_lora_variant_trains_a_unet_lora_that_diffusers_loads(tmp_path):
    from attnsynth.t2i.textual_inversion import LORA_FILE

    pipe = tiny_sd_pipeline(scheduler="ddim")
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    prior = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    config = _config(steps=2, lora_rank=2, lora_learning_rate=1e-2)
    result = train_textual_inversion(pipe, _images(), CAPTIONS, config, prior_images=prior,
                                     prior_captions=["a cat", "a dog", "a red circle"], out_dir=tmp_path)
    assert result.lora_path == tmp_path / LORA_FILE and result.lora_path.is_file()
    trained = pipe.unet.state_dict()
    frozen = {k.replace(".base_layer", ""): v for k, v in trained.items() if "lora_" not in k}
    assert frozen.keys() == base.keys() and all(torch.equal(v, base[k]) for k, v in frozen.items())  # base weights untouched
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in trained.items())  # B started at 0 and moved

    fresh = tiny_sd_pipeline(scheduler="ddim")
    from attnsynth.shapes_t2i.personalize import load_concept

    load_concept(fresh, tmp_path, "<heart>")
    call = dict(num_inference_steps=2, output_type="np")
    a = pipe("a red <heart>", generator=torch.Generator().manual_seed(1), **call).images
    b = fresh("a red <heart>", generator=torch.Generator().manual_seed(1), **call).images
    assert np.allclose(a, b, atol=1e-5)
    resumed_dir = tmp_path / "resume"
    train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images(), CAPTIONS, _config(steps=1, lora_rank=2, lora_learning_rate=1e-2),
                            prior_images=prior, prior_captions=["a cat", "a dog", "a red circle"], out_dir=resumed_dir)
    resumed = train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images(), CAPTIONS, config, prior_images=prior,
                                      prior_captions=["a cat", "a dog", "a red circle"], out_dir=resumed_dir)
    assert resumed.losses == result.losses and torch.equal(resumed.embedding, result.embedding)
    with pytest.raises(ValueError, match="go together"):
        train_textual_inversion(tiny_sd_pipeline(scheduler="ddim"), _images(), CAPTIONS, config, prior_images=prior)
