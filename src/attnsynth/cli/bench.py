"""`attnsynth bench …`: benchmarks that print side-by-side tables."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks with side-by-side ratios.", no_args_is_help=True)
