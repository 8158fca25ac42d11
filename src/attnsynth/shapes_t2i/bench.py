"""Benchmark attention guidance on the shapes-world model: oracle rates per method and #subjects.

Held-out prompts (``shapes.sample_prompt`` with seeds outside the training range) × sampling
seeds are generated with :class:`attnsynth.t2i.AttentionGuidedStableDiffusionPipeline` for each
method (``none`` = plain sampling) from the same initial noise, and the shapes oracle reads the
images back:

* ``all_present`` — every subject found with its shape and colour (the oracle's ``all_present``);
* ``shapes_present`` — every subject's shape found, colour ignored;
* ``present_rate`` — share of subjects whose shape is found;
* ``colour_binding`` — of the coloured subjects whose shape is found, the share in the right colour;
* ``attention_lift`` — whether the subjects' cross-attention maps (at ``attention_res``, averaged
  over the sampling steps) sit on their objects: the share of a subject word's attention inside the
  box of its found object, divided by the box's share of the image, pooled over found subjects.
  1 means the maps ignore where the objects are — guidance then steers noise;
* ``s_per_image`` — wall-clock seconds per image (noisy on a shared CPU; maps are recorded too).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from attnsynth.shapes_t2i.model import TOY_T2I_DEFAULTS

__all__ = ["BenchConfig", "METHODS", "SPLITS", "benchmark_prompts", "parse_counts", "parse_loss_weights", "parse_methods", "results_markdown", "results_table",
           "run_benchmark"]

METHODS = ("none", "attend-excite", "divide-bind", "ait2i")
#: First prompt seed of each prompt split (training scenes use seeds below 1 000 000). Choose
#: settings on ``validation``; report on ``test``, which nothing was tuned on.
SPLITS = {"validation": 10_000_000, "test": 20_000_000}
PROMPT_SEED_START = SPLITS["test"]


@dataclass(frozen=True)
class BenchConfig:
    """What to generate: prompts per subject count, sampling seeds, methods and sampler settings."""

    n_prompts: int = 8  # per subject count
    n_seeds: int = 2
    subject_counts: tuple[int, ...] = (1, 2, 3, 4)
    methods: tuple[str, ...] = METHODS
    num_inference_steps: int = TOY_T2I_DEFAULTS["num_inference_steps"]
    guidance_scale: float = TOY_T2I_DEFAULTS["guidance_scale"]
    attention_res: tuple[int, int] = tuple(TOY_T2I_DEFAULTS["attention_res"])
    guided_steps: int = TOY_T2I_DEFAULTS["guided_steps"]
    # one for all methods, or {method: size}; None: each method's own default
    step_size: float | dict[str, float] | None = field(default_factory=lambda: copy.deepcopy(TOY_T2I_DEFAULTS["step_size"]))
    split: str = "test"  # which held-out prompts: "validation" (for choosing settings) or "test" (for reporting)
    loss_weights: tuple[tuple[str, float], ...] = ()  # overrides of the guided methods' loss weights (term, weight)

    @property
    def prompt_seed_start(self) -> int:
        return SPLITS[self.split]

    @classmethod
    def for_pipeline(cls, pipe, **overrides: Any) -> "BenchConfig":
        """The model's recommended settings (``pipe.attnsynth_defaults``), then ``overrides`` (None = keep)."""
        defaults = dict(getattr(pipe, "attnsynth_defaults", {}) or {})
        settings: dict[str, Any] = {key: defaults[key] for key in ("num_inference_steps", "guidance_scale", "guided_steps", "step_size") if key in defaults}
        if "attention_res" in defaults:
            settings["attention_res"] = tuple(defaults["attention_res"])
        settings.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**settings)

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.n_seeds < 1:
            raise ValueError(f"--prompts and --seeds must be >= 1, got {self.n_prompts} and {self.n_seeds}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"--methods must be a comma list from {', '.join(METHODS)}, got {','.join(self.methods) or 'nothing'}")
        if any(n not in (1, 2, 3, 4) for n in self.subject_counts) or not self.subject_counts:
            raise ValueError(f"subject counts must be in 1..4, got {self.subject_counts}")
        if self.loss_weights:
            from attnsynth.t2i.losses import DEFAULT_WEIGHTS

            for method in self.methods:
                unknown = sorted({term for term, _ in self.loss_weights} - set(DEFAULT_WEIGHTS.get(method, {}))) if method != "none" else []
                if unknown:
                    raise ValueError(f"--loss-weights term(s) {', '.join(unknown)} unknown for method {method}; "
                                     f"expected some of {', '.join(sorted(DEFAULT_WEIGHTS[method]))}")
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        sizes = self.step_size.values() if isinstance(self.step_size, dict) else [self.step_size]
        if any(size is not None and not size > 0 for size in sizes):
            raise ValueError(f"--step-size must be > 0, got {self.step_size}")
        if self.guided_steps > self.num_inference_steps:
            raise ValueError(f"guided_steps ({self.guided_steps}) must be <= num_inference_steps ({self.num_inference_steps})")


def benchmark_prompts(n_subjects: int, n_prompts: int, *, seed_start: int = PROMPT_SEED_START) -> list[tuple[str, Any, int]]:
    """``n_prompts`` held-out ``(prompt, spec, prompt_seed)`` with ``n_subjects`` coloured singular subjects.

    Prompts whose subjects share a noun word ("a red box and a blue box") are passed over: a
    guided pipeline cannot tell such subjects' tokens apart.
    """
    from attnsynth.toyworld import shapes

    prompts: list[tuple[str, Any, int]] = []
    seed = seed_start + 1_000_000 * n_subjects
    while len(prompts) < n_prompts:
        prompt, spec = shapes.sample_prompt(seed, n_subjects)
        nouns = [s.noun for s in spec.subjects]
        if len(set(nouns)) == len(nouns):
            prompts.append((prompt, spec, seed))
        seed += 1
    return prompts


def attention_on_objects(maps: torch.Tensor, groups: list, spec: Any, verdict: dict[str, Any]) -> list[tuple[float, float]]:
    """``(share of attention inside the box, box share of the image)`` for every subject found in its colour.

    ``maps [steps, h, w, T]`` of one image; ``groups`` the token groups of ``spec.subjects`` in order;
    ``verdict`` the oracle's :func:`~attnsynth.toyworld.shapes.score` of the image, whose strict matches
    (``matched_boxes``) say where each subject was found.
    """
    mean = maps.float().mean(dim=0)  # [h, w, T]
    height, width = mean.shape[:2]
    pairs = []
    for subject, group in zip(spec.subjects, groups):
        boxes = verdict["matched_boxes"][subject.object_index]
        if not boxes:
            continue
        x0, y0, x1, y1 = boxes[0]
        c0, c1 = int(np.floor(x0 * width)), max(int(np.ceil(x1 * width)), int(np.floor(x0 * width)) + 1)
        r0, r1 = int(np.floor(y0 * height)), max(int(np.ceil(y1 * height)), int(np.floor(y0 * height)) + 1)
        subject_map = mean[:, :, list(group.token_indices)].sum(dim=-1)  # [h, w]
        inside = float(subject_map[r0:r1, c0:c1].sum() / subject_map.sum().clamp_min(1e-12))
        pairs.append((inside, (r1 - r0) * (c1 - c0) / (height * width)))
    return pairs


def _summarise(scores: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    binding = [s["colour_binding_rate"] for s in scores if s["colour_binding_rate"] is not None]
    pairs = [pair for s in scores for pair in s.get("attention", [])]
    return {
        "images": len(scores),
        "all_present": float(np.mean([s["all_present"] for s in scores])),
        "shapes_present": float(np.mean([all(s["present"]) for s in scores])),
        "present_rate": float(np.mean([s["present_rate"] for s in scores])),
        "colour_binding": float(np.mean(binding)) if binding else float("nan"),
        "attention_lift": sum(i for i, _ in pairs) / sum(a for _, a in pairs) if pairs else float("nan"),
        "s_per_image": seconds / max(1, len(scores)),
    }


def run_benchmark(pipe, config: BenchConfig, *, on_batch: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Generate and score every (method, #subjects, prompt, seed); returns rates per method and #subjects.

    ``pipe`` is any StableDiffusionPipeline of the shapes world (e.g. :func:`load_t2i_pipeline`);
    each (method, #subjects, seed) is one batch over the prompts, with one generator per image,
    so all methods start from the same noise. ``on_batch(method, n_subjects, seed)`` reports progress.
    """
    from attnsynth.t2i import recommended_for
    from attnsynth.t2i.pipeline_sd import AttentionGuidedStableDiffusionPipeline
    from attnsynth.t2i.subjects import resolve_subjects
    from attnsynth.toyworld import shapes

    guided = AttentionGuidedStableDiffusionPipeline.from_pipe(pipe)
    guided.set_progress_bar_config(disable=True)
    device = pipe.device
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()}
    results: dict[str, Any] = {"config": {**settings, "prompt_seed_start": config.prompt_seed_start}, "methods": {}}
    prompt_sets = {n: benchmark_prompts(n, config.n_prompts, seed_start=config.prompt_seed_start) for n in config.subject_counts}
    groups = {n: [resolve_subjects(p, [s.noun for s in spec.subjects], pipe.tokenizer) for p, spec, _ in prompts] for n, prompts in prompt_sets.items()}
    for method in config.methods:
        per_n: dict[str, Any] = {}
        all_scores: list[dict[str, Any]] = []
        total_seconds = 0.0
        for n, prompts in prompt_sets.items():
            scores: list[dict[str, Any]] = []
            seconds = 0.0
            for seed in range(config.n_seeds):
                generators = [torch.Generator(device="cpu").manual_seed(1000 * seed + i) for i in range(len(prompts))]
                kwargs: dict[str, Any] = {}
                if method != "none":
                    kwargs = dict(method=method, subjects=[[s.noun for s in spec.subjects] for _, spec, _ in prompts],
                                  guided_steps=config.guided_steps, step_size=recommended_for(config.__dict__, "step_size", method),
                                  loss_weights=dict(config.loss_weights) or None)
                start = time.perf_counter()
                out = guided([p for p, _, _ in prompts], num_inference_steps=config.num_inference_steps,
                             guidance_scale=config.guidance_scale, generator=generators, output_type="np",
                             attention_res=tuple(config.attention_res), return_attention_maps=True, **kwargs)
                seconds += time.perf_counter() - start
                images = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)  # [B, H, W, 3]
                for b, (image, (_, spec, _)) in enumerate(zip(images, prompts)):
                    score = shapes.score(image, spec)
                    score["attention"] = attention_on_objects(out.attention_maps[:, b], groups[n][b], spec, score)
                    scores.append(score)
                if on_batch is not None:
                    on_batch(method, n, seed)
            per_n[str(n)] = _summarise(scores, seconds)
            all_scores += scores
            total_seconds += seconds
        per_n["all"] = _summarise(all_scores, total_seconds)
        results["methods"][method] = per_n
    results["device"] = str(device)
    return results


def results_table(results: dict[str, Any]):
    """A rich Table: one row per (#subjects, method), oracle rates and seconds per image side by side."""
    from rich.table import Table

    split = results["config"].get("split", "test")
    table = Table(title=f"shapes-world T2I: oracle rates by method (held-out {split} prompts × seeds)")
    for column in ("subjects", "method", "images", "all present", "shapes present", "present rate", "colour binding", "attention lift", "s / image"):
        table.add_column(column, justify="left" if column in ("subjects", "method") else "right")
    methods = results["methods"]
    keys = list(next(iter(methods.values())).keys())
    for key in keys:
        for method, per_n in methods.items():
            r = per_n[key]
            table.add_row(key, method, str(r["images"]), f"{r['all_present']:.3f}", f"{r['shapes_present']:.3f}",
                          f"{r['present_rate']:.3f}", f"{r['colour_binding']:.3f}", f"{r.get('attention_lift', float('nan')):.2f}", f"{r['s_per_image']:.2f}")
        table.add_section()
    return table


def results_markdown(results: dict[str, Any]) -> str:
    """The same table as GitHub markdown (for ``benchmarks/RESULTS.md``)."""
    lines = ["| subjects | method | images | all present | shapes present | present rate | colour binding | attention lift | s / image |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for key in next(iter(results["methods"].values())).keys():
        for method, per_n in results["methods"].items():
            r = per_n[key]
            lines.append(f"| {key} | {method} | {r['images']} | {r['all_present']:.3f} | {r['shapes_present']:.3f} | "
                         f"{r['present_rate']:.3f} | {r['colour_binding']:.3f} | {r.get('attention_lift', float('nan')):.2f} | {r['s_per_image']:.2f} |")
    return "\n".join(lines)


def parse_methods(text: str) -> tuple[str, ...]:
    """``"none,ait2i"`` → ``("none", "ait2i")`` (validated by :class:`BenchConfig`)."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


def parse_loss_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``"isolation=0,excitation=1"`` → ``(("isolation", 0.0), ("excitation", 1.0))``; a one-line ValueError otherwise."""
    weights = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        term, _, value = item.partition("=")
        try:
            weights.append((term.strip(), float(value)))
        except ValueError:
            raise ValueError(f"--loss-weights must be a comma list of term=number, got {item!r}") from None
    return tuple(weights)


def parse_counts(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` → ``(1, 2, 3)``; a one-line ValueError otherwise."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--subjects must be a comma list of integers in 1..4, got {text!r}") from None

