"""Overhead of attention guidance over plain diffusers: wall time and peak memory, side by side.

Variants, all on the same random weights (one set of components shared through ``from_pipe``):

* ``plain``        — diffusers ``StableDiffusionPipeline``;
* ``ours-off``     — ``AttentionGuidedStableDiffusionPipeline`` with ``method=None``;
* ``ours-ait2i``   — ours, AI-T2I guidance on ``--guided`` steps, no refinement;
* ``ours-ae``      — ours, Attend-and-Excite loss, same schedule (compare with the next line);
* ``diffusers-ae`` — diffusers' ``StableDiffusionAttendAndExcitePipeline``, same guided steps, no refinement.

Model: an SD-1.5-shaped UNet (4 levels, cross-attention at 3, 8 heads; ``--scale 0.1`` →
8.6 M parameters, random), a tiny CLIP text encoder and an 8× tiny VAE, PNDM scheduler.
Defaults: 256² on CPU with 10 steps (5 guided), 2 threads; 512² with 50 steps (25 guided) and
the full-width UNet (``--scale 1``) on CUDA.

Time: the variants run *alternately* (one call each per round, after a warm-up round), and the
median per variant is reported, so machine load drifts hit all variants alike.

Memory: each variant runs in its own subprocess: one warm-up call, then the measured call. On
CPU the peak is the rise of the process's resident set during the call: the kernel's
high-water mark (``VmHWM``) is reset just before it (``/proc/self/clear_refs``), read after it,
minus the resident set before it (without the reset: the ``ru_maxrss`` delta of a first call).
glibc is told to hand blocks of 64 KiB and more straight back to the OS
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so the resident set tracks live
tensors instead of the allocator's cache (tracemalloc does not see torch's allocations).
On CUDA it is ``torch.cuda.max_memory_allocated()`` minus the allocation before the call.

Usage: ``python benchmarks/t2i_overhead.py [--rounds 5] [--threads 2] [--device cuda]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

VARIANTS = ("plain", "ours-off", "ours-ait2i", "ours-ae", "diffusers-ae")
PROMPT, SUBJECTS, TOKEN_INDICES = "a cat and a dog", ["cat", "dog"], [2, 5]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults depend on the device."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default 256 CPU, 512 CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 10 CPU, 50 CUDA)")
    parser.add_argument("--guided", type=int, default=None, help="guided steps (default: half the steps)")
    parser.add_argument("--scale", type=float, default=None, help="UNet width vs SD 1.5 (default 0.1 CPU, 1.0 CUDA)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (0: memory only)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--memory-of", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    args.device = "cuda" if cuda else "cpu"
    args.resolution = args.resolution or (512 if cuda else 256)
    args.steps = args.steps or (50 if cuda else 10)
    args.guided = args.guided if args.guided is not None else args.steps // 2
    args.scale = args.scale or (1.0 if cuda else 0.1)
    return args


def build(args: argparse.Namespace) -> dict:
    """One callable per variant, all sharing the same components."""
    import torch
    from diffusers import StableDiffusionPipeline

    from attnsynth.t2i import AttentionGuidedStableDiffusionPipeline
    from attnsynth.t2i.testing import sd15_shaped_unet_config, tiny_sd_components

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import StableDiffusionAttendAndExcitePipeline

        components = tiny_sd_components(unet_config=sd15_shaped_unet_config(args.scale), vae_levels=4)
        plain = StableDiffusionPipeline(**components, requires_safety_checker=False).to(args.device)
        ours = AttentionGuidedStableDiffusionPipeline.from_pipe(plain)
        ae = StableDiffusionAttendAndExcitePipeline.from_pipe(plain)
    for pipe in (plain, ours, ae):
        pipe.set_progress_bar_config(disable=True)
    args.unet_millions = sum(p.numel() for p in plain.unet.parameters()) / 1e6
    grid = -(-args.resolution // 32)
    common = dict(height=args.resolution, width=args.resolution, num_inference_steps=args.steps, output_type="np")

    def call(pipe, **kwargs):
        return lambda: pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(0), **common, **kwargs)

    guided = dict(subjects=SUBJECTS, guided_steps=args.guided, refine_thresholds={})
    return {
        "plain": call(plain),
        "ours-off": call(ours),
        "ours-ait2i": call(ours, method="ait2i", **guided),
        "ours-ae": call(ours, method="attend-excite", **guided),
        "diffusers-ae": call(ae, token_indices=TOKEN_INDICES, max_iter_to_alter=args.guided, thresholds={}, attn_res=(grid, grid)),
    }


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_alternately(calls: dict, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per call for every variant, variants interleaved within each round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(args.rounds + 1):
        for name, call in calls.items():
            _sync(args.device)
            start = time.perf_counter()
            call()
            _sync(args.device)
            if round_index > 0:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return times


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure_memory_here(variant: str, args: argparse.Namespace) -> dict:
    """Peak extra memory (MiB) of one call of ``variant`` in this fresh process, after a warm-up call."""
    import torch

    call = build(args)[variant]
    if args.device == "cuda":
        call()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return {"peak_mib": (torch.cuda.max_memory_allocated() - before) / 2**20, "method": "cuda max_memory_allocated after a warm-up call"}
    clear_refs = Path("/proc/self/clear_refs")
    try:
        call()  # warm-up: one-time allocations are not the call's working memory
        rss_before = _status_kib("VmRSS")
        clear_refs.write_text("5")  # reset the VmHWM high-water mark to the current RSS
        call()
        return {"peak_mib": (_status_kib("VmHWM") - rss_before) / 1024, "method": "VmHWM (reset after a warm-up call) minus VmRSS before"}
    except (OSError, TypeError):
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        call()
        delta = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
        return {"peak_mib": delta / 1024, "method": "ru_maxrss delta (no high-water reset available)"}


def measure_memory(variant: str, args: argparse.Namespace) -> dict:
    """Run :func:`measure_memory_here` in a subprocess (a fresh peak for each variant)."""
    command = [
        sys.executable, __file__, "--memory-of", variant, "--device", args.device, "--resolution", str(args.resolution),
        "--steps", str(args.steps), "--guided", str(args.guided), "--scale", str(args.scale), "--threads", str(args.threads),
    ]
    # glibc returns freed blocks >= 64 KiB to the OS at once, so the resident set follows live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(measure_memory_here(args.memory_of, args)))
        return
    calls = build(args)
    times = time_alternately(calls, args) if args.rounds > 0 else {name: [float("nan")] for name in calls}
    memory = {} if args.no_memory else {name: measure_memory(name, args) for name in VARIANTS}
    medians = {name: statistics.median(values) for name, values in times.items()}
    header = (
        f"t2i overhead · {args.device} · {args.resolution}² · {args.steps} steps, {args.guided} guided, no refinement · "
        f"SD-1.5-shaped UNet ×{args.scale} ({args.unet_millions:.2f} M) · {args.threads} threads · median of {args.rounds} alternating rounds"
    )
    print(header)
    print(f"{'variant':<14}{'median s':>10}{'× plain':>9}{'min s':>9}{'max s':>9}{'peak MiB':>10}{'× plain':>9}")
    for name in VARIANTS:
        peak = memory.get(name, {}).get("peak_mib")
        base = memory.get("plain", {}).get("peak_mib")
        peak_text = f"{peak:10.1f}{peak / base:9.2f}" if peak is not None and base else f"{'-':>10}{'-':>9}"
        print(
            f"{name:<14}{medians[name]:10.3f}{medians[name] / medians['plain']:9.2f}"
            f"{min(times[name]):9.3f}{max(times[name]):9.3f}{peak_text}"
        )
    if memory:
        print(f"memory: {next(iter(memory.values()))['method']}, one call per fresh subprocess")
    if args.json:
        payload = {"args": {k: v for k, v in vars(args).items() if k not in ("json", "memory_of")}, "times": times, "memory": memory}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
