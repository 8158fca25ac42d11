"""`attnsynth sis import-official`: the authors' CA²-SIS checkpoint (TFonta/CA2SIS) → an attnsynth run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from attnsynth.cli.sis import app


@app.command("import-official")
def import_official_command(
    generator: Path = typer.Option(..., "--generator", help="The authors' generator state dict (latest_net_G.pth; it also holds the mapping network)."),
    discriminator: Optional[Path] = typer.Option(None, "--discriminator", help="The authors' discriminator state dict (latest_net_D.pth): for train-mapping and fine-tuning."),
    out: Path = typer.Option(..., "--out", help="New run directory (must not exist)."),
    classes: int = typer.Option(19, "--classes", help="Classes C of the checkpoint (CelebAMask-HQ release: 19)."),
    resolution: str = typer.Option("256", "--resolution", help="Resolution of the checkpoint (CelebAMask-HQ release: 256)."),
    config: str = typer.Option("faithful", "--config", help="attnsynth preset with the checkpoint's sizes (the release: faithful)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset to fine-tune on: also writes a step-0 training checkpoint, so `sis train --data DATA --out OUT --config CONFIG --resolution R --resume --steps N` continues."),
    seed: int = typer.Option(0, "--seed", help="Seed recorded for fine-tuning (data order; a fresh discriminator's init)."),
) -> None:
    """Import the authors' CA²-SIS weights. The released CelebAMask-HQ checkpoint (latest_net_G.pth,
    latest_net_D.pth) is linked from the authors' GitHub README, https://github.com/TFonta/CA2SIS, section
    "Generating Images Using Pre-trained Models" (a University of Parma SharePoint download). Files are read with torch.load(weights_only=True): code in a
    pickle is refused, never run. The run works with reconstruct, transfer, swap-shape, interpolate, sample,
    evaluate, train-mapping and (with --data) train --resume."""
    from attnsynth.sis import official
    from attnsynth.sis.configs import get_config
    from attnsynth.utils.images import parse_resolution

    try:
        size = parse_resolution(resolution)
    except ValueError as error:
        raise ValueError(f"--resolution: {error}") from None
    if config not in ("small", "faithful"):
        raise ValueError(f"--config {config!r} is invalid: expected small or faithful (the CA²-SIS presets)")
    run = official.import_checkpoint(generator, out=out, config=get_config(config, num_classes=classes, resolution=size),
                                     discriminator=discriminator, data=data, seed=seed, say=typer.echo)
    typer.echo(f"imported {generator}{' + ' + str(discriminator) if discriminator else ''} into {run}")

