"""Run the `attnsynth` console entry point in-process, as a user would, for CLI tests."""

import sys


def run_cli(capsys, monkeypatch, *args):
    """``attnsynth ARGS`` through ``attnsynth.cli.main`` → (exit code, captured stdout/stderr of this call)."""
    from attnsynth.cli import main

    monkeypatch.setattr(sys, "argv", ["attnsynth", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    return code, capsys.readouterr()
