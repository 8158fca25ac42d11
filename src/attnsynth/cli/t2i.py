"""`attnsynth t2i …`: attention-guided Stable Diffusion (AI-T2I and baselines)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Attention-guided text-to-image generation on diffusers Stable Diffusion pipelines.", no_args_is_help=True)
