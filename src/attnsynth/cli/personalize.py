"""`attnsynth personalize …`: textual inversion of a new concept, and the shapes-world personalisation benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from attnsynth.cli._quiet import quiet_torch

app = typer.Typer(help="Personalised generation: learn a new token by textual inversion; benchmark it with guidance.", no_args_is_help=True)


@app.command("train")
def train_command(
    out: Path = typer.Option(..., "--out", help="Output directory: learned_embeds.safetensors (diffusers' format), checkpoint, settings."),
    model: str = typer.Option(None, "--model", help="SD pipeline directory (default: the shipped shapes-world model)."),
    shape: str = typer.Option("heart", "--shape", help="Novel shapes-world shape to render as training images (ignored with --images)."),
    images: Path = typer.Option(None, "--images", help="Folder of concept images (PNG/JPEG) instead of rendered shapes."),
    caption: str = typer.Option("a photo of {}", "--caption", help="Caption template for --images; {} becomes the placeholder."),
    n_images: int = typer.Option(32, "--n-images", help="Rendered training images (shapes world)."),
    placeholder: str = typer.Option("<heart>", "--placeholder", help="The new token."),
    initializer: str = typer.Option("circle", "--initializer", help="Existing one-token word whose embedding starts the new one."),
    steps: int = typer.Option(400, "--steps", help="Optimisation steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per step."),
    learning_rate: float = typer.Option(1e-3, "--lr", help="AdamW learning rate of the embedding."),
    seed: int = typer.Option(0, "--seed", help="Seed of batches, timesteps and noise."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints (0: only at the end); a rerun resumes."),
    lora_rank: int = typer.Option(0, "--lora-rank", help="Also train a UNet LoRA of this rank (pivotal tuning; 0: embedding only)."),
    lora_lr: float = typer.Option(1e-4, "--lora-lr", help="AdamW learning rate of the LoRA."),
    prior: int = typer.Option(0, "--prior", help="Shapes world: this many training scenes as prior-preservation images."),
    device: str = typer.Option(None, "--device", help="torch device (default cpu)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads."),
) -> None:
    """Learn one token embedding from a few images (textual inversion); load it with pipe.load_textual_inversion(OUT, token=...).

    With --lora-rank a UNet LoRA is trained too (load it with pipe.load_lora_weights(OUT)).
    """
    from attnsynth.t2i.textual_inversion import TextualInversionConfig, images_from_folder, train_textual_inversion

    config = TextualInversionConfig(placeholder=placeholder, initializer=initializer, steps=steps, batch_size=batch_size,
                                    learning_rate=learning_rate, seed=seed, checkpoint_every=checkpoint_every,
                                    lora_rank=lora_rank, lora_learning_rate=lora_lr)
    if images is not None and "{}" not in caption:
        raise ValueError(f"--caption must contain {{}} for the placeholder, got {caption!r}")
    quiet_torch(threads)
    from attnsynth.shapes_t2i.model import load_t2i_pipeline

    pipe = load_t2i_pipeline(model, device=device)
    report = lambda step, loss: typer.echo(f"step {step}/{steps} loss {loss:.4f}", err=True) if step % 50 == 0 or step == steps else None  # noqa: E731
    if images is None:
        from attnsynth.shapes_t2i.personalize import train_concept

        result = train_concept(pipe, config, shape=shape, n_images=n_images, n_prior=prior, out_dir=out, on_step=report)
    else:
        resolution = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        tensors = images_from_folder(images, resolution)
        result = train_textual_inversion(pipe, tensors, [caption.format(placeholder)] * tensors.shape[0], config, out_dir=out, on_step=report)
    typer.echo(f"wrote {result.path} (final loss {result.losses[-1]:.4f})")


@app.command("bench")
def bench_command(
    embeds: Path = typer.Option(..., "--embeds", help="Directory written by attnsynth personalize train (embedding, and LoRA if any)."),
    model: str = typer.Option(None, "--model", help="Shapes-world pipeline directory (default: the shipped model)."),
    placeholder: str = typer.Option("<heart>", "--placeholder", help="The learned token."),
    prompts: int = typer.Option(16, "--prompts", help="Prompts per known-shape count."),
    seeds: int = typer.Option(2, "--seeds", help="Sampling seeds per prompt."),
    known: str = typer.Option("1,2", "--known", help="Comma list: known shapes beside the new one (1–3)."),
    methods: str = typer.Option("control,none,attend-excite,ait2i", "--methods", help="Comma list: control (the word, no learned token), none, attend-excite, ait2i."),
    device: str = typer.Option(None, "--device", help="torch device (default cpu)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a markdown table."),
) -> None:
    """Prompts combining the learned concept with known shapes, unguided vs guided, scored by the shapes oracle."""
    import json

    from attnsynth.shapes_t2i.model import load_t2i_pipeline
    from attnsynth.shapes_t2i.personalize import PersonalizeBenchConfig, load_concept, personalize_markdown, run_personalize_benchmark

    if not embeds.exists():
        raise FileNotFoundError(f"--embeds {embeds} does not exist; train one with attnsynth personalize train")
    try:
        counts = tuple(int(k) for k in known.split(","))
    except ValueError:
        raise ValueError(f"--known must be a comma list of integers in 1..3, got {known!r}") from None
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    PersonalizeBenchConfig(n_prompts=prompts, n_seeds=seeds, known_counts=counts, methods=chosen, placeholder=placeholder)  # checks, before loading
    quiet_torch(threads)
    pipe = load_t2i_pipeline(model, device=device)
    load_concept(pipe, embeds, placeholder)
    config = PersonalizeBenchConfig.for_pipeline(pipe, n_prompts=prompts, n_seeds=seeds, known_counts=counts, methods=chosen, placeholder=placeholder)
    results = run_personalize_benchmark(pipe, config, on_batch=lambda m, n, s: typer.echo(f"{m}: {n} known, seed {s} done", err=True))
    typer.echo(json.dumps(results, indent=2) if json_out else personalize_markdown(results))
