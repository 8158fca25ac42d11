"""The shapes-world text-to-image model: tokenizer, shipped checkpoint, guided generation, trainer resume."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attnsynth.toyworld import shapes
from attnsynth.shapes_t2i.model import (
    ASSET_DIR,
    DEFAULTS_FILE,
    TINY_CONFIG,
    TOY_T2I_DEFAULTS,
    ToyT2IConfig,
    build_tokenizer,
    learn_merges,
    load_t2i_pipeline,
)
from attnsynth.shapes_t2i.train import TrainConfig, export_t2i, load_optimizer, save_optimizer, train_t2i


@pytest.fixture(scope="module")
def shipped():
    return load_t2i_pipeline()


def _assert_words_are_single_tokens(tokenizer, words):
    vocab = tokenizer.get_vocab()
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
        assert word in vocab and word + "</w>" in vocab, word


def test_tokenizer_makes_every_grammar_word_one_token():
    tokenizer = build_tokenizer(shapes.vocabulary())
    _assert_words_are_single_tokens(tokenizer, shapes.vocabulary())
    ids = tokenizer("a red circle, a blue box")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 2 + 7 and tokenizer.unk_token_id not in ids[1:-1]  # the comma is a token, not unknown


def test_merges_keep_overlapping_words_whole():
    # "re"/"ed" are inner pairs of "red"/"green": greedy left-to-right merges would split them.
    words = ["red", "green", "ed", "re", "reed", "e"]
    assert learn_merges(["ab"]) == [("a", "b</w>")]
    _assert_words_are_single_tokens(build_tokenizer(words), words)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="resolution"):
        ToyT2IConfig(resolution=60)
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(stage="gan")
    with pytest.raises(ValueError, match="overlap"):
        TrainConfig(train_seed_start=0, train_seed_count=100, eval_seed_start=50)
    with pytest.raises(ValueError, match="vocabulary"):
        build_tokenizer(["red", "two words"])


def test_shipped_checkpoint_loads_offline(shipped):
    _assert_words_are_single_tokens(shipped.tokenizer, shapes.vocabulary())
    assert shipped.safety_checker is None and shipped.feature_extractor is None
    assert shipped.unet.dtype == torch.float32
    assert shipped.vae_scale_factor * shipped.unet.config.sample_size == TOY_T2I_DEFAULTS["height"]
    assert json.loads((ASSET_DIR / DEFAULTS_FILE).read_text()) == shipped.attnsynth_defaults
    size = sum(p.stat().st_size for p in ASSET_DIR.rglob("*") if p.is_file())
    assert size <= 20 * 2**20


def test_guided_generation_on_shipped_model_and_oracle(shipped):
    from attnsynth.t2i.pipeline_sd import AttentionGuidedStableDiffusionPipeline

    prompt, spec = shapes.sample_prompt(20_000_000, 2)
    guided = AttentionGuidedStableDiffusionPipeline.from_pipe(shipped)
    out = guided(prompt, num_inference_steps=4, guided_steps=2, method="ait2i", subjects=[s.noun for s in spec.subjects],
                 attention_res=tuple(TOY_T2I_DEFAULTS["attention_res"]), generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 64, 64, 3)
    assert torch.isfinite(out.losses["total"]).all() and out.losses["total"].shape[0] == 2
    image = (out.images[0] * 255).round().astype(np.uint8)
    result = shapes.score(image, spec)
    assert len(result["present"]) == 2 and 0.0 <= result["present_rate"] <= 1.0


def test_benchmark_runs_every_method_on_the_same_prompts(shipped):
    from attnsynth.shapes_t2i.bench import BenchConfig, benchmark_prompts, results_markdown, run_benchmark

    prompts = benchmark_prompts(3, 4)
    assert all(len({s.noun for s in spec.subjects}) == 3 for _, spec, _ in prompts)
    config = BenchConfig(n_prompts=1, n_seeds=1, subject_counts=(2,), methods=("none", "ait2i", "ait2i-prompt-softmax"), num_inference_steps=3, guided_steps=1)
    results = run_benchmark(shipped, config)
    assert set(results["methods"]) == {"none", "ait2i", "ait2i-prompt-softmax"}
    for per_n in results["methods"].values():
        assert per_n["2"]["images"] == 1 and 0.0 <= per_n["2"]["present_rate"] <= 1.0
        lift = per_n["2"]["attention_lift"]  # nan when no subject was found in its colour
        assert np.isnan(lift) or lift >= 0.0
    assert results_markdown(results).count("\n") == 2 + 3 * 2 - 1
    with pytest.raises(ValueError, match="methods"):
        BenchConfig(methods=("magic",))
    with pytest.raises(ValueError, match="loss_weights"):  # the overrides reach the guided pipeline
        run_benchmark(shipped, BenchConfig(n_prompts=1, n_seeds=1, subject_counts=(2,), methods=("ait2i",), num_inference_steps=3,
                                           guided_steps=1, loss_weights=(("isolation", float("nan")),)))


def test_wilson_interval_and_box_iou():
    from attnsynth.shapes_t2i.bench import box_iou, wilson_interval

    lo, hi = wilson_interval(32, 64)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9 and 0.37 < lo < 0.39  # 0.5 ± 0.12 at n = 64
    assert wilson_interval(0, 10)[0] == 0.0 and 0.0 < wilson_interval(0, 10)[1] < 0.35  # never below 0, not degenerate
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] > 0.65
    assert box_iou((0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5)) == pytest.approx(1.0)
    assert box_iou((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 0.2, 0.2), (0.5, 0.5, 1, 1)) == 0.0


def test_requested_boxes_are_renderer_layouts_and_layout_ious_read_the_oracle():
    from attnsynth.shapes_t2i.bench import benchmark_prompts, layout_ious, requested_boxes
    from attnsynth.toyworld.shapes_draw import GAP

    (_, spec, seed), = benchmark_prompts(3, 1)
    boxes = requested_boxes(spec, seed)
    assert set(boxes) == {s.noun for s in spec.subjects} and boxes == requested_boxes(spec, seed)  # deterministic
    values = list(boxes.values())
    for i, a in enumerate(values):
        assert 0.0 <= a[0] < a[2] <= 1.0 and 0.0 <= a[1] < a[3] <= 1.0
        for b in values[i + 1:]:  # the renderer keeps objects apart
            assert max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) >= GAP - 1e-9
    first = spec.subjects[0]
    verdict = {"matched_boxes": [[] for _ in spec.objects]}
    verdict["matched_boxes"][first.object_index] = [list(boxes[first.noun])]
    assert layout_ious(spec, boxes, verdict) == pytest.approx([1.0, 0.0, 0.0])  # found exactly in its box; the others missing


def test_layout_benchmark_scores_boxes(shipped):
    from attnsynth.shapes_t2i.bench import BenchConfig, results_markdown, run_benchmark

    config = BenchConfig(n_prompts=1, n_seeds=1, subject_counts=(2,), methods=("none", "layout+ait2i"), num_inference_steps=3,
                         guided_steps=1, step_size=1.0, layout=True)
    results = run_benchmark(shipped, config)
    for per_n in results["methods"].values():
        r = per_n["2"]
        assert 0.0 <= r["box_iou"] <= 1.0 and 0.0 <= r["in_box"] <= 1.0 and r["all_present_ci"][0] <= r["all_present"] <= r["all_present_ci"][1]
    assert "box IoU" in results_markdown(results)
    with pytest.raises(ValueError, match="with --layout"):
        BenchConfig(methods=("ait2i",), layout=True)
    with pytest.raises(ValueError, match="methods"):
        BenchConfig(methods=("layout",))


def _tiny(**overrides):
    base = dict(steps=2, vae_steps=2, batch_size=2, vae_batch_size=2, warmup_steps=0, vae_warmup_steps=0, lr_schedule="constant",
                sample_every=0, log_every=1, threads=1, model=TINY_CONFIG)
    return TrainConfig(**{**base, **overrides})


def _tensors(run):
    d = run / "checkpoints"
    out = {}
    for name in ("vae/vae/diffusion_pytorch_model", "unet/unet/diffusion_pytorch_model", "unet/unet_ema/diffusion_pytorch_model",
                 "unet/text_encoder/model", "unet/text_encoder_ema/model", "vae/optimizer", "unet/optimizer"):
        out.update({f"{name}:{k}": v for k, v in load_file(d / f"{name}.safetensors").items()})
    return out


def test_trainer_resumes_exactly(tmp_path):
    quiet = lambda _: None  # noqa: E731
    straight = tmp_path / "straight"
    train_t2i(straight, _tiny(), device="cpu", echo=quiet)
    split = tmp_path / "split"
    train_t2i(split, _tiny(vae_steps=1, steps=0), device="cpu", echo=quiet)  # interrupted after one VAE step
    train_t2i(split, _tiny(steps=1), resume=True, device="cpu", echo=quiet)  # ... and after one UNet step
    with pytest.raises(FileExistsError, match="--resume"):
        train_t2i(split, _tiny(), device="cpu", echo=quiet)
    trainer = train_t2i(split, _tiny(), resume=True, device="cpu", echo=quiet, export_to=tmp_path / "pipe")
    a, b = _tensors(straight), _tensors(split)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    states = [json.loads((run / "checkpoints/unet/state.json").read_text()) for run in (straight, split)]
    assert states[0]["step"] == states[1]["step"] == 2 and states[0]["ema_step"] == states[1]["ema_step"] == 2
    assert (tmp_path / "pipe" / "model_index.json").is_file() and trainer.config.steps == 2
    pipe = load_t2i_pipeline(tmp_path / "pipe")
    assert pipe.unet.config.sample_size == TINY_CONFIG.latent_size
    # A later session continues from an exported pipeline (weights only): one more UNet step.
    warm = train_t2i(tmp_path / "warm", _tiny(stage="unet", steps=1), init_from=tmp_path / "pipe", device="cpu", echo=quiet)
    assert json.loads((tmp_path / "warm/checkpoints/unet/state.json").read_text())["step"] == 1
    assert warm.tokenizer.get_vocab() == pipe.tokenizer.get_vocab()
    # Export without training: the same EMA weights as --export-to; a warm-started run needs its --init-from (VAE).
    export_t2i(split, tmp_path / "pipe2", echo=quiet)
    for name in ("unet/diffusion_pytorch_model", "text_encoder/model", "vae/diffusion_pytorch_model"):
        first, second = load_file(tmp_path / "pipe" / f"{name}.safetensors"), load_file(tmp_path / "pipe2" / f"{name}.safetensors")
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), name
    with pytest.raises(FileNotFoundError, match="no finished VAE"):
        export_t2i(tmp_path / "warm", tmp_path / "pipe3", echo=quiet)
    export_t2i(tmp_path / "warm", tmp_path / "pipe3", init_from=tmp_path / "pipe", echo=quiet)
    with pytest.raises(FileNotFoundError, match="not a train-t2i run"):
        export_t2i(tmp_path / "nothing", tmp_path / "pipe4", echo=quiet)


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_optimizer(optimizer, tmp_path / "opt.safetensors")
    fresh = torch.optim.AdamW(model.parameters(), lr=1.0)
    load_optimizer(fresh, tmp_path / "opt.safetensors")
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.param_groups[0]["betas"] == (0.8, 0.9)
    for p in model.parameters():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[p][name], optimizer.state[p][name])


def test_wsd_schedule_holds_the_rate_then_decays_linearly_to_the_floor():
    from attnsynth.shapes_t2i.train import learning_rate

    config = TrainConfig(steps=1000, warmup_steps=100, lr_schedule="wsd", decay_steps=200, lr=1e-3)
    rate = [learning_rate(config, 1.0, step, config.steps, config.warmup_steps) for step in range(1001)]
    assert rate[0] == 0.01 and rate[99] == 1.0  # warm-up
    assert all(r == 1.0 for r in rate[100:801])  # stable until the last 200 steps
    assert rate[900] == pytest.approx(1 - 0.9 * 0.5) and rate[1000] == pytest.approx(config.min_lr_ratio)
    assert all(a > b for a, b in zip(rate[800:1000], rate[801:1001]))  # strictly down during the decay
    vae_rate = [learning_rate(config, 1.0, step, 150, 30) for step in range(151)]  # a stage shorter than decay_steps
    assert vae_rate[29] == 1.0 and vae_rate[150] == pytest.approx(config.min_lr_ratio)
    assert all(a > b for a, b in zip(vae_rate[30:150], vae_rate[31:151]))
    for bad in (0, 901):
        with pytest.raises(ValueError, match="decay_steps"):
            TrainConfig(steps=1000, warmup_steps=100, lr_schedule="wsd", decay_steps=bad)


def test_min_snr_weighting_caps_low_noise_timesteps():
    from attnsynth.shapes_t2i.model import build_noise_scheduler
    from attnsynth.shapes_t2i.train import diffusion_loss

    scheduler = build_noise_scheduler(TINY_CONFIG)
    pred, target = torch.zeros(2, 4, 4, 4), torch.ones(2, 4, 4, 4)  # per-sample MSE = 1
    noisy_end, clean_end = torch.tensor([999, 999]), torch.tensor([0, 0])
    assert diffusion_loss(pred, target, clean_end, scheduler, None).item() == pytest.approx(1.0)
    assert diffusion_loss(pred, target, noisy_end, scheduler, 5.0).item() == pytest.approx(1.0)  # SNR < γ: weight 1
    snr0 = scheduler.alphas_cumprod[0] / (1 - scheduler.alphas_cumprod[0])
    assert diffusion_loss(pred, target, clean_end, scheduler, 5.0).item() == pytest.approx(5.0 / snr0.item(), rel=1e-4)


_DDP_T2I_SCRIPT = """
import os, sys, time, torch
torch.set_num_threads(1)
import attnsynth.shapes_t2i.train as t2i_train
from attnsynth.shapes_t2i.model import TINY_CONFIG
# (no PartialState here: created without cpu=True first, it would pin every process to a non-distributed state)
if os.environ["RANK"] == "1":  # this process's clock jumps 1000 s per reading: a checkpoint is always due here
    class FastClock:
        readings = 0
        def __call__(self):
            FastClock.readings += 1
            return time.monotonic() + 1000.0 * FastClock.readings
    t2i_train.time = type(sys)("fast_time")  # the trainer's own view of the time module; this process only
    vars(t2i_train.time).update({k: v for k, v in vars(time).items() if not k.startswith("__")}, time=FastClock())
