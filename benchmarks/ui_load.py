"""Web-app latency and a bounded load test, on 127.0.0.1 only, against `attnsynth ui` on the embedded defaults.

Usage:
    .venv/bin/python benchmarks/ui_load.py [--repeats 10] [--clients 24] [--per-client 2] [--threads 1] [--json FILE]

What it does (it stops by itself; the server it starts is stopped at the end):
1. starts ``attnsynth ui --port P`` as a subprocess (``OMP_NUM_THREADS=--threads``) on 127.0.0.1 and waits for it;
2. **latency** — one ``gradio_client`` client, ``--repeats`` sequential calls each of ``/sis_transfer`` (per-class
   transfer, 64² toy faces: upload of four PNGs + edit + PNG back) and ``/t2i_generate`` with the model's
   recommended settings (method none: one unguided image; method ait2i: the unguided AND the guided image of one
   seed, as the UI shows them), round-trip wall time; and, in this process, the library calls the UI makes
   (``handlers.sis_edit``; the guided pipeline call alone), so the endpoint time can be split into model time and
   serving overhead;
3. **load** — ``--clients`` clients (threads, one ``gradio_client.Client`` each) start at once; each sends
   ``--per-client`` requests one after the other (alternating SIS and T2I). The server runs one request at a time with a bounded queue, so some
   are refused with gradio's "queue is full" message. Every request must end answered or refused with a message;
   the script counts the rest as lost and exits 1 if any are.

Numbers: percentiles p50 / p90 / max of wall seconds, and the median CPU seconds per call (for the endpoints:
the server process's CPU, read from /proc; with one torch thread ≈ the wall time on an idle machine). The machine is
shared, so wall times grow with its load average (printed); rerun to see the spread.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle and a blue square"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), GRADIO_ANALYTICS_ENABLED="False")
    log = open(Path(tempfile.gettempdir()) / f"attnsynth_ui_bench_{port}.log", "w")
    process = subprocess.Popen([sys.executable, "-c", "from attnsynth.cli import main; main()", "ui", "--port", str(port)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"the server did not answer within 180 s; see {log.name}")


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p90": pick(0.9), "max": ordered[-1], "mean": statistics.fmean(ordered)}


def row(name: str, stats: dict[str, float], cpu: dict[str, float] | None = None) -> str:
    cells = f"| {name} | {stats['n']} | {stats['p50']:.2f} | {stats['p90']:.2f} | {stats['max']:.2f} |"
    return cells + (f" {cpu['p50']:.2f} |" if cpu is not None else "")


def write_pair_files(folder: Path) -> dict[str, str]:
    """Gallery toy faces 0 and 1 as upload files (image + single-channel label map)."""
    from PIL import Image

    from attnsynth.sis.demo_page import TOY_CHECKPOINT
    from attnsynth.sis.model import load_config
    from attnsynth.ui.handlers import gallery_face

    resolution = tuple(load_config(TOY_CHECKPOINT).resolution)
    paths = {}
    for k, name in ((0, "image"), (1, "reference")):
        face = gallery_face(k, resolution)
        Image.fromarray(face.image).save(folder / f"{name}.png")
        Image.fromarray(face.labels, mode="L").save(folder / f"{name}_mask.png")
        paths[name], paths[f"{name}_mask"] = str(folder / f"{name}.png"), str(folder / f"{name}_mask.png")
    return paths


def sis_call(client, files: dict[str, str], submit: bool = False):
    from gradio_client import handle_file

    call = client.submit if submit else client.predict
    return call(image=handle_file(files["image"]), mask=handle_file(files["image_mask"]), reference=handle_file(files["reference"]),
                reference_mask=handle_file(files["reference_mask"]), classes="hair,eyes", api_name="/sis_transfer")


def t2i_call(client, settings: dict, method: str, submit: bool = False):
    call = client.submit if submit else client.predict
    return call(prompt=PROMPT, subjects="circle,square", method=method, seed=0, step_size=settings["step_size"],
                guided_steps=settings["guided_steps"], steps=settings["steps"], guidance_scale=settings["guidance_scale"],
                boxes="", api_name="/t2i_generate")


def process_cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc), or by this process when None."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def timed(fn, repeats: int, pid: int | None = None) -> dict[str, list[float]]:
    """Wall seconds of each call, and the CPU seconds it cost (the server's, when ``pid`` is the server)."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        cpu0, start = process_cpu_seconds(pid), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(process_cpu_seconds(pid) - cpu0)
    return {"wall": wall, "cpu": cpu}


def in_process(repeats: int, threads: int) -> dict[str, dict[str, list[float]]]:
    """The library calls behind the endpoints, without the server: SIS edit, guided pipeline call alone."""
    import torch

    from attnsynth.sis.demo_page import TOY_CHECKPOINT
    from attnsynth.ui import handlers

    torch.set_num_threads(threads)
    sis, t2i = handlers.load_sis(TOY_CHECKPOINT), handlers.load_t2i()
    source, reference = handlers.gallery_face(0, sis.resolution), handlers.gallery_face(1, sis.resolution)
    preset = handlers.recommended(t2i, "ait2i")
    d = t2i.defaults
    extra = {"height": d.get("height"), "width": d.get("width")} if "height" in d else {}
    if "attention_res" in d:
        extra["attention_res"] = tuple(d["attention_res"])

    def guided():
        t2i.pipe(PROMPT, subjects=["circle", "square"], method="ait2i", num_inference_steps=preset["steps"],
                 guidance_scale=preset["guidance_scale"], guided_steps=preset["guided_steps"], step_size=preset["step_size"],
                 generator=torch.Generator().manual_seed(0), output_type="np", **extra)

    return {
        "sis_edit (handler, incl. oracle)": timed(lambda: handlers.sis_edit(sis, source, reference, mode="transfer styles",
                                                                            classes=["hair", "eyes"]), repeats),
        "guided 64² generation (pipeline call)": timed(guided, repeats),
    }


def load_test(url: str, files: dict[str, str], settings: dict, clients: int, per_client: int) -> dict:
    """``clients`` users at once, ``per_client`` requests each; every request ends answered, refused (message) or lost."""
    from gradio_client import Client

    outcomes: list[tuple[str, str, float, str]] = []  # (kind, outcome, seconds, message)

    def one_client(index: int) -> list[tuple[str, str, float, str]]:
        """One user: ``per_client`` requests one after the other (the next once the last has ended), SIS/T2I alternating."""
        client = Client(url, verbose=False, download_files=False)
        results = []
        for k in range(per_client):
            kind = "sis" if (index + k) % 2 == 0 else "t2i"
            start = time.perf_counter()
            try:
                job = sis_call(client, files, submit=True) if kind == "sis" else t2i_call(client, settings, "ait2i", submit=True)
                job.result(timeout=600)
                results.append((kind, "answered", time.perf_counter() - start, ""))
            except concurrent.futures.TimeoutError:
                results.append((kind, "lost", time.perf_counter() - start, "no answer within 600 s"))
            except Exception as error:  # noqa: BLE001 — a refusal arrives as an exception with the server's message
                message = " ".join(str(error).split())
                results.append((kind, "refused" if message else "lost", time.perf_counter() - start, message or type(error).__name__))
        return results

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        for result in pool.map(one_client, range(clients)):
            outcomes.extend(result)
    wall = time.perf_counter() - start
    counts = {o: sum(1 for _, out, _, _ in outcomes if out == o) for o in ("answered", "refused", "lost")}
    return {
        "submitted": clients * per_client, "wall_s": wall, **counts,
        "messages": sorted({m for _, out, _, m in outcomes if out != "answered"}),
        "answered_latency": {kind: percentiles([s for k, out, s, _ in outcomes if k == kind and out == "answered"])
                             for kind in ("sis", "t2i") if any(k == kind and out == "answered" for k, out, _, _ in outcomes)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (and of the in-process timings)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if min(args.repeats, args.clients, args.per_client, args.threads) < 1:
        parser.error("--repeats, --clients, --per-client and --threads must be >= 1")

    from gradio_client import Client

    from attnsynth.ui import handlers
    from attnsynth.ui.limits import QUEUE_SIZE

    port = free_port()
    server = start_server(port, args.threads)
    url = f"http://127.0.0.1:{port}/"
    try:
        with tempfile.TemporaryDirectory() as folder:
            files = write_pair_files(Path(folder))
            client = Client(url, verbose=False, download_files=False)
            t2i_settings = handlers.recommended(handlers.load_t2i(), "ait2i")
            pid = server.pid
            endpoint = {
                "/sis_transfer": timed(lambda: sis_call(client, files), args.repeats, pid),
                "/t2i_generate method=none (1 image)": timed(lambda: t2i_call(client, t2i_settings, "none"), args.repeats, pid),
                "/t2i_generate method=ait2i (unguided + guided)": timed(lambda: t2i_call(client, t2i_settings, "ait2i"), args.repeats, pid),
            }
            load = load_test(url, files, t2i_settings, args.clients, args.per_client)
    finally:
        server.terminate()
        server.wait(timeout=30)
    library = in_process(args.repeats, args.threads)

    print(f"# attnsynth ui latency ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, server torch threads "
          f"{args.threads}, T2I settings {t2i_settings})\n")
    print("| call | n | wall p50 s | wall p90 s | wall max s | CPU p50 s |\n|---|---|---|---|---|---|")
    for name, times in {**endpoint, **library}.items():
        print(row(name, percentiles(times["wall"]), percentiles(times["cpu"])))
    load_average = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nload average at the end: {load_average} (2 cores: wall times above include waiting for other jobs; "
          "CPU seconds ≈ the time on an idle machine at this thread count — for endpoints, the server process's CPU)")
    print(f"\n# load: {args.clients} clients at once × {args.per_client} requests each, one after the other (queue size "
          f"{QUEUE_SIZE}, concurrency 1)\n")
    print(f"submitted {load['submitted']}: answered {load['answered']}, refused with a message {load['refused']}, "
          f"lost {load['lost']}; all done in {load['wall_s']:.1f} s")
    for message in load["messages"]:
        print(f"  refusal message: {message!r}")
    for kind, stats in load["answered_latency"].items():
        print(row(f"answered {kind} (submit → result, queued)", stats))
    if args.json is not None:
        args.json.write_text(json.dumps({"endpoint": endpoint, "library": library, "load": load, "t2i_settings": t2i_settings},
                                        indent=2), encoding="utf-8")
    return 1 if load["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
