"""`attnsynth bench …`: benchmarks that print side-by-side tables."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Benchmarks with side-by-side ratios.", no_args_is_help=True)

DEFAULT_METHODS = "none,attend-excite,divide-bind,ait2i"


@app.command("toy-t2i")
def toy_t2i_command(
    prompts: int = typer.Option(8, "--prompts", help="Held-out prompts per subject count."),
    seeds: int = typer.Option(2, "--seeds", help="Sampling seeds per prompt."),
    methods: str = typer.Option(DEFAULT_METHODS, "--methods", help="Comma list: none, attend-excite, divide-bind, ait2i, ait2i-prompt-softmax (with --layout: none, layout, layout+ait2i)."),
    subjects: str = typer.Option("1,2,3,4", "--subjects", help="Comma list of subject counts (1–4)."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps (default: the model's recommended)."),
    guidance_scale: float = typer.Option(None, "--guidance-scale", help="Classifier-free guidance (default: the model's recommended)."),
    guided_steps: int = typer.Option(None, "--guided-steps", help="Guided steps (default: the model's recommended)."),
    step_size: float = typer.Option(None, "--step-size", help="Guided latent step size (default: the model's recommended)."),
    loss_weights: str = typer.Option("", "--loss-weights", help="Loss-weight overrides for the guided methods, e.g. 'isolation=0,excitation=1'."),
    split: str = typer.Option("test", "--split", help="Held-out prompts: 'validation' to choose settings on, 'test' to report."),
    layout: bool = typer.Option(False, "--layout", help="Layout-controlled: every subject gets a requested box; methods none, layout, layout+ait2i; adds box IoU."),
    model: str = typer.Option(None, "--model", help="Pipeline directory (default: the shipped shapes-world model)."),
    device: str = typer.Option(None, "--device", help="torch device (default cpu)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as GitHub markdown (for benchmarks/RESULTS.md)."),
) -> None:
    """Attention guidance on the shipped shapes-world model: oracle rates per method and #subjects."""
    import json
    from dataclasses import replace

    from rich.console import Console

    from attnsynth.cli._quiet import quiet_torch
    from attnsynth.shapes_t2i.bench import LAYOUT_METHODS, BenchConfig, parse_counts, parse_loss_weights, parse_methods, results_markdown, results_table, run_benchmark
    from attnsynth.shapes_t2i.model import load_t2i_pipeline

    quiet_torch(threads)
    pipe = load_t2i_pipeline(model, device=device)
    if layout and methods == DEFAULT_METHODS:
        methods = ",".join(LAYOUT_METHODS)
    config = BenchConfig.for_pipeline(pipe, n_prompts=prompts, n_seeds=seeds, methods=parse_methods(methods), layout=layout,
                                      subject_counts=parse_counts(subjects), guidance_scale=guidance_scale,
                                      step_size=step_size, split=split,
                                      loss_weights=parse_loss_weights(loss_weights))
    if steps is not None:
        config = replace(config, num_inference_steps=steps, guided_steps=min(config.guided_steps, steps // 2))
    if guided_steps is not None:
        config = replace(config, guided_steps=guided_steps)
    console = Console(stderr=True)
    with console.status("generating…") as status:
        results = run_benchmark(pipe, config, on_batch=lambda m, n, s: status.update(f"{m}: {n} subject(s), seed {s} done"))
    if json_out:
        typer.echo(json.dumps(results, indent=2))
    elif markdown:
        typer.echo(results_markdown(results))
    else:
        Console(width=max(110, Console().width)).print(results_table(results))


@app.command("clip")
def clip_command(
    clip: Path = typer.Option(..., "--clip", help="Local CLIP directory (transformers; the protocol uses openai/clip-vit-base-patch16)."),
    out: Path = typer.Option(None, "--out", help="Generate into OUT/<method>/<prompt>/<seed>.png (missing images only) and score them."),
    model: Path = typer.Option(None, "--model", help="Local SD 1.x/2.x/XL pipeline directory to generate with (needs --out)."),
    read: list[str] = typer.Option([], "--read", help="Score an existing METHOD=DIR folder of <prompt>/<seed>.png (repeatable)."),
    blip: Path = typer.Option(None, "--blip", help="Local BLIP captioning directory (Salesforce/blip-image-captioning-base) for the text–text similarity."),
    methods: str = typer.Option("none,attend-excite,ait2i", "--methods", help="Comma list to generate: none, attend-excite, divide-bind, ait2i."),
    sets: str = typer.Option("animals,animal-object,object-object", "--sets", help="Comma list of A&E prompt sets."),
    prompts_file: Path = typer.Option(None, "--prompts-file", help="Prompts instead of the sets: one a line, 'prompt' or 'prompt | subject1,subject2'."),
    limit: int = typer.Option(None, "--limit", help="Only the first N prompts of each set (quick runs)."),
    seeds: int = typer.Option(64, "--seeds", help="Seeds 0..N-1 per prompt (64 in the paper)."),
    steps: int = typer.Option(50, "--steps", help="Sampling steps."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", help="Classifier-free guidance."),
    dtype: str = typer.Option("float16", "--dtype", help="Pipeline dtype when generating on CUDA: float16, bfloat16, float32 (CPU always float32)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per CLIP/BLIP batch."),
    device: str = typer.Option(None, "--device", help="Scoring device (default: the Accelerate device)."),
    results: Path = typer.Option(None, "--results", help="Also write the raw and aggregated results here (JSON)."),
    json_out: bool = typer.Option(False, "--json", help="Print the aggregated rows as JSON instead of a markdown table."),
) -> None:
    """The Attend-and-Excite CLIP protocol: full-prompt, minimum-object and BLIP text–text similarities per method."""
    import json

    import torch

    from attnsynth.t2i.clip_bench import (METHODS, clip_markdown, generate_images, protocol_prompts, read_prompts_file,
                                          score_folders, write_results)

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    if any(m not in METHODS for m in chosen) or not chosen:
        raise ValueError(f"--methods must be a comma list from {', '.join(METHODS)}, got {methods!r}")
    folders: dict[str, Path] = {}
    for item in read:
        name, eq, folder = item.partition("=")
        if not eq or not name.strip() or not folder.strip():
            raise ValueError(f"--read {item!r} is invalid; expected METHOD=DIR (e.g. ae=outputs)")
        folders[name.strip()] = Path(folder.strip())
    if model is not None and out is None:
        raise ValueError("--model needs --out (where the generated images go)")
    if out is None and not folders:
        raise ValueError("nothing to score: pass --out (with --model to generate) and/or --read METHOD=DIR")
    if seeds < 1 or (limit is not None and limit < 1):
        raise ValueError(f"--seeds and --limit must be >= 1, got {seeds} and {limit}")
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"--dtype must be float16, bfloat16 or float32, got {dtype!r}")
    for path, flag in ((clip, "--clip"), (blip, "--blip"), (model, "--model")):
        if path is not None and not path.is_dir():
            raise FileNotFoundError(f"{flag} {path} is not a directory")
    if prompts_file is not None:
        prompt_list = read_prompts_file(prompts_file)
    else:
        prompt_list = protocol_prompts(tuple(s.strip() for s in sets.split(",") if s.strip()))
        if limit is not None:
            prompt_list = [p for s in dict.fromkeys(q.prompt_set for q in prompt_list) for p in [q for q in prompt_list if q.prompt_set == s][:limit]]
    from attnsynth.cli._quiet import quiet_torch
    from attnsynth.utils.distributed import make_accelerator

    quiet_torch(None)

    accelerator = make_accelerator()
    if model is not None:
        from attnsynth.t2i import load_pipeline

        cuda = accelerator.device.type == "cuda"
        pipe = load_pipeline(model, device=str(accelerator.device), dtype=getattr(torch, dtype) if cuda else torch.float32)
        pipe.set_progress_bar_config(disable=True)
        written = generate_images(pipe, prompt_list, chosen, range(seeds), out, accelerator=accelerator,
                                  call_kwargs=dict(num_inference_steps=steps, guidance_scale=guidance_scale))
        typer.echo(f"process {accelerator.process_index}: wrote {written} image(s)", err=True)
        del pipe
    if not accelerator.is_main_process:
        return
    if out is not None:
        folders.update({m: out / m for m in chosen if (out / m).is_dir()})
        if not folders:
            raise FileNotFoundError(f"--out {out} holds no method folders ({', '.join(chosen)}); pass --model to generate them")
    from attnsynth.metrics.clip_score import BlipCaptioner, ClipScorer

    score_device = device or str(accelerator.device)
    scorer = ClipScorer.from_directory(clip, device=score_device)
    captioner = BlipCaptioner.from_directory(blip, device=score_device) if blip is not None else None
    names = [p.text for p in prompt_list]
    cache = (out / "clip_scores_cache.json") if out is not None else None
    scored = score_folders(folders, scorer, captioner=captioner, prompts=names if (model is not None or prompts_file is not None or limit) else None,
                           batch_size=batch_size, cache=cache)
    if results is not None:
        write_results(results, scored)
    typer.echo(json.dumps(scored["table"], indent=2) if json_out else clip_markdown(scored))
