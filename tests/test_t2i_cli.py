"""`attnsynth t2i generate` on tiny SD/SDXL pipelines saved to disk: single, batch, figure, errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnsynth.cli import app
from attnsynth.cli.t2i import parse_boxes, parse_subjects
from attnsynth.t2i.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_sd_pipeline(seed=0).save_pretrained(root / "sd")
    tiny_sdxl_pipeline(seed=0).save_pretrained(root / "sdxl")
    return root


def _generate(*args):
    result = runner.invoke(app, ["t2i", "generate", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def _png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _direct(model_dir, prompt, seed, **kwargs):
    from attnsynth.t2i import load_pipeline

    pipe = load_pipeline(model_dir)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kwargs).images[0]
    return np.round(image * 255).astype(np.uint8)


def test_single_image_matches_the_library_call_and_draws_the_attention_figure(models, tmp_path):
    out, figure = tmp_path / "out.png", tmp_path / "maps.png"
    _generate(
        "--model", models / "sd", "--prompt", "a cat and a dog", "--subjects", "cat,dog", "--method", "ait2i",
        "--seed", 3, "--steps", 4, "--guided-steps", 2, "--step-size", 50, "--guidance-scale", 5.0,
        "--resolution", 48, "--device", "cpu", "--out", out, "--save-attention", figure,
    )
    expected = _direct(
        models / "sd", "a cat and a dog", 3, subjects=["cat", "dog"], method="ait2i", num_inference_steps=4,
        guided_steps=2, step_size=50.0, guidance_scale=5.0, height=48, width=48,
    )
    assert np.array_equal(_png(out), expected)
    rows = 2 * 2  # (guided, unguided) × (cat, dog)
    assert _png(figure).shape[0] == 16 + 64 * rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.png", "out.png"]  # no temp files left


def test_sdxl_directory_is_detected_and_plain_mode_matches(models, tmp_path):
    out = tmp_path / "xl.png"
    _generate("--model", models / "sdxl", "--prompt", "a red circle", "--method", "none", "--steps", 3, "--dtype", "float32", "--out", out)
    assert np.array_equal(_png(out), _direct(models / "sdxl", "a red circle", 0, num_inference_steps=3))


def test_batch_mode_writes_one_file_per_prompt_and_seed(models, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat and a dog\n# a comment\n\na red circle and a blue square | circle,square\n")
    out_dir = tmp_path / "images"
    _generate(
        "--model", models / "sd", "--prompt-file", prompts, "--subjects", "cat,dog", "--method", "attend-excite",
        "--steps", 3, "--guided-steps", 1, "--seed", 5, "--num-seeds", 2, "--out-dir", out_dir,
    )
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == [
        "0000_a-cat-and-a-dog_seed5.png",
        "0000_a-cat-and-a-dog_seed6.png",
        "0001_a-red-circle-and-a-blue-square_seed5.png",
        "0001_a-red-circle-and-a-blue-square_seed6.png",
    ]
    assert not np.array_equal(_png(out_dir / names[0]), _png(out_dir / names[1]))


def test_layout_boxes_and_bfloat16_run(models, tmp_path):
    out = tmp_path / "layout.png"
    _generate(
        "--model", models / "sd", "--prompt", "a cat and a dog", "--subjects", "cat,dog", "--method", "layout",
        "--boxes", "cat=0,0,0.5,1;dog=0.5,0,1,1", "--steps", 2, "--guided-steps", 1, "--dtype", "bfloat16", "--out", out,
    )
    assert _png(out).shape == (64, 64, 3)


@pytest.mark.parametrize(
    "args, error, message",
    [
        (["--prompt", "a cat and a dog", "--subjects", "bird"], ValueError, "bird"),
        (["--prompt", "a cat", "--prompt-file", "p.txt"], ValueError, "exactly one of --prompt"),
        (["--prompt", "a cat", "--method", "magic"], ValueError, "--method 'magic'"),
        (["--prompt", "a cat and a dog", "--subjects", "cat", "--method", "layout", "--boxes", "cat=0,0,1"], ValueError, "--boxes entry"),
        (["--prompt", "a cat", "--resolution", "0"], ValueError, "--resolution"),
        (["--prompt", "a cat", "--token-softmax", "some"], ValueError, "--token-softmax 'some'"),
    ],
)
def test_user_errors_are_one_line_and_write_nothing(models, tmp_path, args, error, message):
    out = tmp_path / "x.png"
    with pytest.raises(error, match=message) as info:
        _generate("--model", models / "sd", *args, "--steps", 2, "--out", out)
    assert "\n" not in str(info.value) and not out.exists()


def test_missing_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        _generate("--model", tmp_path / "nope", "--prompt", "a cat", "--out", tmp_path / "x.png")


def test_subject_and_box_syntax():
    assert parse_subjects("cat, dog") == ["cat", "dog"]
    assert parse_subjects("cat/kitten,teddy bear") == [["cat", "kitten"], "teddy bear"]
    assert parse_subjects("auto") == "auto" and parse_subjects(None) is None
    assert parse_boxes("cat=0,0,0.5,1") == {"cat": (0.0, 0.0, 0.5, 1.0)}
    with pytest.raises(ValueError, match="--subjects"):
        parse_subjects("cat,,dog")


def test_settings_saved_with_the_model_fill_in_what_the_command_leaves_out(models, tmp_path):
    import json
    import shutil

    from attnsynth.t2i import RECOMMENDED_SETTINGS_FILE

    model = tmp_path / "tuned"
    shutil.copytree(models / "sd", model)
    recommended = {"num_inference_steps": 3, "guidance_scale": 2.5, "attention_res": [8, 8], "guided_steps": 5,
                   "step_size": 7.0, "height": 32, "width": 32}
    (model / RECOMMENDED_SETTINGS_FILE).write_text(json.dumps(recommended))
    out = tmp_path / "out.png"
    _generate("--model", model, "--prompt", "a cat and a dog", "--subjects", "cat,dog", "--device", "cpu", "--out", out)
    expected = _direct(model, "a cat and a dog", 0, subjects=["cat", "dog"], method="ait2i", num_inference_steps=3,
                       guided_steps=3, step_size=7.0, guidance_scale=2.5, height=32, width=32, attention_res=(8, 8))
    assert np.array_equal(_png(out), expected)  # guided steps capped at the step count
    other = _direct(model, "a cat and a dog", 0, subjects=["cat", "dog"], method="ait2i", num_inference_steps=3,
                    guided_steps=3, step_size=7.0, guidance_scale=2.5, height=32, width=32)  # default grid (4²) instead
    assert not np.array_equal(expected, other)
    recommended["step_size"] = {"ait2i": 7.0, "attend-excite": 30.0}  # per method
    (model / RECOMMENDED_SETTINGS_FILE).write_text(json.dumps(recommended))
    per_method = tmp_path / "per_method.png"
    _generate("--model", model, "--prompt", "a cat and a dog", "--subjects", "cat,dog", "--device", "cpu", "--out", per_method)
    assert np.array_equal(_png(per_method), expected)
    flags = tmp_path / "flags.png"  # flags win over the saved settings
    _generate("--model", model, "--prompt", "a cat and a dog", "--subjects", "cat,dog", "--device", "cpu", "--out", flags,
              "--steps", 4, "--guidance-scale", 5.0, "--attention-res", 12, "--step-size", 50, "--guided-steps", 2, "--resolution", 48)
    assert np.array_equal(_png(flags), _direct(model, "a cat and a dog", 0, subjects=["cat", "dog"], method="ait2i", num_inference_steps=4,
                                               guided_steps=2, step_size=50.0, guidance_scale=5.0, height=48, width=48, attention_res=(12, 12)))


def test_token_softmax_variant_reaches_the_pipeline(models, tmp_path):
    out = tmp_path / "variant.png"
    args = dict(subjects=["cat", "dog"], method="attend-excite", num_inference_steps=4, guided_steps=2, step_size=50.0, height=48, width=48)
    _generate("--model", models / "sd", "--prompt", "a cat and a dog", "--subjects", "cat,dog", "--method", "attend-excite",
              "--seed", 1, "--steps", 4, "--guided-steps", 2, "--step-size", 50, "--resolution", 48, "--token-softmax", "prompt",
              "--out", out)
    variant = _direct(models / "sd", "a cat and a dog", 1, token_softmax="prompt", **args)
    assert np.array_equal(_png(out), variant)
    assert not np.array_equal(variant, _direct(models / "sd", "a cat and a dog", 1, **args))  # the flag changes the loss
