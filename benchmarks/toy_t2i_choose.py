"""Choose each guidance method's step size on the *validation* prompts of the shapes-world model.

Usage:
    .venv/bin/python benchmarks/toy_t2i_choose.py --model DIR [--prompts 16] [--seeds 1] \
        [--grid ait2i=0.5,1,2,5 attend-excite=1,5,20 ...] [--write-defaults]

For every (method, step size) of the grid, ``attnsynth.shapes_t2i.bench.run_benchmark`` generates the
validation split's multi-subject prompts (2–4 subjects; unguided once as the reference) and reads
them with the oracle. The chosen step size of a method is the one with the highest all-present rate
over those images (layout methods: all-present + box IoU; ties: the smaller step). Prints every row side by side with unguided sampling
(all-present ratio), and with ``--write-defaults`` stores the choice in the model's
``attnsynth_defaults.json`` (atomically). Nothing here looks at the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from attnsynth.shapes_t2i.bench import LAYOUT_METHODS, METHODS, BenchConfig, run_benchmark  # noqa: E402
from attnsynth.shapes_t2i.model import load_t2i_pipeline  # noqa: E402
from attnsynth.t2i import RECOMMENDED_SETTINGS_FILE  # noqa: E402
from attnsynth.utils.io import atomic_write_json, read_json  # noqa: E402

DEFAULT_GRID = {
    "ait2i": (0.5, 1.0, 2.0, 5.0),
    "ait2i-prompt-softmax": (0.5, 1.0, 2.0, 5.0),
    "attend-excite": (1.0, 5.0, 20.0),
    "divide-bind": (1.0, 5.0, 20.0),
    "layout": (1.0, 5.0, 20.0),
    "layout+ait2i": (0.5, 1.0, 5.0),
}


def parse_grid(items: list[str]) -> dict[str, tuple[float, ...]]:
    """``["ait2i=0.5,1", ...]`` → ``{"ait2i": (0.5, 1.0)}``; a one-line ValueError otherwise."""
    grid = {}
    for item in items:
        method, _, values = item.partition("=")
        if method not in (*METHODS, *LAYOUT_METHODS) or method == "none":
            raise ValueError(f"--grid {item!r}: unknown method {method!r}; expected a guided method of bench toy-t2i")
        try:
            grid[method] = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"--grid {item!r}: expected method=number,number,…") from None
        if not grid[method] or any(not v > 0 for v in grid[method]):
            raise ValueError(f"--grid {item!r}: expected positive step sizes")
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline directory (default: the shipped shapes model)")
    parser.add_argument("--prompts", type=int, default=16, help="validation prompts per subject count")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--counts", default="2,3,4")
    parser.add_argument("--grid", nargs="*", default=None, help="method=a,b,c … (default: DEFAULT_GRID for the methods given)")
    parser.add_argument("--methods", default="ait2i,attend-excite,divide-bind")
    parser.add_argument("--guided-steps", type=int, default=None)
    parser.add_argument("--write-defaults", action="store_true", help="store the chosen step sizes in the model's defaults file")
    parser.add_argument("--json", type=Path, default=None, help="also write every row as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    grid = parse_grid(args.grid) if args.grid else {m: DEFAULT_GRID[m] for m in methods}
    counts = tuple(int(c) for c in args.counts.split(","))
    pipe = load_t2i_pipeline(args.model)
    print(f"# step-size choice on validation prompts — {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    start = time.perf_counter()
    rows, chosen, references = [], {}, {}
    for method, sizes in grid.items():
        layout = method in LAYOUT_METHODS
        base = BenchConfig.for_pipeline(pipe, n_prompts=args.prompts, n_seeds=args.seeds, subject_counts=counts, split="validation",
                                        methods=("none",), layout=layout, guided_steps=args.guided_steps)
        if layout not in references:  # unguided once per mode (the layout mode adds box IoU)
            references[layout] = run_benchmark(pipe, base)["methods"]["none"]["all"]
            rows.append({"method": "none", "layout": layout, "step_size": None, **references[layout]})
            print(f"# {args.prompts} prompts × {args.seeds} seed(s) × counts {counts}; guided steps {base.guided_steps}; layout {layout}")
            print(f"none: all present {references[layout]['all_present']:.3f}" + (f", box IoU {references[layout]['box_iou']:.3f}" if layout else ""))
        reference = references[layout]
        best = None
        for size in sizes:
            result = run_benchmark(pipe, replace(base, methods=(method,), step_size=size))["methods"][method]["all"]
            rows.append({"method": method, "layout": layout, "step_size": size, **result})
            ratio = result["all_present"] / reference["all_present"] if reference["all_present"] else float("nan")
            extra = f", box IoU {result['box_iou']:.3f}" if layout else ""
            print(f"{method} α={size:g}: all present {result['all_present']:.3f} ({ratio:.2f}× unguided){extra}, {result['s_per_image']:.2f} s/image")
            key = (result["all_present"] + (result.get("box_iou", 0.0) if layout else 0.0), -size)
            if best is None or key > best[0]:
                best = (key, size)
        chosen[method] = best[1]
    print(f"chosen: {json.dumps(chosen)}  ({time.perf_counter() - start:.0f} s)")
    if args.json is not None:
        atomic_write_json(args.json, {"chosen": chosen, "rows": rows, "config": {"prompts": args.prompts, "seeds": args.seeds, "counts": counts}})
    if args.write_defaults:
        model_dir = Path(args.model) if args.model else None
        if model_dir is None:
            raise ValueError("--write-defaults needs --model (the shipped model is changed only by exporting a new one)")
        path = model_dir / RECOMMENDED_SETTINGS_FILE
        defaults = dict(read_json(path, "recommended settings")) if path.is_file() else {}
        step_size = dict(defaults.get("step_size") or {}) if isinstance(defaults.get("step_size"), dict) else {}
        step_size.update(chosen)
        defaults["step_size"] = step_size
        atomic_write_json(path, defaults)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
