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
