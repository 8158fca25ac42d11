"""Demo section: the shipped shapes-world text-to-image model — unguided vs Attend-and-Excite vs AI-T2I,
layout-controlled generation, personalised generation (a learned concept), and the subjects' attention
over the denoising steps.

Prompts are not picked by hand: they are the first prompts of the benchmark's *validation* split
(:func:`attnsynth.shapes_t2i.bench.benchmark_prompts`) for each subject count shown, seed 0 — the
test split, on which the benchmark reports, is never shown here. The shapes oracle reads every
image back; for the layout row the requested boxes are drawn on the images and the oracle's IoU
with them is given. The personalisation row uses the concept shipped in ``assets/toy_t2i_heart`` (the
unseen heart, learned by textual inversion + a small UNet LoRA) on the first prompt of the
personalisation benchmark (:func:`attnsynth.shapes_t2i.personalize.personalize_prompts`).
"""

from __future__ import annotations

import copy
import html
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from attnsynth.demo import figure
from attnsynth.t2i.figures import attention_steps_figure
from attnsynth.toyworld.demo_page import shapes_verdict

TITLE = "AI-T2I: attention-guided generation (shapes-world model)"
#: (label, benchmark method) of the comparison rows
COMPARED = (("unguided", "none"), ("Attend-and-Excite", "attend-excite"), ("AI-T2I", "ait2i"))
#: (label, benchmark method) of the layout row
LAYOUT_COMPARED = (("unguided", "none"), ("layout", "layout"), ("layout + AI-T2I", "layout+ait2i"))
SCALE = 3
#: The shipped personalised concept (learned embedding + LoRA) shown in the personalisation row
CONCEPT_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_t2i_heart"
_BOX_COLOURS = ((220, 40, 40), (40, 90, 220), (30, 150, 60), (200, 120, 0))


def demo_prompts(subject_counts: tuple[int, ...] = (2, 3)) -> list[tuple[str, Any, int]]:
    """The first validation-split benchmark prompt for each subject count: ``(prompt, spec, prompt_seed)``."""
    from attnsynth.shapes_t2i.bench import SPLITS, benchmark_prompts

    return [benchmark_prompts(n, 1, seed_start=SPLITS["validation"])[0] for n in subject_counts]


def draw_boxes(image: np.ndarray, boxes: dict[str, Any], scale: int = SCALE) -> np.ndarray:
    """``image`` upscaled ``scale``× with each requested box outlined in its own colour."""
    big = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for k, (name, (x0, y0, x1, y1)) in enumerate(boxes.items()):
        colour = _BOX_COLOURS[k % len(_BOX_COLOURS)]
        draw.rectangle([x0 * big.width, y0 * big.height, x1 * big.width - 1, y1 * big.height - 1], outline=colour, width=2)
        draw.text((x0 * big.width + 3, y0 * big.height + 1), name, fill=colour)
    return np.asarray(big)


class _Sampler:
    """One guided pipeline around the shapes model, with the model's recommended settings per method."""

    def __init__(self, base) -> None:
        from attnsynth.t2i import AttentionGuidedStableDiffusionPipeline

        self.pipe = AttentionGuidedStableDiffusionPipeline.from_pipe(base)
        self.pipe.set_progress_bar_config(disable=True)
        self.defaults = dict(getattr(base, "attnsynth_defaults", {}) or {})

    def __call__(self, prompt: str, nouns: list[str], method: str, seed: int, boxes: dict | None = None):
        from attnsynth.shapes_t2i.bench import method_arguments
        from attnsynth.t2i import recommended_for

        settings = {key: self.defaults[key] for key in ("num_inference_steps", "guidance_scale", "height", "width") if key in self.defaults}
        if "attention_res" in self.defaults:
            settings["attention_res"] = tuple(self.defaults["attention_res"])
        if method != "none":
            settings.update(subjects=nouns, boxes=boxes if method.startswith("layout") else None, **method_arguments(method))
            settings.update({key: recommended_for(self.defaults, key, method) for key in ("guided_steps", "step_size") if key in self.defaults})
        else:
            settings["subjects"] = nouns  # maps of the subjects are recorded without guidance too
        out = self.pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), output_type="np", return_attention_maps=True, **settings)
        return np.round(out.images[0] * 255).astype(np.uint8), out


def _comparison_row(sample: _Sampler, out_dir: Path, index: int, prompt: str, spec: Any, seed: int) -> str:
    from attnsynth.toyworld import shapes

    nouns = [s.noun for s in spec.subjects]
    cells, runs, groups = [], {}, None
    for label, method in COMPARED:
        image, out = sample(prompt, nouns, method, seed)
        cells.append(figure(out_dir, f"t2i_{index}_{method}.png", image, f"{label}<br>{shapes_verdict(shapes.score(image, spec))}", scale=SCALE))
        runs[label] = (image, out.attention_maps[:, 0])
        groups = out.subjects[0]
    cells.append(figure(out_dir, f"t2i_{index}_attention.png", attention_steps_figure(runs, groups), "each subject's attention over the steps", scale=None))
    return f"<h4>“{html.escape(prompt)}” — seed {seed}</h4><div>{''.join(cells)}</div>"