decide = t2i_train.Trainer._checkpoint_due
def logged(self, last_save):  # record what this process decided, step by step
    due = decide(self, last_save)
    with open(f"{sys.argv[1]}_decisions_rank{os.environ['RANK']}.txt", "a") as f:
        f.write(f"{int(due)}\\n")
    return due
t2i_train.Trainer._checkpoint_due = logged
config = t2i_train.TrainConfig(steps=3, vae_steps=2, batch_size=1, vae_batch_size=1, warmup_steps=0, vae_warmup_steps=0,
                               sample_every=0, log_every=1, threads=1, checkpoint_every_s=500.0, model=TINY_CONFIG)
trainer = t2i_train.train_t2i(sys.argv[1], config, device="cpu", echo=lambda _: None)
assert trainer.accelerator.num_processes == 2  # really one gloo group, not two lone processes
"""


@pytest.mark.slow
def test_two_processes_agree_on_time_based_checkpoints(tmp_path):
    from two_processes import run_two_processes

    result = run_two_processes(_DDP_T2I_SCRIPT, tmp_path, str(tmp_path / "run"), timeout=300)
    assert result.returncode == 0, result.stderr[:6000]
    assert json.loads((tmp_path / "run/checkpoints/unet/state.json").read_text())["step"] == 3
    decisions = [(tmp_path / f"run_decisions_rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert decisions[0] and decisions[0] == decisions[1]  # both processes followed the main's clock


def test_benchmark_takes_the_models_recommended_settings_unless_overridden():
    from types import SimpleNamespace

    from attnsynth.shapes_t2i.bench import BenchConfig

    pipe = SimpleNamespace(attnsynth_defaults={"num_inference_steps": 30, "guidance_scale": 2.5, "attention_res": [8, 8],
                                               "guided_steps": 10, "step_size": 12.0, "height": 64})
    config = BenchConfig.for_pipeline(pipe, n_prompts=3, guidance_scale=None)
    assert (config.num_inference_steps, config.guidance_scale, config.attention_res, config.guided_steps, config.step_size) == (30, 2.5, (8, 8), 10, 12.0)
    assert config.n_prompts == 3
    assert BenchConfig.for_pipeline(pipe, guidance_scale=6.0).guidance_scale == 6.0
    assert BenchConfig.for_pipeline(SimpleNamespace()).guidance_scale == TOY_T2I_DEFAULTS["guidance_scale"]
    assert BenchConfig.for_pipeline(pipe, step_size=3.0).step_size == 3.0
    per_method = SimpleNamespace(attnsynth_defaults={"step_size": {"ait2i": 5.0, "attend-excite": 2.0}})
    assert BenchConfig.for_pipeline(per_method).step_size == {"ait2i": 5.0, "attend-excite": 2.0}
    with pytest.raises(ValueError, match="--step-size"):
        BenchConfig(step_size={"ait2i": -1.0})


def test_validation_and_test_prompts_are_disjoint_and_outside_training():
    from attnsynth.shapes_t2i.bench import BenchConfig, benchmark_prompts, parse_loss_weights

    validation, test = BenchConfig(split="validation"), BenchConfig()
    assert test.split == "test" and validation.prompt_seed_start != test.prompt_seed_start
    for n in (1, 2, 3, 4):
        val_seeds = {seed for _, _, seed in benchmark_prompts(n, 16, seed_start=validation.prompt_seed_start)}
        test_seeds = {seed for _, _, seed in benchmark_prompts(n, 16, seed_start=test.prompt_seed_start)}
        assert not val_seeds & test_seeds
        assert min(val_seeds | test_seeds) >= TrainConfig().train_seed_start + TrainConfig().train_seed_count
    with pytest.raises(ValueError, match="--split"):
        BenchConfig(split="train")
    assert parse_loss_weights("isolation=0, excitation=1.5") == (("isolation", 0.0), ("excitation", 1.5))
    with pytest.raises(ValueError, match="--loss-weights"):
        parse_loss_weights("isolation")
    with pytest.raises(ValueError, match="isolation unknown for method attend-excite"):
        BenchConfig(methods=("none", "ait2i", "attend-excite"), loss_weights=(("isolation", 0.0),))
    with pytest.raises(ValueError, match="--step-size"):
        BenchConfig(step_size=0.0)


def test_shipped_model_draws_what_single_subject_prompts_ask_for(shipped):
    # Validation prompts (not the benchmark's); at its recommended settings the model gets ~0.9 of such prompts right (7 of these 8).
    prompts = [shapes.sample_prompt(10_100_000 + i, 1) for i in range(8)]
    settings = {k: shipped.attnsynth_defaults[k] for k in ("num_inference_steps", "guidance_scale", "height", "width")}
    images = shipped([p for p, _ in prompts], generator=[torch.Generator().manual_seed(i) for i in range(8)],
                     output_type="np", **settings).images
    images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    found = [shapes.score(image, spec)["all_present"] for image, (_, spec) in zip(images, prompts)]
    assert sum(found) >= 6, found  # a model that ignored its prompt would hit ~1/48 shape×colour pairs


def test_shipped_model_maps_sit_on_their_objects(shipped):
    # The shipped model is token-grounded: a subject word's cross-attention (16², averaged over the steps) falls on its
    # object. Validation prompts, unguided; a model whose maps ignored the layout scores ~1 (the model before grounding: 0.97).
    from attnsynth.shapes_t2i.bench import BenchConfig, run_benchmark

    config = BenchConfig.for_pipeline(shipped, n_prompts=4, n_seeds=1, subject_counts=(2,), methods=("none",), split="validation")
    lift = run_benchmark(shipped, config)["methods"]["none"]["2"]["attention_lift"]
    assert lift >= 3.0, lift


def test_guided_generation_on_shipped_model_is_scored_by_the_oracle(shipped):
    # AI-T2I at the model's recommended settings on validation two-subject prompts: the oracle finds most subjects
    # (a model or guidance that broke the images would find ~none).
    from attnsynth.shapes_t2i.bench import BenchConfig, run_benchmark

    config = BenchConfig.for_pipeline(shipped, n_prompts=4, n_seeds=1, subject_counts=(2,), methods=("ait2i",), split="validation")
    result = run_benchmark(shipped, config)["methods"]["ait2i"]["2"]
    assert result["images"] == 4 and result["present_rate"] >= 0.5, result


def test_subject_token_positions_point_at_the_subject_words(shipped):
    from attnsynth.shapes_t2i.grounding import subject_token_positions

    tokenizer = shipped.tokenizer
    for seed in range(40):
        scene = shapes.render(seed, 32)
        ids = tokenizer(scene.caption, padding="max_length", max_length=32, truncation=True).input_ids
        for subject, (index, positions) in zip(scene.spec.subjects, subject_token_positions(tokenizer, scene.caption, scene.spec, 32)):
            words = [tokenizer.convert_ids_to_tokens(ids[p]).removesuffix("</w>") for p in positions]
            assert index == subject.object_index
            assert words == [w for w in (subject.noun, subject.attribute) if w is not None], scene.caption


def test_grounding_loss_is_the_attention_share_outside_each_object():
    from attnsynth.shapes_t2i.grounding import GroundingTargets, grounding_loss

    mask = torch.zeros(4, 4)
    mask[:2, :2] = 1.0  # the object covers the top-left quarter
    targets = GroundingTargets(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.stack([mask, mask]))
    maps = torch.full((2, 4, 4, 5), 0.2)  # uniform over space: 3/4 of the mass outside
    assert grounding_loss(maps, targets).item() == pytest.approx(0.75)
    focused = maps.clone()
    focused[0, :, :, 2], focused[1, :, :, 3] = mask, 1.0 - mask  # image 0 inside, image 1 all outside
    assert grounding_loss(focused, targets).item() == pytest.approx(0.5)
    logits = torch.zeros(2, 4, 4, 5, requires_grad=True)
    grounding_loss(logits.softmax(-1), targets).backward()
    assert logits.grad[0, 0, 0, 2] < 0 < logits.grad[0, 3, 3, 2]  # more on the object, less off it
    empty = GroundingTargets(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, 4))
    assert grounding_loss(maps, empty).item() == 0.0


def test_trainer_with_grounding_trains_and_logs_it(tmp_path):
    run = tmp_path / "grounded"
    train_t2i(run, _tiny(grounding_weight=1.0, grounding_res=8, steps=3), device="cpu", echo=lambda _: None)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    grounding = [r["grounding"] for r in records if r.get("stage") == "unet"]
    assert len(grounding) == 3 and all(0.0 < g < 1.0 for g in grounding)
    with pytest.raises(ValueError, match="attention_res"):  # no cross-attention layer on a 5x5 grid
        train_t2i(tmp_path / "bad", _tiny(grounding_weight=1.0, grounding_res=5, vae_steps=1), device="cpu", echo=lambda _: None)


def test_attention_on_objects_measures_whether_subject_maps_sit_on_their_objects():
    from attnsynth.t2i.subjects import SubjectGroup
    from attnsynth.toyworld.shapes_oracle import Detection
    from attnsynth.shapes_t2i.bench import attention_on_objects

    spec = shapes.spec_from_prompt("a red circle and a blue square")
    groups = [SubjectGroup("circle", (3,)), SubjectGroup("square", (6,))]
    found = [Detection("circle", "red", (0.0, 0.0, 0.25, 0.25), 0.05, 0.9, 0.0), Detection("square", "blue", (0.5, 0.5, 1.0, 1.0), 0.2, 0.9, 0.0)]
    def verdict(detections):  # the oracle's matching (the image is not read when detections are given)
        return shapes.score(np.zeros((8, 8, 3), np.uint8), spec, detections=detections)

    maps = torch.full((2, 8, 8, 8), 1.0 / 8)  # [steps, h, w, T]: every token everywhere
    assert attention_on_objects(maps, groups, spec, verdict(found)) == [pytest.approx((1 / 16, 1 / 16)), pytest.approx((1 / 4, 1 / 4))]
    maps[:, :, :, 3] = 0.0
    maps[:, :2, :2, 3] = 1.0  # the circle's word only on the circle's box
    assert attention_on_objects(maps, groups, spec, verdict(found))[0] == pytest.approx((1.0, 1 / 16))
    assert attention_on_objects(maps, groups, spec, verdict(found[:1])) == [pytest.approx((1.0, 1 / 16))]  # the square was not found
    unsure = [Detection("circle", "red", (0.0, 0.0, 0.25, 0.25), 0.05, 0.3, 0.0)]
    assert attention_on_objects(maps, groups, spec, verdict(unsure)) == []  # the oracle's score ignores it too


def test_every_process_passes_the_same_barriers_when_loading_the_tokenizer(tmp_path):
    # Each process decides "load or build" from whether the tokenizer is saved; main must not save it before
    # every process has looked, or a slower one skips the barrier main waits in (a hang, seen on a fresh run).
    from types import SimpleNamespace

    from attnsynth.shapes_t2i.train import Trainer

    def saved_at_each_barrier(run_dir, is_main):
        seen = []
        trainer = Trainer.__new__(Trainer)
        trainer.run_dir, trainer.init_from, trainer.config, trainer.is_main = run_dir, None, _tiny(), is_main
        trainer.accelerator = SimpleNamespace(wait_for_everyone=lambda: seen.append((run_dir / "tokenizer").is_dir()))
        trainer._tokenizer()
        return seen

    fresh_main, fresh_other = saved_at_each_barrier(tmp_path / "a", True), saved_at_each_barrier(tmp_path / "b", False)
    assert fresh_main[0] is False and fresh_main[-1] is True  # a barrier before main's save, one after it
    assert len(fresh_main) == len(fresh_other)
    resumed_main, resumed_other = saved_at_each_barrier(tmp_path / "a", True), saved_at_each_barrier(tmp_path / "a", False)
    assert len(resumed_main) == len(resumed_other) >= 1
