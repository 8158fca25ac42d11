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

Rates come with Wilson 95 % intervals (``*_ci``) over images. With ``layout=True`` every subject
is also given a requested box — the layout the renderer would draw for that prompt seed
(:func:`requested_boxes`) — and the methods are ``none`` / ``layout`` / ``layout+ait2i`` (the box
loss plus the AI-T2I terms at their paper weights); ``box_iou`` is the mean over subjects of the
IoU between the object found for a subject (strict match) and its requested box (0 when not
found), ``in_box`` the share of subjects found with IoU ≥ 0.5.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from attnsynth.shapes_t2i.model import TOY_T2I_DEFAULTS

__all__ = ["BenchConfig", "LAYOUT_METHODS", "METHODS", "SPLITS", "benchmark_prompts", "box_iou", "layout_ious", "method_arguments", "method_loss_weights", "parse_counts", "parse_loss_weights",
           "parse_methods", "pipeline_method", "requested_boxes", "results_markdown", "results_table", "run_benchmark", "wilson_interval"]

METHODS = ("none", "attend-excite", "divide-bind", "ait2i", "ait2i-prompt-softmax")
#: Benchmark names of pipeline variants: ``{name: (method, extra pipeline arguments)}``.
#: ``ait2i-prompt-softmax`` is AI-T2I with its excitation softmax over the prompt's own tokens
#: (``token_softmax="prompt"``) instead of the authors' [1:-1] slice.
VARIANTS = {"ait2i-prompt-softmax": ("ait2i", {"token_softmax": "prompt"}), "layout+ait2i": ("layout", {})}
#: Methods of the layout benchmark: unguided, the box loss, and the box loss plus the AI-T2I terms.
LAYOUT_METHODS = ("none", "layout", "layout+ait2i")
_AIT2I_PLUS_BOX = {"box": 1.0, "isolation": 2.0, "aggregation": 1.25, "excitation": 0.25, "attribute": 0.75}
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
    layout: bool = False  # give every subject a requested box (methods from LAYOUT_METHODS)

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
        allowed = LAYOUT_METHODS if self.layout else METHODS
        bad = [m for m in self.methods if m not in allowed]
        if bad or not self.methods:
            mode = " with --layout" if self.layout else ""
            raise ValueError(f"--methods must be a comma list from {', '.join(allowed)}{mode}, got {','.join(self.methods) or 'nothing'}")
        if any(n not in (1, 2, 3, 4) for n in self.subject_counts) or not self.subject_counts:
            raise ValueError(f"subject counts must be in 1..4, got {self.subject_counts}")
        if self.loss_weights:
            from attnsynth.t2i.losses import DEFAULT_WEIGHTS

            for method in self.methods:
                terms = DEFAULT_WEIGHTS.get(pipeline_method(method), {})
                unknown = sorted({term for term, _ in self.loss_weights} - set(terms)) if method != "none" else []
                if unknown:
                    raise ValueError(f"--loss-weights term(s) {', '.join(unknown)} unknown for method {method}; "
                                     f"expected some of {', '.join(sorted(terms))}")
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        sizes = self.step_size.values() if isinstance(self.step_size, dict) else [self.step_size]
        if any(size is not None and not size > 0 for size in sizes):
            raise ValueError(f"--step-size must be > 0, got {self.step_size}")
        if self.guided_steps > self.num_inference_steps:
            raise ValueError(f"guided_steps ({self.guided_steps}) must be <= num_inference_steps ({self.num_inference_steps})")


def pipeline_method(method: str) -> str:
    """The pipeline's ``method=`` for a benchmark method name (``layout+ait2i`` runs the layout method)."""
    return VARIANTS[method][0] if method in VARIANTS else method


def method_arguments(method: str, overrides: tuple[tuple[str, float], ...] = ()) -> dict[str, Any]:
    """The guided pipeline's ``method=``, ``loss_weights=`` and a variant's extra arguments for a benchmark method name."""
    return {"method": pipeline_method(method), "loss_weights": method_loss_weights(method, overrides), **VARIANTS.get(method, (None, {}))[1]}


def method_loss_weights(method: str, overrides: tuple[tuple[str, float], ...]) -> dict[str, float] | None:
    """Loss weights passed to the pipeline: the preset of ``layout+ait2i``, then the user's overrides."""
    weights = dict(_AIT2I_PLUS_BOX) if method == "layout+ait2i" else {}
    weights.update(dict(overrides))
    return weights or None


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion ``successes / n`` (stays inside [0, 1] at 0 or n)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return (float(lo), float(hi))


def requested_boxes(spec: Any, prompt_seed: int) -> dict[str, tuple[float, float, float, float]]:
    """``{noun: (x0, y0, x1, y1)}``: where the renderer would put each subject of ``spec`` (prompt seed's own layout).

    The layout comes from the renderer's own sampler (sizes, border, gaps and relations as in
    training scenes), so every request is a layout the model has seen the like of.
    """
    from attnsynth.toyworld.shapes_draw import sample_layout

    rng = np.random.Generator(np.random.PCG64(int(prompt_seed)))
    layout = sample_layout(rng, list(spec.objects), list(spec.relations))
    return {subject.noun: tuple(layout[subject.object_index][0]) for subject in spec.subjects}


