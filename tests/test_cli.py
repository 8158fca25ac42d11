"""The CLI's shape: sub-commands listed, user errors are one line with exit code 2."""

import subprocess
import sys

from typer.testing import CliRunner

from attnsynth.cli import app

runner = CliRunner()


def test_help_lists_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("toyworld", "sis", "t2i", "bench", "demo"):
        assert name in result.output


def _run_cli(*args):
    return subprocess.run([sys.executable, "-c", "from attnsynth.cli import main; main()", *args], capture_output=True, text=True)


def test_user_error_is_one_line_exit_2(tmp_path):
    result = _run_cli("toyworld", "faces", "--n", "-1", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--n" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_resolution_zero_is_rejected(tmp_path):
    result = _run_cli("toyworld", "shapes", "--resolution", "0", "--out", str(tmp_path / "y"))
    assert result.returncode == 2
    assert "--resolution" in result.stderr and "Traceback" not in result.stderr
