"""`attnsynth t2i …`: attention-guided Stable Diffusion (AI-T2I and baselines)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Attention-guided text-to-image generation on diffusers Stable Diffusion pipelines.", no_args_is_help=True)

METHOD_CHOICES = ("ait2i", "attend-excite", "divide-bind", "layout", "none")
DTYPES = ("float32", "float16", "bfloat16")
TOKEN_SOFTMAX_CHOICES = ("all", "prompt")


def parse_subjects(text: str | None) -> Any:
    """'cat,dog' → ['cat', 'dog']; 'cat/kitten,dog' → [['cat', 'kitten'], 'dog']; 'auto' → 'auto'."""
    if text is None or not text.strip():
        return None
    if text.strip() == "auto":
        return "auto"
    subjects: list[Any] = []
    for item in text.split(","):
        names = [name.strip() for name in item.split("/") if name.strip()]
        if not names:
            raise ValueError(f"--subjects {text!r} has an empty entry; expected e.g. 'cat,dog' or 'cat/kitten,dog'")
        subjects.append(names[0] if len(names) == 1 else names)
    return subjects


def parse_boxes(text: str | None) -> dict[str, tuple[float, ...]] | None:
    """'cat=0,0,0.5,1;dog=0.5,0,1,1' → {'cat': (0, 0, 0.5, 1), 'dog': (0.5, 0, 1, 1)}."""
    if text is None or not text.strip():
        return None
    boxes = {}
    for item in text.split(";"):
        name, _, numbers = item.partition("=")
        try:
            values = tuple(float(v) for v in numbers.split(","))
        except ValueError:
            values = ()
        if not name.strip() or len(values) != 4:
            raise ValueError(f"--boxes entry {item!r} is invalid; expected subject=x0,y0,x1,y1 (e.g. cat=0,0,0.5,1)")
        boxes[name.strip()] = values
    return boxes


def read_prompt_file(path: Path) -> list[tuple[str, str | None]]:
    """Non-empty lines of ``path`` as (prompt, subjects text or None); 'prompt | cat,dog' sets subjects."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompt-file {path} does not exist")
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        prompt, bar, subjects = line.partition("|")
        entries.append((prompt.strip(), subjects.strip() if bar else None))
    if not entries:
        raise ValueError(f"--prompt-file {path} holds no prompts")
    return entries


def _slug(prompt: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit] or "prompt"


def _image_array(image: Any):
    import numpy as np

    return np.asarray(image.convert("RGB"))


