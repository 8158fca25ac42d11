"""Personalised generation on the shapes-world model: learn the novel heart by textual inversion, then score it.

The shapes model never saw a heart: ``shapes.NOVEL_SHAPES`` are outside every training caption
and the word "heart" is not in its tokenizer. This module

* renders the concept's training images (:func:`concept_data`: one heart per image, the eight
  colours in turn, random size/position/texture; captions "a red <heart>"),
* trains the placeholder's embedding with the generic trainer
  :func:`attnsynth.t2i.textual_inversion.train_textual_inversion` (:func:`train_concept`), and
* benchmarks prompts that combine the concept with known shapes ("a red <heart> and a blue
  circle"), unguided vs guided, scored by the oracle on the same prompt with the word "heart"
  (:func:`run_personalize_benchmark`). A control row asks for the word "heart" without the learned
  token (the tokenizer spells it letter by letter): how often a heart appears by chance.

Seeds: concept images from :data:`CONCEPT_SEED_START`; benchmark prompts from
:data:`PROMPT_SEED_START` (both far from the training scenes, below 1 000 000, and from the
guidance benchmark's validation/test prompt seeds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from attnsynth.t2i.textual_inversion import EMBEDS_FILE, LORA_FILE, TextualInversionConfig, TextualInversionResult, train_textual_inversion

__all__ = [
    "CONCEPT_SEED_START",
    "EMBEDS_FILE",
    "LORA_FILE",
    "load_concept",
    "PERSONALIZE_METHODS",
    "PLACEHOLDER",
    "PROMPT_SEED_START",
    "PersonalizeBenchConfig",
    "concept_data",
    "concept_presence",
    "concept_verdict",
    "personalize_markdown",
    "personalize_prompts",
    "run_personalize_benchmark",
    "with_placeholder",
    "train_concept",
]

#: The novel concept's placeholder token (written into prompts as is).
PLACEHOLDER = "<heart>"
CONCEPT_SEED_START = 30_000_000
PROMPT_SEED_START = 31_000_000
#: Benchmark rows: ``control`` = the word itself without the learned token, unguided.
PERSONALIZE_METHODS = ("control", "none", "attend-excite", "ait2i")


def _check_novel(shape: str) -> str:
    from attnsynth.toyworld.shapes import NOVEL_SHAPES

    if shape not in NOVEL_SHAPES:
        raise ValueError(f"shape must be a novel shape the model never saw ({', '.join(NOVEL_SHAPES)}), got {shape!r}")
    return shape


def with_placeholder(caption: str, spec: Any, shape: str, placeholder: str) -> str:
    """``caption`` with every noun naming ``shape`` replaced by ``placeholder`` (right to left, spans stay valid).

    A comma right after the placeholder is moved one space away ("<heart> ,"): CLIP tokenizers give
    the same ids either way. (The subject resolver once read "<heart>," as "<", "heart", ">,"; it now
    takes a placeholder as one piece, and the space is kept so the prompts equal earlier runs'.)
    """
    for subject in sorted(spec.subjects, key=lambda s: -s.noun_span[0]):
        if spec.objects[subject.object_index].shape == shape:
            start, end = subject.noun_span
            gap = " " if caption[end : end + 1] == "," and not placeholder[-1].isalnum() else ""
            caption = caption[:start] + placeholder + gap + caption[end:]
    return caption


def concept_data(shape: str = "heart", *, n: int = 32, resolution: int = 64, placeholder: str = PLACEHOLDER,
                 seed_start: int = CONCEPT_SEED_START) -> tuple[torch.Tensor, list[str]]:
    """``n`` rendered images of one ``shape`` each → ``(images [n, 3, R, R] in [-1, 1], captions)``.

    Image i has colour ``COLOURS[i % 8]`` and scene seed ``seed_start + i``; its caption is the
    renderer's ("a red heart") with the noun replaced by ``placeholder``. ``shape`` is normally a
    novel one; a known shape gives the positive control (can the token learn what the model can draw?).
    """
    from attnsynth.toyworld.shapes import ALL_SHAPES, COLOURS, ObjectSpec, render_objects

    if shape not in ALL_SHAPES:
        raise ValueError(f"shape must be one of {', '.join(ALL_SHAPES)}, got {shape!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
        raise ValueError(f"n must be an integer in 1..1024, got {n!r}")
    colours = list(COLOURS)
    scenes = [render_objects([ObjectSpec(shape, colours[i % len(colours)])], seed_start + i, resolution) for i in range(n)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [n, 3, R, R]
    captions = [with_placeholder(s.caption, s.spec, shape, placeholder) for s in scenes]
    return images, captions


def train_concept(pipe: Any, config: TextualInversionConfig, *, shape: str = "heart", n_images: int = 32, n_prior: int = 0,
                  out_dir: str | Path | None = None, on_step: Callable[[int, float], None] | None = None) -> TextualInversionResult:
    """Textual inversion of the novel ``shape`` into ``config.placeholder`` on a shapes-world pipeline.

    ``n_prior`` > 0 adds that many training-world scenes (``shapes.render`` seeds 0…, their own
    captions) as prior-preservation images (for the ``lora_rank`` variant).
    """
    from attnsynth.toyworld.shapes import render

    resolution = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    images, captions = concept_data(shape, n=n_images, resolution=resolution, placeholder=config.placeholder)
    prior_images = prior_captions = None
    if n_prior:
        scenes = [render(seed, resolution) for seed in range(n_prior)]
        prior_images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [P, 3, R, R]
        prior_captions = [s.caption for s in scenes]
    return train_textual_inversion(pipe, images, captions, config, prior_images=prior_images, prior_captions=prior_captions,
                                   out_dir=out_dir, on_step=on_step)


def concept_presence(pipe: Any, placeholder: str, shape: str, *, n_images: int = 16, num_inference_steps: int | None = None,
                     guidance_scale: float | None = None) -> dict[str, Any]:
    """Generate "a {colour} {placeholder}" (colours in turn, seed i for image i) and read what the oracle finds.

    Returns the share of images showing ``shape`` (any colour; in the asked colour) and a count of
    every shape found, so one sees what the learned token draws instead.
    """
    from collections import Counter

    from attnsynth.shapes_t2i.bench import wilson_interval
    from attnsynth.toyworld.shapes import ALL_SHAPES, COLOURS, detect

    defaults = dict(getattr(pipe, "attnsynth_defaults", {}) or {})
    steps = num_inference_steps or defaults.get("num_inference_steps", 25)
    cfg = guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 3.0)
    colours = [list(COLOURS)[i % len(COLOURS)] for i in range(n_images)]
    prompts = [f"a {c} {placeholder}" for c in colours]
    generators = [torch.Generator(device="cpu").manual_seed(i) for i in range(n_images)]
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=cfg, generator=generators, output_type="np").images
    images = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)  # [N, H, W, 3]
    found = [detect(image, shapes=ALL_SHAPES) for image in images]
    shown = [any(d.shape == shape and d.confidence >= 0.5 for d in f) for f in found]
    bound = [any(d.shape == shape and d.colour == c and d.confidence >= 0.5 for d in f) for f, c in zip(found, colours)]
    return {
        "images": n_images,
        "shape_shown": float(np.mean(shown)), "shape_shown_ci": wilson_interval(sum(shown), n_images),
        "in_colour": float(np.mean(bound)), "in_colour_ci": wilson_interval(sum(bound), n_images),
        "found_shapes": dict(Counter(d.shape for f in found for d in f if d.confidence >= 0.5)),
    }


def load_concept(pipe: Any, directory: str | Path, placeholder: str) -> Any:
    """Load what :func:`train_concept` wrote into ``pipe``: the embedding, and the LoRA when there is one."""
    directory = Path(directory)
    if not (directory / EMBEDS_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no {EMBEDS_FILE}; train one with attnsynth personalize train")
    pipe.load_textual_inversion(str(directory), token=placeholder)
    if (directory / LORA_FILE).is_file():
        pipe.load_lora_weights(str(directory))
    return pipe


def personalize_prompts(n_known: int, n_prompts: int, *, shape: str = "heart", seed_start: int = PROMPT_SEED_START) -> list[tuple[str, Any, int]]:
    """``(prompt, spec, seed)`` with one coloured novel ``shape`` and ``n_known`` coloured known shapes.

    The known subjects are ``shapes.sample_prompt``'s for the seed; the novel one is inserted at a
    random place with a random colour, and the caption is written by the grammar ("a blue box and
    a red heart"). Prompts whose subjects share a noun are passed over (guidance cannot tell them apart).
    """
    from attnsynth.toyworld.shapes import COLOURS, ObjectSpec, Spec, sample_prompt
    from attnsynth.toyworld.shapes_grammar import compose_caption

    _check_novel(shape)
    if not 1 <= n_known <= 3:
        raise ValueError(f"n_known must be in 1..3 (at most 4 subjects with the novel one), got {n_known}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    prompts: list[tuple[str, Any, int]] = []
    seed = seed_start + 1_000_000 * n_known
    while len(prompts) < n_prompts:
        _, known = sample_prompt(seed, n_known)
        rng = np.random.Generator(np.random.PCG64(seed))
        objects = list(known.objects)
        novel = ObjectSpec(shape, list(COLOURS)[int(rng.integers(len(COLOURS)))])
        objects.insert(int(rng.integers(len(objects) + 1)), novel)
        caption, subjects = compose_caption(rng, objects, [])
        nouns = [s.noun for s in subjects]
        if len(set(nouns)) == len(nouns):
            prompts.append((caption, Spec(objects=tuple(objects), subjects=subjects), seed))
        seed += 1
    return prompts


@dataclass(frozen=True)
class PersonalizeBenchConfig:
    """Prompts per known-shape count, sampling seeds, rows and sampler settings (model defaults when built by ``for_pipeline``)."""

    n_prompts: int = 16
    n_seeds: int = 2
    known_counts: tuple[int, ...] = (1, 2)
    methods: tuple[str, ...] = PERSONALIZE_METHODS
    placeholder: str = PLACEHOLDER
    shape: str = "heart"
    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    attention_res: tuple[int, int] = (16, 16)
    guided_steps: int = 12
    step_size: float | dict[str, float] | None = None  # None: the pipeline method's default

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.n_seeds < 1:
            raise ValueError(f"--prompts and --seeds must be >= 1, got {self.n_prompts} and {self.n_seeds}")
        bad = [m for m in self.methods if m not in PERSONALIZE_METHODS]
        if bad or not self.methods:
            raise ValueError(f"--methods must be a comma list from {', '.join(PERSONALIZE_METHODS)}, got {','.join(self.methods) or 'nothing'}")
        if not self.known_counts or any(n not in (1, 2, 3) for n in self.known_counts):
            raise ValueError(f"known-shape counts must be in 1..3, got {self.known_counts}")
        if self.guided_steps > self.num_inference_steps:
            raise ValueError(f"guided_steps ({self.guided_steps}) must be <= num_inference_steps ({self.num_inference_steps})")
        _check_novel(self.shape)

    @classmethod
    def for_pipeline(cls, pipe: Any, **overrides: Any) -> "PersonalizeBenchConfig":
        """The model's recommended settings (``pipe.attnsynth_defaults``, read as the guidance benchmark reads them), then ``overrides`` (None = keep)."""
        from attnsynth.shapes_t2i.bench import BenchConfig

        recommended = BenchConfig.for_pipeline(pipe)
        settings: dict[str, Any] = {k: getattr(recommended, k) for k in ("num_inference_steps", "guidance_scale", "guided_steps", "step_size", "attention_res")}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)


def concept_verdict(image: np.ndarray, spec: Any, shape: str) -> dict[str, bool]:
    """Oracle verdict split into the novel subject and the known ones."""
    from attnsynth.toyworld.shapes import score

    result = score(image, spec)
    novel = [k for k, o in enumerate(spec.objects) if o.shape == shape]
    known = [k for k in range(len(spec.objects)) if k not in novel]
    return {
        "all_present": bool(result["all_present"]),
        "novel_shape": all(result["present"][k] for k in novel),  # a heart, any colour
        "novel_bound": all(result["satisfied"][k] for k in novel),  # a heart in its colour
        "known_present": all(result["satisfied"][k] for k in known),
    }


def _summary(verdicts: list[dict[str, bool]], seconds: float) -> dict[str, Any]:
    from attnsynth.shapes_t2i.bench import wilson_interval

    out: dict[str, Any] = {"images": len(verdicts), "s_per_image": seconds / max(1, len(verdicts))}
    for key in ("novel_shape", "novel_bound", "known_present", "all_present"):
        hits = sum(v[key] for v in verdicts)
        out[key] = hits / max(1, len(verdicts))
        out[f"{key}_ci"] = wilson_interval(hits, len(verdicts))
    return out


def run_personalize_benchmark(pipe: Any, config: PersonalizeBenchConfig, *,
                              on_batch: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Generate and score every (row, #known, prompt, seed); ``pipe`` must already hold ``config.placeholder``.

    All rows start from the same noise (one generator per image, seeded ``1000·seed + i``).
    Guided rows guide the placeholder and the known nouns as subjects.
    """
    from attnsynth.t2i import recommended_for
    from attnsynth.t2i.pipeline_sd import AttentionGuidedStableDiffusionPipeline

    if config.placeholder not in pipe.tokenizer.get_vocab():
        raise ValueError(f"the pipeline has no token {config.placeholder!r}; load the learned embedding first "
                         "(pipe.load_textual_inversion(path, token=...))")
    guided = AttentionGuidedStableDiffusionPipeline.from_pipe(pipe)
    guided.set_progress_bar_config(disable=True)
    prompt_sets = {n: personalize_prompts(n, config.n_prompts, shape=config.shape) for n in config.known_counts}
    results: dict[str, Any] = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
                               "prompts": {str(n): [p for p, _, _ in ps] for n, ps in prompt_sets.items()}, "methods": {}}
    for method in config.methods:
        per_n: dict[str, Any] = {}
        everything: list[dict[str, bool]] = []
        total = 0.0
        for n, prompts in prompt_sets.items():
            texts = [p if method == "control" else with_placeholder(p, spec, config.shape, config.placeholder) for p, spec, _ in prompts]
            kwargs: dict[str, Any] = {}
            if method not in ("control", "none"):
                subjects = [[config.placeholder if spec.objects[s.object_index].shape == config.shape else s.noun for s in spec.subjects]
                            for _, spec, _ in prompts]
                kwargs = dict(method=method, subjects=subjects, guided_steps=config.guided_steps,
                              step_size=recommended_for(config.__dict__, "step_size", method))
            verdicts: list[dict[str, bool]] = []
            seconds = 0.0
            for seed in range(config.n_seeds):
                generators = [torch.Generator(device="cpu").manual_seed(1000 * seed + i) for i in range(len(prompts))]
                start = time.perf_counter()
                out = guided(texts, num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                             generator=generators, output_type="np", attention_res=tuple(config.attention_res), **kwargs)
                seconds += time.perf_counter() - start
                images = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)  # [B, H, W, 3]
                verdicts += [concept_verdict(image, spec, config.shape) for image, (_, spec, _) in zip(images, prompts)]
                if on_batch is not None:
                    on_batch(method, n, seed)
            per_n[str(n)] = _summary(verdicts, seconds)
            everything += verdicts
            total += seconds
        per_n["all"] = _summary(everything, total)
        results["methods"][method] = per_n
    return results


def personalize_markdown(results: dict[str, Any]) -> str:
    """GitHub-markdown table: one row per (#known shapes, row), rates with Wilson 95 % intervals."""
    def rate(r: dict[str, Any], key: str) -> str:
        lo, hi = r[f"{key}_ci"]
        return f"{r[key]:.3f} [{lo:.2f}, {hi:.2f}]"

    lines = ["| known shapes | row | images | heart (any colour) | heart in its colour | known shapes present | all present | s/image |",
             "|---|---|---|---|---|---|---|---|"]
    methods = results["methods"]
    counts = [k for k in next(iter(methods.values()))]
    for n in counts:
        for method, per_n in methods.items():
            r = per_n[n]
            lines.append(f"| {n} | {method} | {r['images']} | {rate(r, 'novel_shape')} | {rate(r, 'novel_bound')} | "
                         f"{rate(r, 'known_present')} | {rate(r, 'all_present')} | {r['s_per_image']:.2f} |")
    return "\n".join(lines)
