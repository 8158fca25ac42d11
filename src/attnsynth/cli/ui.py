"""`attnsynth ui`: the web app (gradio) — a CA²-SIS editor and an AI-T2I playground, on 127.0.0.1 by default."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def ui(
    sis_checkpoint: Optional[Path] = typer.Option(None, "--sis-checkpoint", help="CA²-SIS run directory (default: the shipped toy-faces model)."),
    spade_checkpoint: Optional[Path] = typer.Option(None, "--spade-checkpoint", help="A SPADE run shown side by side with CA²-SIS (optional)."),
    t2i_model: Optional[Path] = typer.Option(None, "--t2i-model", help="Local diffusers SD / SDXL directory (default: the shipped shapes-world model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback exposes the app to the network."),
    port: int = typer.Option(7860, "--port", help="TCP port."),
) -> None:
    """Start the web app: CA²-SIS editing and AI-T2I generation in the browser (needs the `ui` extra)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is invalid; expected 1..65535")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the web app needs gradio: pip install -e '.[ui]'") from None
    from attnsynth.sis.demo_page import TOY_CHECKPOINT
    from attnsynth.ui.app import build_app, launch
    from attnsynth.ui.handlers import load_sis, load_t2i

    sis = load_sis(sis_checkpoint if sis_checkpoint is not None else TOY_CHECKPOINT, spade_checkpoint)
    t2i = load_t2i(t2i_model)
    if host not in LOOPBACK:
        typer.echo(f"warning: binding {host}:{port} — the app is reachable from other machines, without authentication", err=True)
    typer.echo(f"attnsynth ui on http://{host}:{port} (CA²-SIS: {sis.name}; AI-T2I: {t2i.name}); Ctrl+C stops it")
    launch(build_app(sis, t2i), host=host, port=port, block=True)
