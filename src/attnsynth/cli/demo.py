"""`attnsynth demo`: the page `make demo` writes."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(out: Path = typer.Option(Path("demo_out"), "--out", help="Output directory for index.html and images.")) -> None:
    """Render the demo page (toy worlds, SIS edits, guided T2I) on the embedded defaults."""
    from attnsynth.demo import build_demo

    page = build_demo(out)
    typer.echo(f"wrote {page}")
