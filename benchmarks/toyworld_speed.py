"""Scenes per second of both toy worlds at 64² and 256², on one thread.

Usage: .venv/bin/python benchmarks/toyworld_speed.py [--n 400] [--resolutions 64,256]

Prints one row per (world, resolution): scenes/s, ms/scene, and the ratio against the 200
scenes/s target at 64² that the foundation issue sets for faces.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from attnsynth.toyworld import faces, shapes  # noqa: E402

TARGET_SCENES_PER_S = 200.0


def scenes_per_second(render, resolution: int, n: int, rounds: int = 3) -> float:
    """Median over ``rounds`` of n renders / elapsed seconds (first render excluded as warm-up)."""
    render(10_000_000, resolution)
    rates = []
    for r in range(rounds):
        start = time.perf_counter()
        for seed in range(r * n, (r + 1) * n):
            render(seed, resolution)
        rates.append(n / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--resolutions", default="64,256")
    args = parser.parse_args()
    print(f"# toyworld speed — {platform.processor() or platform.machine()}, python {platform.python_version()}, 1 thread")
    print(f"{'world':<8}{'res':>6}{'scenes/s':>12}{'ms/scene':>12}{'vs 200/s':>10}")
    for name, module in (("faces", faces), ("shapes", shapes)):
        for resolution in (int(r) for r in args.resolutions.split(",")):
            n = args.n if resolution <= 64 else max(20, args.n // 8)
            rate = scenes_per_second(module.render, resolution, n)
            print(f"{name:<8}{resolution:>6}{rate:>12.1f}{1000 / rate:>12.2f}{rate / TARGET_SCENES_PER_S:>9.2f}×")


if __name__ == "__main__":
    main()
