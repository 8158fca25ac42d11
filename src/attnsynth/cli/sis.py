"""`attnsynth sis …`: CA²-SIS semantic image synthesis (train, edit, evaluate)."""

from __future__ import annotations

import typer

app = typer.Typer(help="CA²-SIS semantic image synthesis: train, reconstruct, transfer, swap-shape, interpolate, sample, evaluate.", no_args_is_help=True)
