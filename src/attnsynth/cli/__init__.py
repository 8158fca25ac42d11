"""`attnsynth` command line: one Typer app, one module per sub-command group.

The CLI is a thin caller of library functions. Errors caused by the user's input (ValueError,
FileNotFoundError, FileExistsError) are printed as one line on stderr with exit code 2; set
ATTNSYNTH_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from attnsynth.cli import bench, demo, sis, t2i, toyworld, ui
from attnsynth.cli import personalize

app = typer.Typer(
    name="attnsynth",
    help="Controllable image synthesis through cross-attention (CA²-SIS and AI-T2I).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(toyworld.app, name="toyworld")
app.add_typer(sis.app, name="sis")
app.add_typer(t2i.app, name="t2i")
app.add_typer(bench.app, name="bench")
app.add_typer(personalize.app, name="personalize")
app.command("demo")(demo.demo)
app.command("ui")(ui.ui)

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except USER_ERRORS as error:
        if os.environ.get("ATTNSYNTH_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
