"""Personalised generation on the shapes-world model: textual inversion of the unseen heart, scored by the oracle.

1. Learn ``<heart>`` from 32 rendered hearts (eight colours, random placement) by textual inversion;
   as a positive control ``<star2>`` from 32 rendered stars (a shape the model can draw); and the
   named variant "TI + LoRA": the heart's embedding with a rank-``--lora-rank`` UNet LoRA, 64 training
   scenes as prior preservation. All start from "circle" (``personalize.train_concept``; resumable,
   skipped when done).
2. Single-concept prompts "a {colour} <token>": how often the oracle finds the concept's shape,
   and which shapes the token draws instead.
3. The combination benchmark, for the heart by TI and by TI + LoRA: prompts with the heart and 1–2
   known shapes, control (the word "heart", no learned token) / unguided / Attend-and-Excite /
   AI-T2I, rates with 95 % intervals.

    OMP_NUM_THREADS=1 python benchmarks/toy_t2i_personalize.py --work /tmp/personalize [--model DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Where the learned embeddings and results go.")
    parser.add_argument("--model", default=None, help="Shapes-world pipeline directory (default: the shipped model).")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=16, help="Benchmark prompts per known-shape count.")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--known", default="1,2")
    parser.add_argument("--presence-images", type=int, default=16)
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--prior", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from attnsynth.shapes_t2i.model import load_t2i_pipeline
    from attnsynth.shapes_t2i.personalize import (EMBEDS_FILE, PersonalizeBenchConfig, concept_presence, load_concept,
                                                  personalize_markdown, run_personalize_benchmark, train_concept)
    from attnsynth.t2i.textual_inversion import TextualInversionConfig

    # name: (shape, token, LoRA rank, prior scenes)
    concepts = {"heart": ("heart", "<heart>", 0, 0), "star (control)": ("star", "<star2>", 0, 0),
                "heart, TI + LoRA": ("heart", "<heart>", args.lora_rank, args.prior)}
    presence, tables = {}, {}
    for name, (shape, token, rank, prior) in concepts.items():
        directory = args.work / ("ti_" + name.split()[0] + ("_lora" if rank else ""))
        if not (directory / EMBEDS_FILE).is_file():
            config = TextualInversionConfig(placeholder=token, initializer="circle", steps=args.steps, batch_size=8, learning_rate=args.lr,
                                            seed=0, checkpoint_every=100, lora_rank=rank, lora_learning_rate=args.lora_lr)
            result = train_concept(load_t2i_pipeline(args.model), config, shape=shape, n_images=args.images, n_prior=prior, out_dir=directory)
            print(f"{name}: final loss {result.losses[-1]:.4f}", flush=True)
        pipe = load_concept(load_t2i_pipeline(args.model), directory, token)
        presence[name] = concept_presence(pipe, token, shape, n_images=args.presence_images)
        print(name, json.dumps(presence[name]), flush=True)
        if shape != "heart":
            continue
        config = PersonalizeBenchConfig.for_pipeline(pipe, n_prompts=args.prompts, n_seeds=args.seeds,
                                                     known_counts=tuple(int(k) for k in args.known.split(",")))
        tables[name] = run_personalize_benchmark(pipe, config, on_batch=lambda m, n, s: print(f"{m}: {n} known, seed {s}", flush=True))
        print(personalize_markdown(tables[name]), flush=True)
    (args.work / "results.json").write_text(json.dumps({"presence": presence, "benchmarks": tables}, indent=2) + "\n")
    print("\n| concept | token | images | concept's shape found [95 % CI] | in the asked colour | shapes found |\n|---|---|---|---|---|---|")
    for name, r in presence.items():
        lo, hi = r["shape_shown_ci"]
        print(f"| {name} | {concepts[name][1]} | {r['images']} | {r['shape_shown']:.3f} [{lo:.2f}, {hi:.2f}] | {r['in_colour']:.3f} | {r['found_shapes']} |")
    for name, results in tables.items():
        print(f"\n{name}:\n" + personalize_markdown(results))


if __name__ == "__main__":
    main()
