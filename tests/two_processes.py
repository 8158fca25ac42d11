"""Run a Python script as 2 CPU processes (torch.distributed.run, gloo), for the slow multi-process tests."""

import os
import signal
import socket
import subprocess
import sys


def run_two_processes(script_text: str, tmp_path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Write ``script_text`` under ``tmp_path`` and launch it on 2 processes (one thread each) on a free port."""
    script = tmp_path / "two_processes_script.py"
    script.write_text(script_text)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), str(script), *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # a deadlock: SIGTERM lets the launcher stop its workers (own sessions)
            process.terminate()
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
