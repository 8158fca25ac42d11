"""`attnsynth bench …`: benchmarks that print side-by-side tables."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks with side-by-side ratios.", no_args_is_help=True)

DEFAULT_METHODS = "none,attend-excite,divide-bind,ait2i"


@app.command("toy-t2i")
def toy_t2i_command(
    prompts: int = typer.Option(8, "--prompts", help="Held-out prompts per subject count."),
    seeds: int = typer.Option(2, "--seeds", help="Sampling seeds per prompt."),
    methods: str = typer.Option(DEFAULT_METHODS, "--methods", help="Comma list: none, attend-excite, divide-bind, ait2i (with --layout: none, layout, layout+ait2i)."),
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

    import torch
    from rich.console import Console

    from attnsynth.shapes_t2i.bench import LAYOUT_METHODS, BenchConfig, parse_counts, parse_loss_weights, parse_methods, results_markdown, results_table, run_benchmark
    from attnsynth.shapes_t2i.model import load_t2i_pipeline

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
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
