"""The CA²-SIS paper's claims, tested on toy faces: CA²-SIS vs the SPADE baseline with bootstrap 95 % intervals.

Usage:
    .venv/bin/python benchmarks/sis_claims.py --ca2sis RUN_A --spade RUN_B --data DIR [--n 225] [--json FILE]

Both models are evaluated by :func:`attnsynth.sis.evaluate.evaluate_model` on the same ``--n``
held-out faces (``DIR``'s test split, whose seeds were never used in training; exact toy-face
oracles), with per-face values kept. For every metric the table gives each model's mean with a
95 % percentile-bootstrap interval over faces (``--resamples`` draws, seeded) and the paired
difference CA²-SIS − SPADE with its interval; a claim's verdict is "CA²-SIS better" / "SPADE better"
only when that interval excludes 0 in one direction, otherwise "no clear difference".

Claims (Fontanini et al., CA²-SIS): (1) reconstruction, (2) per-class style transfer accuracy
(transferred classes take the reference style, the others keep theirs), (3) global consistency
after per-class edits (the main claim: one light over the whole face), (4) robustness to mask noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

GROUPS = ("hair", "skin", "eyes", "mouth", "background")
NOISE = 0.2


def per_face_metrics(checkpoint: str, data: str, n: int, batch_size: int) -> dict[str, np.ndarray]:
    """Metric name → per-face values [n] (NaN where a face has no scorable class) for one checkpoint."""
    from attnsynth.data import load_dataset
    from attnsynth.sis import edits
    from attnsynth.sis.evaluate import evaluate_model

    model, label_set = edits.load_model(checkpoint)
    dataset = load_dataset(data, split="test", resolution=model.config.resolution, augment=False)
    report = evaluate_model(model, label_set, dataset, n=n, batch_size=batch_size, noise_levels=(0.0, NOISE),
                            transfer_groups=GROUPS, per_image=True)
    faces = report["per_image"]
    out = {
        "reconstruction PSNR (dB) ↑": np.asarray(faces["psnr"]["0.0"]),
        "reconstruction style error ↓": np.asarray(faces["style_error"]["0.0"]),
        "global consistency, reconstruction ↑": np.asarray(faces["global_consistency/reconstruction"]),
        "global consistency, real images": np.asarray(faces["global_consistency/real"]),
    }
    for kind in ("transferred", "kept"):
        per_group = np.stack([[r[kind] for r in faces["transfer"][g]] for g in GROUPS])  # [G, n]
        for g, values in zip(GROUPS, per_group):
            out[f"transfer accuracy {kind}: {g} ↑"] = values
        out[f"transfer accuracy {kind}: mean of groups ↑"] = np.nanmean(per_group, axis=0)
    consistency = np.stack([faces[f"global_consistency/transfer/{g}"] for g in GROUPS])  # [G, n]
    out["global consistency after per-class transfer ↑"] = consistency.mean(axis=0)
    out["global consistency gap to real after transfer ↓"] = np.abs(consistency.mean(axis=0) - out["global consistency, real images"])
    out[f"PSNR drop at {NOISE:.0%} mask noise (dB) ↓"] = out["reconstruction PSNR (dB) ↑"] - np.asarray(faces["psnr"][str(NOISE)])
    out[f"style error rise at {NOISE:.0%} mask noise ↓"] = np.asarray(faces["style_error"][str(NOISE)]) - out["reconstruction style error ↓"]
    return out


def bootstrap(values: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean, low, high): nan-mean over faces and its 95 % percentile-bootstrap interval."""
    values = np.asarray(values, dtype=float)
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    means = np.nanmean(values[index], axis=1)
    return float(np.nanmean(values)), float(np.nanpercentile(means, 2.5)), float(np.nanpercentile(means, 97.5))


def verdict(name: str, low: float, high: float) -> str:
    """Which model the paired interval favours, given the metric's direction (↑ higher is better, ↓ lower)."""
    if "↑" not in name and "↓" not in name:
        return "—"
    better_high = "↑" in name
    if low > 0:
        return "**CA²-SIS better**" if better_high else "**SPADE better**"
    if high < 0:
        return "**SPADE better**" if better_high else "**CA²-SIS better**"
    return "no clear difference"


def table(a: dict[str, np.ndarray], b: dict[str, np.ndarray], resamples: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name in a:
        ma, la, ha = bootstrap(a[name], resamples, rng)
        mb, lb, hb = bootstrap(b[name], resamples, rng)
        md, ld, hd = bootstrap(a[name] - b[name], resamples, rng)
        rows.append({"metric": name, "ca2sis": [ma, la, ha], "spade": [mb, lb, hb], "difference": [md, ld, hd], "verdict": verdict(name, ld, hd)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ca2sis", required=True, help="CA²-SIS run / checkpoint directory")
    parser.add_argument("--spade", required=True, help="SPADE run / checkpoint directory")
    parser.add_argument("--data", required=True, help="exported toy faces (attnsynth toyworld faces); its test split is used")
    parser.add_argument("--n", type=int, default=225)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows (and per-face values) to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for flag in ("ca2sis", "spade"):
        if not (Path(getattr(args, flag)) / "config.json").is_file():
            sys.exit(f"error: --{flag} {getattr(args, flag)} is not a checkpoint directory (no config.json)")
    a = per_face_metrics(args.ca2sis, args.data, args.n, args.batch_size)
    b = per_face_metrics(args.spade, args.data, args.n, args.batch_size)
    rows = table(a, b, args.resamples, args.seed)
    print(f"# sis claims — {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}; n = {len(next(iter(a.values())))} "
          f"held-out faces, {args.resamples} bootstrap resamples")
    print("| metric | CA²-SIS (95 % CI) | SPADE (95 % CI) | CA²-SIS − SPADE (95 % CI) | verdict |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (row["ca2sis"], row["spade"], row["difference"])]
        print(f"| {row['metric']} | {' | '.join(cells)} | {row['verdict']} |")
    if args.json:
        from attnsynth.utils.io import atomic_write_json

        per_face = {"ca2sis": {k: v.tolist() for k, v in a.items()}, "spade": {k: v.tolist() for k, v in b.items()}}
        atomic_write_json(args.json, {"rows": rows, "per_face": per_face, "args": vars(args)})


if __name__ == "__main__":
    main()