def box_iou(a: Any, b: Any) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def layout_ious(spec: Any, boxes: dict[str, Any], verdict: dict[str, Any]) -> list[float]:
    """Per subject: IoU of the object found for it (the oracle's strict match) with its requested box; 0 if not found."""
    ious = []
    for subject in spec.subjects:
        found = verdict["matched_boxes"][subject.object_index]
        ious.append(box_iou(found[0], boxes[subject.noun]) if found else 0.0)
    return ious


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


def _summarise(scores: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    binding = [s["colour_binding_rate"] for s in scores if s["colour_binding_rate"] is not None]
    pairs = [pair for s in scores for pair in s.get("attention", [])]
    all_present = [bool(s["all_present"]) for s in scores]
    shapes_present = [all(s["present"]) for s in scores]
    summary: dict[str, Any] = {
        "images": len(scores),
        "all_present": float(np.mean(all_present)),
        "all_present_ci": wilson_interval(sum(all_present), len(scores)),
        "shapes_present": float(np.mean(shapes_present)),
        "shapes_present_ci": wilson_interval(sum(shapes_present), len(scores)),
        "present_rate": float(np.mean([s["present_rate"] for s in scores])),
        "colour_binding": float(np.mean(binding)) if binding else float("nan"),
        "attention_lift": sum(i for i, _ in pairs) / sum(a for _, a in pairs) if pairs else float("nan"),
        "s_per_image": seconds / max(1, len(scores)),
    }
    ious = [iou for s in scores for iou in s.get("box_ious", [])]
    if ious:
        inside = [iou >= 0.5 for iou in ious]
        summary.update(box_iou=float(np.mean(ious)), in_box=float(np.mean(inside)), in_box_ci=wilson_interval(sum(inside), len(ious)))
    return summary


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
    boxes = {n: [requested_boxes(spec, seed) for _, spec, seed in prompts] for n, prompts in prompt_sets.items()} if config.layout else {}
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
                    kwargs = dict(subjects=[[s.noun for s in spec.subjects] for _, spec, _ in prompts], guided_steps=config.guided_steps,
                                  step_size=recommended_for(config.__dict__, "step_size", method), **method_arguments(method, config.loss_weights))
                    if config.layout:
                        kwargs["boxes"] = boxes[n] if len(prompts) > 1 else boxes[n][0]  # one prompt: its dict
                start = time.perf_counter()
                out = guided([p for p, _, _ in prompts], num_inference_steps=config.num_inference_steps,
                             guidance_scale=config.guidance_scale, generator=generators, output_type="np",
                             attention_res=tuple(config.attention_res), return_attention_maps=True, **kwargs)
                seconds += time.perf_counter() - start
                images = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)  # [B, H, W, 3]
                for b, (image, (_, spec, _)) in enumerate(zip(images, prompts)):
                    score = shapes.score(image, spec)
                    score["attention"] = attention_on_objects(out.attention_maps[:, b], groups[n][b], spec, score)
                    if config.layout:
                        score["box_ious"] = layout_ious(spec, boxes[n][b], score)
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


def _fmt_rate(r: dict[str, Any], key: str) -> str:
    ci = r.get(f"{key}_ci")
    return f"{r[key]:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{r[key]:.3f}"


def _table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and one row of cells per (#subjects, method), shared by the rich and markdown tables."""
    methods = results["methods"]
    layout = bool(results["config"].get("layout"))
    columns = ["subjects", "method", "images", "all present [95 % CI]", "shapes present", "present rate", "colour binding", "attention lift"]
    columns += ["box IoU", "in box (IoU ≥ 0.5) [95 % CI]"] if layout else []
    columns.append("s / image")
    rows = []
    for key in next(iter(methods.values())).keys():
        for method, per_n in methods.items():
            r = per_n[key]
            cells = [key, method, str(r["images"]), _fmt_rate(r, "all_present"), f"{r['shapes_present']:.3f}", f"{r['present_rate']:.3f}",
                     f"{r['colour_binding']:.3f}", f"{r.get('attention_lift', float('nan')):.2f}"]
            if layout:
                cells += [f"{r.get('box_iou', float('nan')):.3f}", _fmt_rate(r, "in_box") if "in_box" in r else "nan"]
            rows.append(cells + [f"{r['s_per_image']:.2f}"])
    return columns, rows


def results_table(results: dict[str, Any]):
    """A rich Table: one row per (#subjects, method), oracle rates and seconds per image side by side."""
    from rich.table import Table

    split = results["config"].get("split", "test")
    kind = "layout-controlled, " if results["config"].get("layout") else ""
    table = Table(title=f"shapes-world T2I: oracle rates by method ({kind}held-out {split} prompts × seeds)")
    columns, rows = _table_rows(results)
    for column in columns:
        table.add_column(column, justify="left" if column in ("subjects", "method") else "right")
    n_methods = len(results["methods"])
    for i, cells in enumerate(rows):
        table.add_row(*cells)
        if (i + 1) % n_methods == 0:
            table.add_section()
    return table


def results_markdown(results: dict[str, Any]) -> str:
    """The same table as GitHub markdown (for ``benchmarks/RESULTS.md``)."""
    columns, rows = _table_rows(results)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c in ("subjects", "method") else "--:" for c in columns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
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

