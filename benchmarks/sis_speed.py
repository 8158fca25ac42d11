"""CA²-SIS speed and memory: training iteration (G + D step) and inference, against the paper's code.

Usage:
    .venv/bin/python benchmarks/sis_speed.py [--threads 2] [--batches 1,2] [--infer-batches 1,2,4,8]
        [--iters 2] [--config faithful --classes 19 --resolution 256] [--device cpu|cuda] [--json FILE]
    .venv/bin/python benchmarks/sis_speed.py --trainer --old-src /work/scratch/sis_old/src
        [--configs small,spade-small] [--thread-counts 1,2 | --launches 1x1,1x2,2x1] [--batch-size 8] [--resolution 64]
        [--steps 8] [--data DIR]

``--trainer`` (the small-config mode) times the real ``attnsynth.sis.trainer.train`` — data loading and
augmentation, the G and D updates, EMA, everything but checkpoints and sample grids — for the same
config with this checkout's code (``new``) and with another checkout's ``src`` (``old``, e.g. a
``git worktree add /work/scratch/sis_old c385f68`` of an earlier commit), each in a fresh process with
``PYTHONPATH`` pointing at that code, alternating old/new so both see the same load. Per step it
records wall and process CPU seconds from the trainer's callback (the first ``--warmup`` steps are
dropped) and prints images/s and the new/old ratio. On a shared machine the wall clock is at the
mercy of the neighbours; with one thread the CPU seconds are the cleaner comparison. ``--launches 1x2,2x1``
compares ways of using two cores for the same global batch: one process with two OpenMP threads, or two
torchrun processes of one thread each (gloo DDP, half the batch each; CPU seconds are then rank 0's).

Every setting runs in a FRESH subprocess, so its peak memory is that process's max RSS
(`getrusage`, whole process: torch, weights, Adam states, VGG, activations); on CUDA it is
`torch.cuda.max_memory_allocated`. One training iteration = one D step + one G step with the
paper's losses (hinge + 10·FM + 10·VGG19 (random weights: timing only) + 1·L_att), Adam.

Rows:
* ``ours``       — this implementation: SDPA self-attention, fused memory-lean GEGLU, token-chunked
                   inference, the fake generated once per iteration and reused (detached) for the D step;
* ``reference``  — the same model run the way the paper's code runs (config ``kernels="reference"``):
                   explicit N×N self-attention maps, plain-autograd GEGLU, no chunking, and a second
                   generator forward in the D step (an in-house stand-in for the official code,
                   measured under the same load as ``ours``);
* ``ours+malloc`` — ``ours`` with glibc told to reuse freed memory instead of returning every big
                   tensor to the OS (``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2**36``; jemalloc or
                   tcmalloc through LD_PRELOAD do the same — PyTorch's CPU tuning guide recommends it);
each with and without gradient checkpointing. The anchor numbers are the paper's code on this
machine kind (2 threads, faithful 256², 19 classes): 9.4 s / 4.5 GB per iteration, 12 s / 3.6 GB
with checkpointing, inference 2.5 s/image at batch 1 and 6.6 s/image at batch 8.

Timing: wall seconds (median over `--iters` after one warm-up) and process CPU seconds. On a
shared machine the wall clock is inflated by other jobs; CPU-seconds / threads estimates the
unloaded wall time (perfect scaling assumed; with 2 threads under load the CPU time also counts
OpenMP spin-waiting, so `--threads 1` gives the cleanest compute comparison between rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ANCHOR_TRAIN = {False: (9.4, 4.5), True: (12.0, 3.6)}  # checkpointing → (s/iteration, GB peak), batch 1
ANCHOR_INFER = {1: 2.5, 8: 6.6}  # batch → s/image


# ---- worker (one setting, in its own process) ------------------------------------------------------
def _worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from attnsynth.sis.configs import get_config
    from attnsynth.sis.losses import (VGGPerceptualLoss, attention_loss, feature_matching_loss, hinge_d_loss,
                                      hinge_g_loss)
    from attnsynth.sis.model import build_discriminator, build_model, labels_to_onehot

    device = torch.device(spec["device"])
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GB (ru_maxrss is KB on Linux)
    reference = spec["impl"] == "reference"  # "ours", "ours+malloc" (same code, tuned allocator) or "reference"
    config = get_config(spec["config"], num_classes=spec["classes"], resolution=tuple(spec["resolution"]),
                        gradient_checkpointing=spec.get("checkpointing", False),
                        kernels="reference" if reference else "efficient")
    torch.manual_seed(0)
    model = build_model(config, device=device)
    batch = spec["batch"]
    labels = torch.randint(0, config.num_classes, (batch, *config.resolution), device=device)
    onehot = labels_to_onehot(labels, config.num_classes)
    real = torch.rand(batch, 3, *config.resolution, device=device) * 2 - 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if spec["kind"] == "train":
        disc = build_discriminator(config, device=device)
        vgg = VGGPerceptualLoss(None, allow_random=True, device=device)
        opt_g = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.0, 0.9))
        opt_d = torch.optim.Adam(disc.parameters(), lr=4e-4, betas=(0.0, 0.9))
        model.train()

        def step() -> None:
            fake, logits = model(real, onehot, return_attention=True)
            # D step: the paper's code regenerates the fake without grad; ours reuses this one.
            if reference:
                with torch.no_grad():
                    fake_d = model(real, onehot)
            else:
                fake_d = fake.detach()
            loss_d = hinge_d_loss(disc(real, onehot), disc(fake_d, onehot))
            loss_d.backward()
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)  # right after the step: no stale gradients during the next forward
            # G step
            with torch.no_grad():
                real_out = disc(real, onehot)
            fake_out = disc(fake, onehot)
            loss_g = (hinge_g_loss(fake_out) + 10 * feature_matching_loss(fake_out, real_out)
                      + 10 * vgg(fake, real) + attention_loss(logits, onehot))
            loss_g.backward()
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
    else:
        model.eval()
        shape_onehot = onehot

        def step() -> None:
            with torch.inference_mode():
                model(real, shape_onehot)

    walls, cpus = [], []
    for i in range(spec["warmup"] + spec["iters"]):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= spec["warmup"]:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {**spec, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "walls": walls,
            "peak_gb": peak, "baseline_rss_gb": baseline_rss, "load": os.getloadavg()[0]}


# glibc tuned like a caching allocator: no per-tensor mmap/munmap (each big tensor otherwise costs fresh,
# zero-filled pages on every use: ~10–15 % of a CPU iteration in page faults) and no trimming of the heap.
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**36)}


def _run_setting(spec: dict) -> dict:
    """Run one setting in a fresh interpreter (clean peak-memory accounting)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    if spec["impl"] == "ours+malloc":
        env.update(TUNED_MALLOC)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"setting {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- trainer mode: the real training loop, this code vs an older checkout ---------------------------