@app.command("generate")
def generate_command(
    model: Path = typer.Option(..., "--model", help="Local diffusers SD 1.x/2.x, SDXL, SD3/3.5 or FLUX directory (with model_index.json); the family is detected."),
    prompt: str = typer.Option(None, "--prompt", help="The prompt (single-image mode, with --out)."),
    prompt_file: Path = typer.Option(None, "--prompt-file", help="One prompt per line, 'prompt | cat,dog' to set its subjects (with --out-dir)."),
    subjects: str = typer.Option(None, "--subjects", help="Comma-separated subjects, '/' joins synonyms (cat/kitten,dog), or 'auto'."),
    method: str = typer.Option("ait2i", "--method", help="ait2i, attend-excite, divide-bind, layout, or none (plain SD)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (CPU generator, so images match across devices)."),
    num_seeds: int = typer.Option(1, "--num-seeds", help="Images per prompt, seeds seed … seed+n−1."),
    steps: int = typer.Option(None, "--steps", help="Denoising steps (default: the model's recommended, else 50)."),
    guided_steps: int = typer.Option(None, "--guided-steps", help="Guided steps (default: the model's recommended, else the method's: 25 for ait2i)."),
    step_size: float = typer.Option(None, "--step-size", help="Latent step size α (default: the model's recommended, else the method's: 20)."),
    guidance_scale: float = typer.Option(None, "--guidance-scale", help="Classifier-free guidance scale (default: the model's recommended, else the pipeline's)."),
    resolution: str = typer.Option(None, "--resolution", help="Image size R or HxW (default: the model's)."),
    attention_res: str = typer.Option(None, "--attention-res", help="Attention-map grid R or HxW (default: the model's recommended, else image/32)."),
    boxes: str = typer.Option(None, "--boxes", help="Layout boxes: 'cat=0,0,0.5,1;dog=0.5,0,1,1' (x0,y0,x1,y1 in [0, 1])."),
    token_softmax: str = typer.Option("all", "--token-softmax", help="Excitation softmax tokens (SD/SDXL): 'all' = the authors' [1:-1], 'prompt' = the named variant over the prompt's own tokens."),
    out: Path = typer.Option(None, "--out", help="Output PNG (single-image mode)."),
    out_dir: Path = typer.Option(None, "--out-dir", help="Output directory (batch mode): NNNN_<prompt>_seedS.png per prompt and seed."),
    save_attention: Path = typer.Option(None, "--save-attention", help="Also write a PNG of each subject's map over the steps, guided vs unguided."),
    device: str = typer.Option(None, "--device", help="torch device (default: Accelerate's choice for this process)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
) -> None:
    """Generate images with attention guidance; several processes split --prompt-file via `accelerate launch`."""
    if method not in METHOD_CHOICES:
        raise ValueError(f"--method {method!r} is unknown; expected one of {', '.join(METHOD_CHOICES)}")
    if token_softmax not in TOKEN_SOFTMAX_CHOICES:
        raise ValueError(f"--token-softmax {token_softmax!r} is unknown; expected one of {', '.join(TOKEN_SOFTMAX_CHOICES)}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is unknown; expected one of {', '.join(DTYPES)}")
    if (prompt is None) == (prompt_file is None):
        raise ValueError("give exactly one of --prompt (with --out) and --prompt-file (with --out-dir)")
    if prompt is not None and (out is None or out_dir is not None):
        raise ValueError("--prompt writes one image: give --out (and not --out-dir)")
    if prompt_file is not None and (out_dir is None or out is not None or save_attention is not None):
        raise ValueError("--prompt-file needs --out-dir (and neither --out nor --save-attention)")
    if num_seeds < 1 or (prompt is not None and num_seeds != 1):
        raise ValueError(f"--num-seeds {num_seeds} is invalid; expected >= 1, and 1 with --prompt")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps {steps} is invalid; expected >= 1")
    entries = [(prompt, None)] if prompt is not None else read_prompt_file(prompt_file)

    import torch
    from accelerate import PartialState

    from attnsynth.t2i import load_pipeline, recommended_for
    from attnsynth.utils.images import parse_resolution
    from attnsynth.utils.io import atomic_save_png

    try:
        size = parse_resolution(resolution) if resolution is not None else None
    except ValueError as error:
        raise ValueError(f"--resolution: {error}") from None
    try:
        grid = parse_resolution(attention_res) if attention_res is not None else None
    except ValueError as error:
        raise ValueError(f"--attention-res: {error}") from None
    state = PartialState()
    pipe = load_pipeline(model, device=device or state.device, dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=prompt_file is not None or not state.is_main_process)
    recommended = pipe.attnsynth_defaults  # settings saved with the model fill in what was not given
    steps = steps if steps is not None else int(recommended.get("num_inference_steps", 50))
    common: dict[str, Any] = {"num_inference_steps": steps}
    if size is None and "height" in recommended:
        size = (int(recommended["height"]), int(recommended["width"]))
    if size is not None:
        common.update(height=size[0], width=size[1])
    if guidance_scale is None:
        guidance_scale = recommended.get("guidance_scale")
    if guidance_scale is not None:
        common["guidance_scale"] = guidance_scale
    if grid is None and "attention_res" in recommended:
        grid = tuple(int(v) for v in recommended["attention_res"])
    if grid is not None:
        common["attention_res"] = grid
    if guided_steps is None and "guided_steps" in recommended:
        guided_steps = min(int(recommended["guided_steps"]), steps)
    guidance = {
        "method": None if method == "none" else method,
        "guided_steps": guided_steps,
        "step_size": step_size if step_size is not None else recommended_for(recommended, "step_size", method),
        "boxes": parse_boxes(boxes),
    }
    if token_softmax != "all":  # only the SD/SDXL pipelines take it (SD3/FLUX always use the prompt's tokens)
        guidance["token_softmax"] = token_softmax
    if guidance["method"] is None:
        guidance = {"method": None}

    def run(text: str, spec: Any, image_seed: int, **extra: Any):
        generator = torch.Generator("cpu").manual_seed(image_seed)
        return pipe(text, subjects=spec, generator=generator, **common, **extra)

    if prompt is not None:
        spec = parse_subjects(subjects)
        result = run(prompt, spec, seed, **guidance, return_attention_maps=save_attention is not None)
        atomic_save_png(out, _image_array(result.images[0]))
        typer.echo(f"wrote {out}")
        if save_attention is not None:
            _save_attention_figure(save_attention, result, run(prompt, spec, seed, method=None, return_attention_maps=True))
            typer.echo(f"wrote {save_attention}")
        return

    jobs = [(index, text, parse_subjects(own if own is not None else subjects), s) for index, (text, own) in enumerate(entries) for s in range(seed, seed + num_seeds)]
    with state.split_between_processes(jobs) as mine:
        from rich.progress import track

        for index, text, spec, image_seed in track(mine, description=f"process {state.process_index}", disable=not state.is_main_process):
            result = run(text, spec, image_seed, **guidance)
            atomic_save_png(out_dir / f"{index:04d}_{_slug(text)}_seed{image_seed}.png", _image_array(result.images[0]))
    state.wait_for_everyone()
    if state.is_main_process:
        typer.echo(f"wrote {len(jobs)} images to {out_dir}")


def _save_attention_figure(path: Path, guided: Any, unguided: Any) -> None:
    """Write the subject-maps-over-steps figure of a guided and an unguided run of the same seed."""
    from attnsynth.t2i.figures import attention_steps_figure
    from attnsynth.utils.io import atomic_save_png

    groups = (guided.subjects or [()])[0]
    if not groups:
        raise ValueError("--save-attention needs subjects (--subjects cat,dog or auto)")
    runs = {
        "guided": (_image_array(guided.images[0]), guided.attention_maps[:, 0]),
        "unguided": (_image_array(unguided.images[0]), unguided.attention_maps[:, 0]),
    }
    atomic_save_png(path, attention_steps_figure(runs, groups))
