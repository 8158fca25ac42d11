"""MMDiT attention guidance: time overhead vs plain diffusers SD3 / FLUX, and capture memory at FLUX 1024².

Part ``overhead``: mid-sized random SD3 and FLUX transformers (tiny text encoders and VAE) on
CPU, one thread; each row is the best of ``--repeats`` interleaved calls of the same seed, and
the ratio is against diffusers' own pipeline:

* plain diffusers pipeline; ours with ``method=None`` (must be ≈1.0×);
* ours observing maps (``return_attention_maps=True``): the side computation of the maps;
* ours guided (``method="ait2i"``) on every step: one extra forward+backward per step.

Part ``memory``: one joint block at the FLUX.1 1024² token count (4096 image + 512 text tokens,
24 heads × 128 dims, batch 1, float32): the naive capture (the full joint probability tensor
materialised, as FOCUS's processor does, then its image × text block sliced) against
:func:`attnsynth.attention.joint.text_attention_probs` (chunked log-sum-exp). Measured as the
growth of the peak resident set size (``ru_maxrss``) of a fresh process beyond the inputs,
forward only and forward + backward (``∂/∂q, ∂/∂k`` of a loss on the map) — an OS-level upper
bound on what each computation allocated (the allocator may hold freed blocks), printed next to
the tensor sizes computed from the shapes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/t2i_mmdit_overhead.py            # both parts, ~5 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/t2i_mmdit_overhead.py --part memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

FLUX_1024 = dict(heads=24, head_dim=128, image_tokens=4096, text_tokens=512)


def _pipelines(family: str):
    from attnsynth.t2i import AttentionGuidedFluxPipeline, AttentionGuidedStableDiffusion3Pipeline
    from attnsynth.t2i.testing import tiny_flux_pipeline, tiny_sd3_pipeline

    if family == "sd3":  # 8 joint blocks, width 256; 128² image → 64² latent → 32² tokens (patch 2) + 77+77 text rows
        plain = tiny_sd3_pipeline(seed=0, sample_size=64, num_layers=8, heads=4, head_dim=64, patch_size=2)
        ours = AttentionGuidedStableDiffusion3Pipeline.from_pipe(plain)
        call = dict(max_sequence_length=77, guidance_scale=5.0)
    else:  # 4 double + 8 single blocks, width 256; 128² image → 64² latent → 32² packed tokens + 128 T5 rows
        plain = tiny_flux_pipeline(seed=0, num_layers=4, num_single_layers=8, heads=4, head_dim=64)
        ours = AttentionGuidedFluxPipeline.from_pipe(plain)
        call = dict(max_sequence_length=128)
    ours.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in plain.transformer.parameters())
    return plain, ours, call, params


def overhead(steps: int, repeats: int) -> None:
    prompt, subjects = "a red cat and a sunflower", ["cat", "sunflower"]
    print(f"### Guidance overhead, {steps} steps, 128² image, CPU 1 thread (best of {repeats})\n")
    print("| family | transformer params | image tokens | run | s / call | × plain |")
    print("|---|---|---|---|---|---|")
    for family in ("sd3", "flux"):
        plain, ours, call, params = _pipelines(family)
        common = dict(height=128, width=128, num_inference_steps=steps, output_type="latent", **call)
        runs = {
            "plain diffusers": lambda: plain(prompt, **common, generator=torch.Generator().manual_seed(0)),
            "ours, method=None": lambda: ours(prompt, **common, generator=torch.Generator().manual_seed(0)),
            "ours, maps observed": lambda: ours(prompt, **common, subjects=subjects, return_attention_maps=True,
                                                generator=torch.Generator().manual_seed(0)),
            "ours, ait2i every step": lambda: ours(prompt, **common, subjects=subjects, method="ait2i", guided_steps=steps,
                                                   generator=torch.Generator().manual_seed(0)),
        }
        for run in runs.values():  # warm-up
            run()
        best = {name: float("inf") for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
        tokens = (128 // 2 // 2) ** 2
        for name, seconds in best.items():
            print(f"| {family} | {params / 1e6:.1f} M | {tokens} | {name} | {seconds:.3f} | {seconds / best['plain diffusers']:.2f} |")
    print()


def _memory_child(variant: str, backward: bool) -> dict:
    """Run one capture variant in this (fresh) process; report the peak RSS growth beyond the inputs."""
    from attnsynth.attention.joint import text_attention_probs

    torch.set_num_threads(1)
    h, d, n_img, n_txt = FLUX_1024["heads"], FLUX_1024["head_dim"], FLUX_1024["image_tokens"], FLUX_1024["text_tokens"]
    g = torch.Generator().manual_seed(0)
    text_query = torch.randn(1, h, n_txt, d, generator=g)
    image_query = torch.randn(1, h, n_img, d, generator=g, requires_grad=backward)
    key = torch.randn(1, h, n_txt + n_img, d, generator=g, requires_grad=backward)  # FLUX order: [text, image]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        if variant == "naive":  # the full joint probabilities [B, heads, S, S], then the image × text block
            query = torch.cat([text_query, image_query], dim=2)
            probs = torch.softmax(query @ key.transpose(-1, -2) / d**0.5, dim=-1)
            maps = probs[:, :, n_txt:, :n_txt].mean(dim=1)
            del probs
        else:
            maps = text_attention_probs(image_query, key, slice(0, n_txt))
        if backward:
            (maps**2).sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra_peak_mib": (peak - base) / 1024, "seconds": seconds, "map_shape": list(maps.shape)}


def memory() -> None:
    h, n_img, n_txt = FLUX_1024["heads"], FLUX_1024["image_tokens"], FLUX_1024["text_tokens"]
    full = h * (n_img + n_txt) ** 2 * 4 / 2**20
    text = h * n_img * n_txt * 4 / 2**20
    the_map = n_img * n_txt * 4 / 2**20
    print("### One joint block at FLUX.1 1024² (4096 image + 512 text tokens, 24 heads × 128, batch 1, float32)\n")
    print(f"Sizes from the shapes: full joint probabilities {full:.0f} MiB; their image × text block {text:.0f} MiB; "
          f"the head-averaged map {the_map:.1f} MiB.\n")
    print("| capture | pass | peak RSS growth (MiB) | s | × chunked |")
    print("|---|---|---|---|---|")
    for backward in (False, True):
        rows = {}
        for variant in ("naive", "chunked"):
            code = f"import json, sys; sys.path.insert(0, 'benchmarks'); import t2i_mmdit_overhead as b; print(json.dumps(b._memory_child({variant!r}, {backward})))"
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        for variant, row in rows.items():
            ratio = row["extra_peak_mib"] / max(rows["chunked"]["extra_peak_mib"], 1e-9)
            print(f"| {variant} | {'forward + backward' if backward else 'forward'} | {row['extra_peak_mib']:.0f} | {row['seconds']:.2f} | {ratio:.1f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("overhead", "memory", "all"), default="all")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    if args.part in ("memory", "all"):
        memory()
    if args.part in ("overhead", "all"):
        overhead(args.steps, args.repeats)


if __name__ == "__main__":
    main()
