"""`attnsynth toyworld …`: export procedural datasets with exact ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Procedural toy worlds with exact oracles (faces for SIS, shapes for T2I).", no_args_is_help=True)


def _check_counts(n: int, resolution: int) -> None:
    if n < 0:
        raise ValueError(f"--n must be >= 0, got {n}")
    if resolution <= 0:
        raise ValueError(f"--resolution must be a positive integer, got {resolution}")


@app.command("faces")
def faces_command(
    n: int = typer.Option(100, "--n", help="Number of scenes (split into train/test)."),
    resolution: int = typer.Option(64, "--resolution", help="Square side in pixels (32–512)."),
    seed: int = typer.Option(0, "--seed", help="First scene seed; output is byte-identical per seed."),
    out: Path = typer.Option(..., "--out", help="Output directory (CelebAMask-HQ/SEAN layout)."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of scenes in test/."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Write toy faces as train|test/images/*.png, train|test/labels/*.png and records."""
    from attnsynth.toyworld import faces

    _check_counts(n, resolution)
    faces.export(out, n=n, resolution=resolution, seed=seed, test_fraction=test_fraction, overwrite=overwrite, progress=True)
    typer.echo(f"wrote {n} toy faces at {resolution}² to {out}")


@app.command("shapes")
def shapes_command(
    n: int = typer.Option(100, "--n", help="Number of scenes."),
    resolution: int = typer.Option(64, "--resolution", help="Square side in pixels."),
    seed: int = typer.Option(0, "--seed", help="First scene seed; output is byte-identical per seed."),
    out: Path = typer.Option(..., "--out", help="Output directory (images/, captions and specs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Write shapes scenes: images/*.png plus a JSONL of captions, word spans and object specs."""
    from attnsynth.toyworld import shapes

    _check_counts(n, resolution)
    shapes.export(out, n=n, resolution=resolution, seed=seed, overwrite=overwrite, progress=True)
    typer.echo(f"wrote {n} shapes scenes at {resolution}² to {out}")


@app.command("train-t2i")
def train_t2i_command(
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoints, samples, log.jsonl)."),
    resolution: int = typer.Option(64, "--resolution", help="Image side in pixels (latents are side/4)."),
    steps: int = typer.Option(6000, "--steps", help="UNet + text-encoder steps (the total; resuming continues up to it)."),
    vae_steps: int = typer.Option(800, "--vae-steps", help="Autoencoder steps (stage vae)."),
    batch_size: int = typer.Option(32, "--batch-size", help="UNet batch per process."),
    vae_batch_size: int = typer.Option(16, "--vae-batch-size", help="Autoencoder batch per process."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak UNet/text-encoder learning rate."),
    vae_lr: float = typer.Option(1e-3, "--vae-lr", help="Peak autoencoder learning rate."),
    warmup_steps: int = typer.Option(200, "--warmup-steps", help="Linear warm-up steps."),
    lr_schedule: str = typer.Option("cosine", "--lr-schedule", help="After warm-up: cosine, constant, or wsd (constant, then linear decay)."),
    decay_steps: int = typer.Option(0, "--decay-steps", help="wsd: the last steps, linear decay to 0.1 × lr (set --steps to end the run)."),
    snr_gamma: float = typer.Option(5.0, "--snr-gamma", help="Min-SNR-γ loss weighting (0: plain MSE)."),
    grounding_weight: float = typer.Option(0.0, "--grounding-weight", help="Token-grounding loss weight (keeps subject words' attention on their objects; 0: off)."),
    stage: str = typer.Option("all", "--stage", help="vae, unet, or all (vae then unet)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoints, exactly."),
    init_from: Path = typer.Option(None, "--init-from", help="Warm start (weights only) from a pipeline directory, e.g. the shipped one."),
    export_to: Path = typer.Option(None, "--export-to", help="After training, save the EMA pipeline here (fp16 diffusers directory)."),
    checkpoint_every: float = typer.Option(300.0, "--checkpoint-every", help="Seconds between checkpoints."),
    sample_every: int = typer.Option(500, "--sample-every", help="Steps between sample grids + oracle scores (0: never)."),
    seed: int = typer.Option(0, "--seed", help="Run seed (initialisation, noise, caption dropout)."),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
    device: str = typer.Option(None, "--device", help="'cpu' to force the CPU; default: what Accelerate picks."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train the shapes-world text-to-image model from scratch (`accelerate launch` for several GPUs)."""
    import json
    from dataclasses import replace

    from attnsynth.shapes_t2i.model import ToyT2IConfig
    from attnsynth.shapes_t2i.train import TrainConfig, train_t2i

    config = TrainConfig(
        stage=stage, steps=steps, vae_steps=vae_steps, batch_size=batch_size, vae_batch_size=vae_batch_size, lr=lr, vae_lr=vae_lr,
        warmup_steps=warmup_steps, lr_schedule=lr_schedule, decay_steps=decay_steps, checkpoint_every_s=checkpoint_every, sample_every=sample_every,
        snr_gamma=snr_gamma or None, grounding_weight=grounding_weight, seed=seed, threads=threads, model=replace(ToyT2IConfig(), resolution=resolution),
    )
    if dry_run:
        typer.echo(json.dumps(config.to_dict(), indent=2))
        return
    train_t2i(out, config, resume=resume, init_from=init_from, export_to=export_to, device=device, echo=typer.echo)


@app.command("export-t2i")
def export_t2i_command(
    run: Path = typer.Option(..., "--run", help="A train-t2i run directory (with a UNet checkpoint)."),
    out: Path = typer.Option(..., "--out", help="Output pipeline directory (fp16 diffusers layout)."),
    init_from: Path = typer.Option(None, "--init-from", help="The pipeline the run was warm-started from (its VAE)."),
) -> None:
    """Export a run's latest EMA weights as a pipeline, without training (safe while the run continues)."""
    from attnsynth.shapes_t2i.train import export_t2i

    path = export_t2i(run, out, init_from=init_from, echo=typer.echo)
    typer.echo(f"exported pipeline to {path}")
