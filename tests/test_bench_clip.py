"""`attnsynth bench clip`: the Attend-and-Excite CLIP protocol, offline on tiny random CLIP / BLIP / SD models.

Reference numbers (AUTHORS_*) were recorded by running the authors' own metric scripts
(yuval-alaluf/Attend-and-Excite ``metrics/compute_clip_similarity.py`` and
``metrics/blip_captioning_and_clip_similarity.py``, unmodified, in a scratch directory outside
this repository) on the images of :func:`_write_reference_images`, with OpenAI's ``clip`` module
replaced by a thin adapter over :func:`_tiny_clip` (``encode_text`` / ``encode_image`` =
``get_text_features`` / ``get_image_features``, ``clip.tokenize`` = the tiny tokenizer padded to 77,
``preprocess`` = the tiny CLIPProcessor) and LAVIS' captioner by :func:`_caption_for` (a caption chosen
from the image's mean pixel value). So these tests check everything the authors' code does on
top of the two networks: templates and their clean-up, normalisation, prompt splitting,
caption embedding without templates, and aggregation.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnsynth.metrics.clip_score import IMAGENET_TEMPLATES, BlipCaptioner, ClipScorer, split_prompt, template_texts
from attnsynth.t2i.clip_bench import (
    ANIMALS,
    OBJECTS,
    ClipPrompt,
    clip_markdown,
    generate_images,
    mean_interval,
    protocol_prompts,
    read_prompts_file,
    score_folders,
)

REFERENCE_PROMPTS = ("a cat and a dog", "a red car with a blue bowl")
AUTHORS_FULL_TEXT = 0.24777908623218536  # clip_aggregated_metrics.json: full_text_aggregation
AUTHORS_MIN_OBJECT = 0.1776159629225731  # min_first_second_aggregation
AUTHORS_TEXT_TEXT = 0.8519771099090576  # blip_aggregated_metrics.json: average_similarity
AUTHORS_PER_IMAGE_FULL = {"a cat and a dog": [0.2601984143257141, 0.24233397841453552, 0.323947012424469],
                          "a red car with a blue bowl": [0.22353583574295044, 0.20603615045547485, 0.23062312602996826]}
_CAPTIONS = ["a cat on the grass", "a dog and a cat", "a red car"]


def _caption_for(image):
    return _CAPTIONS[int(np.asarray(image, dtype=np.float64).mean() / 255.0 * 1000) % 3]


def _tiny_clip(directory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from attnsynth.t2i.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tok)
    processor.save_pretrained(directory)
    return directory


def _tiny_blip(directory):
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    directory.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "picture", "of", "cat", "dog", "and", "red", "car", "on", "the"]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(directory / "vocab.txt"), bos_token="[DEC]")
    config = BlipConfig(text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                         max_position_embeddings=64, bos_token_id=5, sep_token_id=3, pad_token_id=0, encoder_hidden_size=32),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
                        projection_dim=16)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).eval().save_pretrained(directory)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(directory)
    return directory


def _write_reference_images(root):
    for prompt in REFERENCE_PROMPTS:
        (root / prompt).mkdir(parents=True, exist_ok=True)
        for seed in range(3):
            rng = np.random.default_rng(1000 * len(prompt) + seed)
            Image.fromarray((rng.random((48, 40, 3)) * 255).astype(np.uint8)).save(root / prompt / f"{seed}.png")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_models")
    return {"clip": _tiny_clip(root / "clip"), "blip": _tiny_blip(root / "blip")}


def test_scores_match_the_authors_metric_scripts(models, tmp_path):
    scorer = ClipScorer.from_directory(models["clip"])
    results = score_folders({"x": _write_reference_images(tmp_path / "outputs")}, scorer,
                            captioner=lambda images: [_caption_for(im) for im in images])
    for prompt, values in AUTHORS_PER_IMAGE_FULL.items():
        assert np.allclose(results["raw"]["x"][prompt]["full_text"], values, atol=1e-5)
    everything = next(r for r in results["table"] if r["prompt_set"] == "all")
    assert everything["images"] == 6 and everything["prompts"] == 2
    assert everything["full_text"][0] == pytest.approx(AUTHORS_FULL_TEXT, abs=1e-5)
    assert everything["min_object"][0] == pytest.approx(AUTHORS_MIN_OBJECT, abs=1e-5)
    assert everything["text_text"][0] == pytest.approx(AUTHORS_TEXT_TEXT, abs=1e-5)
    assert {r["prompt_set"] for r in results["table"]} == {"animals", "other", "all"}
    table = clip_markdown(results)
    assert "| all | x | 2 | 6 | 0.2478 [" in table and "text–text" in table


def test_prompt_helpers():
    assert split_prompt("a cat and a dog") == ("a cat", "a dog")
    assert split_prompt("a cat with a red bow") == ("a cat", "a red bow")
    with pytest.raises(ValueError, match="neither"):
        split_prompt("a cat")
    texts = template_texts("a cat")
    assert len(IMAGENET_TEMPLATES) == 80 and len(texts) == 80 and "a photo of a cat." in texts and not any("a a " in t for t in texts)


def test_protocol_prompt_sets_have_the_papers_sizes():
    prompts = protocol_prompts()
    by_set = {s: [p for p in prompts if p.prompt_set == s] for s in ("animals", "animal-object", "object-object")}
    assert [len(v) for v in by_set.values()] == [66, 144, 66] and len({p.text for p in prompts}) == 276
    assert prompts == protocol_prompts()
    assert by_set["animals"][0] == ClipPrompt("a cat and a dog", "animals", ("cat", "dog"))
    assert all(p.subjects[0] in ANIMALS and p.subjects[1] in OBJECTS for p in by_set["animal-object"])
    assert all(len(p.text.split()) == 7 for p in by_set["object-object"])  # a {c} {o} and a {c} {o}
    with pytest.raises(ValueError, match="prompt sets"):
        protocol_prompts(["plants"])


def test_prompts_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# comment\na cat and a dog\na red car with a bowl | car,bowl\n")
    assert [p.subjects for p in read_prompts_file(path)] == [("cat", "dog"), ("car", "bowl")]
    assert read_prompts_file(path)[0].prompt_set == "animals"
    with pytest.raises(FileNotFoundError):
        read_prompts_file(tmp_path / "missing.txt")


def test_mean_interval():
    mean, lo, hi = mean_interval([[1.0, 3.0], [2.0, 2.0], [4.0, 6.0]])
    assert mean == pytest.approx(3.0)
    half = 4.302652729911275 * np.std([2.0, 2.0, 5.0], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert (lo, hi) == pytest.approx((3.0 - half, 3.0 + half))
    assert np.isnan(mean_interval([[1.0, 2.0]])[1])


def test_generation_is_sharded_resumable_and_scores_from_cache(models, tmp_path):
    from attnsynth.t2i.pipeline_sd import AttentionGuidedStableDiffusionPipeline
    from attnsynth.t2i.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(pipeline_class=AttentionGuidedStableDiffusionPipeline, scheduler="ddim")
    prompts = protocol_prompts(["animals"])[:2]
    call = dict(num_inference_steps=2)
    out = tmp_path / "gen"

    class Shard:  # what generate_images reads of an accelerate.Accelerator
        def __init__(self, index):
            self.process_index, self.num_processes = index, 2

        def wait_for_everyone(self):
            pass

    first = generate_images(pipe, prompts, ["none", "ait2i"], [0, 1], out, accelerator=Shard(0), call_kwargs=call)
    second = generate_images(pipe, prompts, ["none", "ait2i"], [0, 1], out, accelerator=Shard(1), call_kwargs=call)
    assert first + second == 8 and sorted(p.name for p in (out / "ait2i" / prompts[0].text).iterdir()) == ["0.png", "1.png"]
    stamp = (out / "none" / prompts[0].text / "0.png").stat().st_mtime_ns
    assert generate_images(pipe, prompts, ["none", "ait2i"], [0, 1], out, call_kwargs=call) == 0  # resumable
    assert (out / "none" / prompts[0].text / "0.png").stat().st_mtime_ns == stamp
    unguided = np.asarray(Image.open(out / "none" / prompts[0].text / "0.png"), dtype=np.float64)
    guided = np.asarray(Image.open(out / "ait2i" / prompts[0].text / "0.png"), dtype=np.float64)
    assert np.abs(unguided - guided).max() > 0  # same seed, guidance changed the image

    scorer = ClipScorer.from_directory(models["clip"])
    cache = tmp_path / "cache.json"
    folders = {m: out / m for m in ("none", "ait2i")}
    results = score_folders(folders, scorer, cache=cache)
    assert {r["method"] for r in results["table"]} == {"none", "ait2i"} and all(r["images"] == 4 for r in results["table"])

    class Refuses:
        def similarities(self, *args):
            raise AssertionError("cached images must not be scored again")

    again = score_folders(folders, Refuses(), cache=cache)
    assert again["raw"] == results["raw"]
    with pytest.raises(ValueError, match="methods"):
        generate_images(pipe, prompts, ["magic"], [0], out)


def test_blip_captioner_runs_and_strips_its_prompt(models):
    captioner = BlipCaptioner.from_directory(models["blip"])
    captions = captioner([Image.new("RGB", (40, 48), (200, 30, 40)), Image.new("RGB", (32, 32), (10, 200, 40))])
    assert len(captions) == 2 and all(isinstance(c, str) and not c.startswith("a picture of") for c in captions)
    with pytest.raises(FileNotFoundError, match="--blip"):
        BlipCaptioner.from_directory(models["blip"] / "nothing")


def test_cli_generates_and_scores_end_to_end(models, tmp_path):
    from attnsynth.cli import app
    from attnsynth.t2i.testing import tiny_sd_pipeline

    model_dir = tmp_path / "sd"
    tiny_sd_pipeline(scheduler="ddim").save_pretrained(model_dir)
    out = tmp_path / "outputs"
    args = ["bench", "clip", "--clip", str(models["clip"]), "--blip", str(models["blip"]), "--model", str(model_dir), "--out", str(out),
            "--sets", "animals,object-object", "--limit", "1", "--seeds", "2", "--steps", "2", "--methods", "none,attend-excite",
            "--results", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 3 * 2  # header + (animals, object-object, all) × 2 methods
    assert any(line.startswith("| all | attend-excite | 2 | 4 |") for line in lines)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["raw"]) == {"none", "attend-excite"} and all(len(e["captions"]) == 2 for e in saved["raw"]["none"].values())
    reread = CliRunner().invoke(app, ["bench", "clip", "--clip", str(models["clip"]), "--read", f"old={out / 'none'}", "--json"])
    assert reread.exit_code == 0, reread.output
    assert {row["method"] for row in json.loads(reread.output)} == {"old"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--read", "nonsense"], "METHOD=DIR"),
        ([], "nothing to score"),
        (["--read", "a=/nonexistent", "--methods", "bogus"], "--methods"),
    ],
)
def test_cli_rejects_bad_arguments(models, extra, message):
    from attnsynth.cli import app

    result = CliRunner().invoke(app, ["bench", "clip", "--clip", str(models["clip"]), *extra])
    assert result.exit_code != 0 and message in str(result.exception)