def _trainer_worker(spec: dict) -> dict:
    """Train ``spec["steps"]`` steps with whichever ``attnsynth`` is first on the path; per-step wall/CPU seconds."""
    import tempfile

    import torch

    torch.set_num_threads(spec["threads"])
    import attnsynth
    from attnsynth.sis.train_config import TrainConfig
    from attnsynth.sis.trainer import train

    marks: list[tuple[float, float]] = []

    def callback(info: dict) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        processes = spec.get("processes", 1)
        config = TrainConfig(data=spec["data"], out=f"{tmp}/run", config=spec["config"], resolution=(spec["resolution"],) * 2,
                             steps=spec["steps"], batch_size=spec["batch"] // processes, sample_every=0, checkpoint_every=0,
                             log_every=spec["steps"], toy_n=64, seed=0)
        start = (time.perf_counter(), time.process_time())
        train(config, callback=callback)
    marks = [start, *marks]
    walls = [b[0] - a[0] for a, b in zip(marks, marks[1:])][spec["warmup"]:]
    cpus = [b[1] - a[1] for a, b in zip(marks, marks[1:])][spec["warmup"]:]
    return {**spec, "code": str(Path(attnsynth.__file__).parents[1]), "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "walls": walls, "cpus": cpus, "load": os.getloadavg()[0], "rank": int(os.environ.get("RANK", "0"))}


def _run_trainer(spec: dict, src: str) -> dict:
    """One trainer setting in fresh process(es); ``processes > 1`` = a torchrun launch (gloo DDP on CPU), each process
    ``batch / processes`` images, so the global batch — and the function trained — is the same."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]), PYTHONPATH=src)
    processes = spec.get("processes", 1)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    proc = subprocess.run([*launcher, __file__, "--trainer-worker", json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"setting {spec} with code {src} failed:\n{proc.stderr[-3000:]}")
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return next(r for r in reports if r.get("rank", 0) == 0)


def _trainer_rows(args) -> list[dict]:
    """Old and new code, alternating, for every config × thread count; prints images/s and the ratio."""
    new_src = str(Path(__file__).resolve().parents[1] / "src")
    rows = []
    for config in args.configs:
        for processes, threads in args.launch_list:
            spec = dict(config=config, threads=threads, processes=processes, batch=args.batch_size, resolution=args.resolution,
                        steps=args.steps, warmup=args.warmup, data=args.data)
            setting = f"{processes}p×{threads}t"
            pair = {}
            for repeat in range(args.repeats):
                for label, src in (("old", args.old_src), ("new", new_src)):
                    row = {**_run_trainer(spec, src), "label": label, "repeat": repeat}
                    rows.append(row)
                    pair.setdefault(label, []).append(row)
                    print(f"trainer {config:<12} {setting} B={args.batch_size} {args.resolution}²  {label}  wall {row['wall_s']:.3f} s/step  "
                          f"cpu(rank 0) {row['cpu_s']:.3f} s/step  {args.batch_size / row['wall_s']:6.2f} img/s wall  "
                          f"{args.batch_size * threads / (row['cpu_s'] * processes):6.2f} img/s per cpu/threads  (load {row['load']:.1f})", flush=True)
            old_wall = statistics.median(r["wall_s"] for r in pair["old"])
            new_wall = statistics.median(r["wall_s"] for r in pair["new"])
            old_cpu = statistics.median(r["cpu_s"] for r in pair["old"])
            new_cpu = statistics.median(r["cpu_s"] for r in pair["new"])
            print(f"ratio   {config:<12} {setting}: images/s new/old ×{old_wall / new_wall:4.2f} (wall), ×{old_cpu / new_cpu:4.2f} (cpu)", flush=True)
    return rows


# ---- driver ----------------------------------------------------------------------------------------
def _train_rows(args, device: str) -> list[dict]:
    rows = []
    for batch in args.batches:
        for checkpointing in (False, True):
            for impl in args.impls:
                spec = dict(kind="train", impl=impl, checkpointing=checkpointing, batch=batch, device=device,
                            threads=args.threads, iters=args.iters, warmup=1, config=args.config, classes=args.classes,
                            resolution=args.resolution)
                row = _run_setting(spec)
                rows.append(row)
                _print_train_row(row, args.threads, device)
    return rows


def _print_train_row(row: dict, threads: int, device: str) -> None:
    est = row["cpu_s"] / threads if device == "cpu" else row["wall_s"]
    anchor_s, anchor_gb = ANCHOR_TRAIN[row["checkpointing"]]
    per_image = est / row["batch"]
    ratio = f"{anchor_s / per_image:5.2f}×" if row["batch"] == 1 else f"{anchor_s / per_image:5.2f}×/img"
    print(f"train  {row['impl']:<12} ckpt={str(row['checkpointing']):<5} B={row['batch']}  wall {row['wall_s']:7.2f} s  "
          f"cpu/{threads} {est:7.2f} s  peak {row['peak_gb']:5.2f} GB (base {row['baseline_rss_gb']:.2f})  "
          f"| anchor {anchor_s:4.1f} s {anchor_gb:.1f} GB → speed {ratio} memory {row['peak_gb'] / anchor_gb:4.2f}×  (load {row['load']:.1f})", flush=True)


def _print_summary(rows: list[dict], threads: int) -> None:
    """Ours against the in-house reference measured in the same run: time and memory ratios."""
    def estimate(row: dict) -> float:
        return row["cpu_s"] / threads if row["device"] == "cpu" else row["wall_s"]

    index = {(r["kind"], r["impl"], r.get("checkpointing"), r["batch"], r["device"]): r for r in rows}
    for (kind, impl, ckpt, batch, device), row in index.items():
        ref = index.get((kind, "reference", ckpt, batch, device))
        if impl == "reference" or ref is None:
            continue
        label = f"train ckpt={ckpt}" if kind == "train" else "infer"
        print(f"ratio  {impl:<12} {label:<16} B={batch} {device}: speed ×{estimate(ref) / estimate(row):4.2f} (cpu/{threads}), "
              f"×{ref['wall_s'] / row['wall_s']:4.2f} (wall), memory ×{row['peak_gb'] / ref['peak_gb']:4.2f} vs reference")


def _infer_rows(args, device: str) -> list[dict]:
    rows = []
    for impl in args.impls:
        for batch in args.infer_batches:
            spec = dict(kind="infer", impl=impl, batch=batch, device=device, threads=args.threads, iters=args.iters,
                        warmup=1, config=args.config, classes=args.classes, resolution=args.resolution)
            row = _run_setting(spec)
            rows.append(row)
            est = row["cpu_s"] / args.threads if device == "cpu" else row["wall_s"]
            anchor = ANCHOR_INFER.get(batch)
            note = f"| anchor {anchor:.1f} s/img → {anchor / (est / batch):4.2f}×" if anchor else ""
            print(f"infer  {impl:<12} B={batch}  wall {row['wall_s'] / batch:6.2f} s/img  cpu/{args.threads} "
                  f"{est / batch:6.2f} s/img  {batch / est:5.2f} img/s  peak {row['peak_gb']:5.2f} GB {note} (load {row['load']:.1f})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--infer-batches", default="1,2,4,8")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per setting (after 1 warm-up)")
    parser.add_argument("--impls", default="ours,reference,ours+malloc",
                        help="comma list: ours, reference, ours+malloc (ours with glibc tuned as a caching allocator)")
    parser.add_argument("--config", default="faithful")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--resolution", type=int, default=None, help="default 256 (64 with --trainer)")
    parser.add_argument("--device", default=None, help="cpu, cuda or both (default: cpu, plus cuda when available)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-infer", action="store_true")
    parser.add_argument("--json", help="also write all rows to this JSON file")
    parser.add_argument("--trainer", action="store_true", help="small-config mode: time the real trainer, this code vs --old-src")
    parser.add_argument("--trainer-worker", help=argparse.SUPPRESS)
    parser.add_argument("--old-src", help="--trainer: the src/ directory of the code to compare with (e.g. a git worktree of an older commit)")
    parser.add_argument("--configs", default="small,spade-small", help="--trainer: comma list of presets")
    parser.add_argument("--thread-counts", default="1,2", help="--trainer: comma list of torch thread counts (one process each)")
    parser.add_argument("--launches", default=None,
                        help="--trainer: comma list of PROCESSESxTHREADS launches, e.g. 1x1,1x2,2x1 (overrides --thread-counts; "
                             "P > 1 runs torchrun with the global batch split over the processes)")
    parser.add_argument("--batch-size", type=int, default=8, help="--trainer: batch size")
    parser.add_argument("--steps", type=int, default=8, help="--trainer: steps per run (the first --warmup are not timed)")
    parser.add_argument("--warmup", type=int, default=2, help="--trainer: untimed first steps")
    parser.add_argument("--repeats", type=int, default=1, help="--trainer: old/new alternations per setting")
    parser.add_argument("--data", default="toy-faces", help="--trainer: dataset (default: toy faces rendered on the fly, 64 scenes)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    if args.trainer_worker:
        print(json.dumps(_trainer_worker(json.loads(args.trainer_worker))))
        return
    if args.trainer:
        args.resolution = args.resolution or 64
        if not args.old_src or not (Path(args.old_src) / "attnsynth").is_dir():
            parser.error(f"--old-src {args.old_src!r} must be a src/ directory holding attnsynth/ (e.g. git worktree add /work/scratch/sis_old c385f68)")
        import torch

        args.configs = [c for c in args.configs.split(",") if c]
        if args.launches:
            args.launch_list = [tuple(int(v) for v in item.lower().split("x")) for item in args.launches.split(",") if item]
        else:
            args.launch_list = [(1, int(t)) for t in args.thread_counts.split(",") if t]
        for processes, _ in args.launch_list:
            if args.batch_size % processes:
                parser.error(f"--batch-size {args.batch_size} must be divisible by every launch's process count (got {processes})")
        print(f"# sis trainer speed — {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, old {args.old_src}, "
              f"load avg {os.getloadavg()[0]:.1f}")
        rows = _trainer_rows(args)
        print(f"# load avg at end {os.getloadavg()[0]:.1f}")
        if args.json:
            from attnsynth.utils.io import atomic_write_json

            atomic_write_json(args.json, rows)
        return
    import torch

    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.infer_batches = [int(b) for b in args.infer_batches.split(",") if b]
    args.impls = [i for i in args.impls.split(",") if i]
    args.resolution = [args.resolution or 256] * 2
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"# sis speed — {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, {args.threads} threads, "
          f"{args.config} {args.resolution[0]}², {args.classes} classes, load avg {os.getloadavg()[0]:.1f}")
    rows = []
    for device in devices:
        if not args.skip_train:
            rows += _train_rows(args, device)
        if not args.skip_infer:
            rows += _infer_rows(args, device)
    _print_summary(rows, args.threads)
    print(f"# load avg at end {os.getloadavg()[0]:.1f}")
    if args.json:
        from attnsynth.utils.io import atomic_write_json

        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
