"""Demo section: the shipped shapes-world text-to-image model, unguided vs AI-T2I-guided.

For a few multi-subject prompts, the same seed is sampled without guidance and with AI-T2I; the
shapes oracle says which subjects it finds, and a figure shows each subject's attention map over
the denoising steps for both runs.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from attnsynth.demo import figure
from attnsynth.t2i.figures import attention_steps_figure
from attnsynth.toyworld.demo_page import shapes_verdict

TITLE = "AI-T2I: attention-guided generation (shapes-world model)"
PROMPTS = (
    ("a red circle and a blue square", ["circle", "square"]),
    ("a green star and a yellow triangle", ["star", "triangle"]),
    ("a purple diamond, an orange circle and a cyan cross", ["diamond", "circle", "cross"]),
)
SCALE = 3


def _generate(pipe, prompt: str, subjects: list[str], method: str | None, seed: int, settings: dict):
    return pipe(
        prompt,
        subjects=subjects if method else None,
        method=method,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        return_attention_maps=True,
        **settings,
    )


def render(out_dir: Path, *, pipe=None, prompts=PROMPTS, seeds: tuple[int, ...] = (0,)) -> str:
    """Write unguided/guided images and attention figures into ``out_dir``; return the section's HTML."""
    from attnsynth.t2i import AttentionGuidedStableDiffusionPipeline, recommended_for
    from attnsynth.toyworld import shapes
    from attnsynth.shapes_t2i import load_t2i_pipeline

    base = pipe if pipe is not None else load_t2i_pipeline()
    guided_pipe = AttentionGuidedStableDiffusionPipeline.from_pipe(base)
    guided_pipe.set_progress_bar_config(disable=True)
    defaults = dict(getattr(base, "attnsynth_defaults", {}))
    settings = {key: defaults[key] for key in ("num_inference_steps", "guidance_scale", "height", "width") if key in defaults}
    guided_settings = {key: recommended_for(defaults, key, "ait2i") for key in ("guided_steps", "step_size") if key in defaults}
    if "attention_res" in defaults:
        guided_settings["attention_res"] = tuple(defaults["attention_res"])
    rows = []
    for p, (prompt, subjects) in enumerate(prompts):
        spec = shapes.spec_from_prompt(prompt)
        for seed in seeds:
            cells = []
            runs = {}
            for label, method in (("unguided", None), ("AI-T2I", "ait2i")):
                extra = guided_settings if method else {"attention_res": guided_settings.get("attention_res")}
                out = _generate(guided_pipe, prompt, subjects, method, seed, {**settings, **extra})
                image = np.round(out.images[0] * 255).astype(np.uint8)
                verdict = shapes.score(image, spec)
                name = f"t2i_{p}_{seed}_{'guided' if method else 'plain'}.png"
                cells.append(figure(out_dir, name, image, f"{label}<br>{shapes_verdict(verdict)}", scale=SCALE))
                runs[label] = (image, out.attention_maps[:, 0])
            groups = out.subjects[0]
            cells.append(figure(out_dir, f"t2i_{p}_{seed}_attention.png", attention_steps_figure(runs, groups),
                                "subject attention over the steps", scale=None))
            rows.append(f"<h4>“{html.escape(prompt)}” — seed {seed}</h4><div>{''.join(cells)}</div>")
    return (
        "<p>The small latent diffusion model trained here from scratch on shapes-world captions (shipped in "
        "<code>attnsynth/assets/toy_t2i</code>), sampled with the same seed without guidance and with AI-T2I "
        "(aggregation + isolation + excitation + attribute losses). The oracle detects shapes and colours in each "
        "image. Benchmark rates over many prompts and seeds are in <code>benchmarks/RESULTS.md</code>: on this model "
        "guidance does not beat unguided sampling, because its subject maps barely follow the objects (attention lift "
        "0.97, 1 = no layout information) — the maps below show it.</p>"
        + "\n".join(rows)
    )