def _layout_row(sample: _Sampler, out_dir: Path, prompt: str, spec: Any, prompt_seed: int, seed: int) -> str:
    from attnsynth.shapes_t2i.bench import layout_ious, requested_boxes
    from attnsynth.toyworld import shapes

    nouns = [s.noun for s in spec.subjects]
    boxes = requested_boxes(spec, prompt_seed)
    cells = []
    for label, method in LAYOUT_COMPARED:
        image, _ = sample(prompt, nouns, method, seed, boxes=boxes)
        verdict = shapes.score(image, spec)
        iou = float(np.mean(layout_ious(spec, boxes, verdict)))
        cells.append(figure(out_dir, f"t2i_layout_{method}.png", draw_boxes(image, boxes),
                            f"{label}<br>{shapes_verdict(verdict)}<br>box IoU {iou:.2f}", scale=None))
    return f"<h4>Layout: “{html.escape(prompt)}” with the boxes drawn — seed {seed}</h4><div>{''.join(cells)}</div>"


def _personalisation_row(concept_pipe, out_dir: Path, seed: int) -> str:
    """Unguided vs AI-T2I on the first heart + known-shape prompt, with the learned ``<heart>`` concept loaded."""
    from attnsynth.shapes_t2i.personalize import PLACEHOLDER, concept_verdict, personalize_prompts, with_placeholder

    prompt, spec, _ = personalize_prompts(1, 1)[0]
    text = with_placeholder(prompt, spec, "heart", PLACEHOLDER)
    nouns = [PLACEHOLDER if spec.objects[s.object_index].shape == "heart" else s.noun for s in spec.subjects]
    sample = _Sampler(concept_pipe)
    cells = []
    for label, method in (("unguided", "none"), ("AI-T2I", "ait2i")):
        image, _ = sample(text, nouns, method, seed)
        verdict = concept_verdict(image, spec, "heart")
        caption = f"{label}<br>heart {'✓' if verdict['novel_shape'] else '✗'}, known shapes {'✓' if verdict['known_present'] else '✗'}"
        cells.append(figure(out_dir, f"t2i_concept_{method}.png", image, caption, scale=SCALE))
    return (f"<h4>Personalised: “{html.escape(text)}” — the learned {html.escape(PLACEHOLDER)} (textual inversion + LoRA), "
            f"seed {seed}</h4><p>The model never saw a heart; a learned embedding plus a small UNet LoRA make it draw one "
            f"only some of the time, and guidance does not change that (the personalisation table in "
            f"<code>benchmarks/RESULTS.md</code>).</p><div>{''.join(cells)}</div>")


def render(out_dir: Path, *, pipe=None, prompts: list[tuple[str, Any, int]] | None = None, seeds: tuple[int, ...] = (0,),
           layout: bool = True, concept: str | Path | None = CONCEPT_DIR) -> str:
    """Write the comparison, layout, personalisation and attention figures into ``out_dir``; return the section's HTML.

    ``concept``: a directory written by ``attnsynth personalize train`` (None or missing: no personalisation row);
    it is loaded into a separate copy of the model, so the other rows use the model as shipped.
    """
    from attnsynth.shapes_t2i import load_t2i_pipeline
    from attnsynth.shapes_t2i.personalize import PLACEHOLDER, load_concept

    sample = _Sampler(pipe if pipe is not None else load_t2i_pipeline())
    prompts = demo_prompts() if prompts is None else prompts
    rows = [_comparison_row(sample, out_dir, p, prompt, spec, seed) for p, (prompt, spec, _) in enumerate(prompts) for seed in seeds]
    if layout:
        prompt, spec, prompt_seed = prompts[0]
        rows.append(_layout_row(sample, out_dir, prompt, spec, prompt_seed, seeds[0]))
    if concept is not None and Path(concept).is_dir():
        concept_pipe = load_concept(load_t2i_pipeline() if pipe is None else copy.deepcopy(pipe), concept, PLACEHOLDER)
        concept_pipe.attnsynth_defaults = sample.defaults
        rows.append(_personalisation_row(concept_pipe, out_dir, seeds[0]))
    return (
        "<p>The small latent diffusion model trained here from scratch on shapes-world captions, with a token-grounding "
        "loss that keeps each subject word's cross-attention on its object (shipped in <code>attnsynth/assets/toy_t2i</code>). "
        "Each prompt is sampled with the same seed without guidance, with Attend-and-Excite and with AI-T2I (the authors' "
        "aggregation + isolation + excitation + attribute losses), at the model's recommended step sizes. Prompts: the "
        "first prompt of the benchmark's <em>validation</em> split for 2 and 3 subjects (never the test split), seed 0 — "
        "not chosen by looking at the results. The oracle detects shapes and colours in each image. Benchmark rates "
        "over many prompts and seeds, with intervals, are in <code>benchmarks/RESULTS.md</code>: on this model "
        "guidance does not beat unguided sampling, though the maps now sit on the objects.</p>"
        + "\n".join(rows)
    )
