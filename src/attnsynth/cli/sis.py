"""`attnsynth sis …`: CA²-SIS semantic image synthesis (train, edit, evaluate)."""

from __future__ import annotations

import typer

app = typer.Typer(help="CA²-SIS semantic image synthesis: train, reconstruct, transfer, swap-shape, interpolate, sample, evaluate.", no_args_is_help=True)


@app.command("info")
def info_command(
    config: str = typer.Option("faithful", "--config", help="Model config: small, faithful, spade-small, spade-faithful."),
    classes: int = typer.Option(19, "--classes", help="Number of semantic classes C (incl. background)."),
    resolution: str = typer.Option("256", "--resolution", help="Image size: R (square) or HxW, e.g. 256x512."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the parameter count of each module of a SIS config (built on the meta device, no weights)."""
    import json

    from attnsynth.sis.configs import get_config
    from attnsynth.sis.model import parameter_counts
    from attnsynth.utils.images import parse_resolution

    try:
        size = parse_resolution(resolution)
    except ValueError as error:
        raise ValueError(f"--resolution: {error}") from None
    counts = parameter_counts(get_config(config, num_classes=classes, resolution=size))
    if as_json:
        typer.echo(json.dumps(counts, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{config} · {classes} classes · {size[0]}×{size[1]}")
    table.add_column("module")
    table.add_column("parameters", justify="right")
    table.add_column("millions", justify="right")
    for name, value in counts.items():
        table.add_row(name, f"{value:,}", f"{value / 1e6:.2f} M")
    Console().print(table)
