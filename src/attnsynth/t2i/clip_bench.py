"""The Attend-and-Excite CLIP protocol for real checkpoints: prompt sets, generation, scoring, the table.

Prompt sets (A&E §5): 12 animals, 12 objects, 11 colours ->

* ``animals``: "a {animal} and a {animal}" — every unordered pair, 66 prompts;
* ``animal-object``: "a {animal} and a {colour} {object}" — every animal × object, 144 prompts;
* ``object-object``: "a {colour} {object} and a {colour} {object}" — every unordered pair, 66 prompts.

The authors did not publish which colour each prompt got; here colours are drawn with
``numpy.random.default_rng(COLOUR_SEED)`` in list order (pass ``prompts_file`` to use an exact list).
Each prompt is generated with seeds ``0..n_seeds-1`` (64 in the paper) per method into
``<out>/<method>/<prompt>/<seed>.png`` — the authors' ``outputs/<prompt>/<seed>.png`` layout
per method — sharded over Accelerate processes (``accelerate launch … bench clip``), skipping images
already there (resumable; every PNG written atomically). An existing folder laid out the same way
(for instance the authors' own outputs) is read instead with ``read``.

The table reports, per method and prompt set, the means over images of the full-prompt,
minimum-object and (with a captioner) text–text similarities (:mod:`attnsynth.metrics.clip_score`)
with 95 % intervals over prompts (t-interval of the per-prompt means: images of one prompt are not
independent), and the image count.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "ANIMALS",
    "COLOURS",
    "COLOUR_SEED",
    "METHODS",
    "OBJECTS",
    "PROMPT_SETS",
    "ClipPrompt",
    "clip_markdown",
    "generate_images",
    "mean_interval",
    "protocol_prompts",
    "read_prompts_file",
    "score_folders",
    "write_results",
]

ANIMALS = ("cat", "dog", "bird", "bear", "lion", "horse", "elephant", "monkey", "frog", "turtle", "rabbit", "mouse")
OBJECTS = ("backpack", "glasses", "crown", "suitcase", "chair", "balloon", "bow", "car", "bowl", "bench", "clock", "apple")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray", "black", "white")
PROMPT_SETS = ("animals", "animal-object", "object-object")
METHODS = ("none", "attend-excite", "divide-bind", "ait2i")
COLOUR_SEED = 0


@dataclass(frozen=True)
class ClipPrompt:
    """One protocol prompt, its set and the two subject words guidance is given."""

    text: str
    prompt_set: str
    subjects: tuple[str, str]


def protocol_prompts(sets: Sequence[str] = PROMPT_SETS) -> list[ClipPrompt]:
    """The A&E prompt sets (module docstring), in a fixed order."""
    unknown = [s for s in sets if s not in PROMPT_SETS]
    if unknown or not sets:
        raise ValueError(f"prompt sets must be some of {', '.join(PROMPT_SETS)}, got {list(sets)}")
    rng = np.random.default_rng(COLOUR_SEED)
    colour = lambda: COLOURS[int(rng.integers(len(COLOURS)))]  # noqa: E731
    out: dict[str, list[ClipPrompt]] = {s: [] for s in PROMPT_SETS}
    for a, b in itertools.combinations(ANIMALS, 2):
        out["animals"].append(ClipPrompt(f"a {a} and a {b}", "animals", (a, b)))
    for a in ANIMALS:
        for o in OBJECTS:
            out["animal-object"].append(ClipPrompt(f"a {a} and a {colour()} {o}", "animal-object", (a, o)))
    for a, b in itertools.combinations(OBJECTS, 2):
        out["object-object"].append(ClipPrompt(f"a {colour()} {a} and a {colour()} {b}", "object-object", (a, b)))
    return [p for s in sets for p in out[s]]


def read_prompts_file(path: str | Path) -> list[ClipPrompt]:
    """Prompts from a text file, one a line: ``prompt`` or ``prompt | subject1,subject2``; ``#`` starts a comment.

    Without subjects the last word of each half (split on " and " / " with ") is taken.
    """
    from attnsynth.metrics.clip_score import split_prompt

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts-file {path} does not exist")
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text, bar, subjects = (part.strip() for part in line.partition("|"))
        words = tuple(s.strip() for s in subjects.split(",")) if bar else tuple(half.split()[-1] for half in split_prompt(text))
        if len(words) != 2 or not all(words):
            raise ValueError(f"--prompts-file {path}: line {line!r} needs two subjects ('prompt | cat,dog')")
        prompts.append(ClipPrompt(text, _set_of(text), words))  # type: ignore[arg-type]
    if not prompts:
        raise ValueError(f"--prompts-file {path} holds no prompts")
    return prompts


@functools.lru_cache(maxsize=1)
def _known_sets() -> dict[str, str]:
    return {p.text: p.prompt_set for p in protocol_prompts()}


def _set_of(text: str) -> str:
    """Which protocol set a prompt belongs to (``"other"`` if none)."""
    return _known_sets().get(text, "other")


def _image_path(out: Path, method: str, prompt: str, seed: int) -> Path:
    if "/" in prompt or prompt.startswith("."):
        raise ValueError(f"prompt {prompt!r} cannot be a folder name (no '/' or leading '.')")
    return out / method / prompt / f"{seed}.png"


def generate_images(
    pipe: Any,
    prompts: Sequence[ClipPrompt],
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    accelerator: Any = None,
    call_kwargs: dict[str, Any] | None = None,
    on_image: Callable[[Path], None] | None = None,
) -> int:
    """Generate every (method, prompt, seed) missing under ``out``; returns how many this process wrote.

    ``pipe`` is an :class:`~attnsynth.t2i.AttentionGuidedStableDiffusionPipeline` (or the SDXL one);
    ``accelerator`` (an ``accelerate.Accelerator``) shards the jobs over processes, each on its own
    device; ``seeds`` seed a generator on the pipeline's device, as the authors' ``run.py``.
    ``call_kwargs`` go to every call (steps, CFG, …); guided methods get the prompt's two subjects.
    """
    import torch

    from attnsynth.utils.io import atomic_save_png

    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be some of {', '.join(METHODS)}, got {list(methods)}")
    out = Path(out)
    jobs = [(m, p, s) for m in methods for p in prompts for s in seeds]
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    written = 0
    for method, prompt, seed in jobs[rank::world]:  # shard the full list, then skip: shards agree whenever a process starts
        if _image_path(out, method, prompt.text, seed).is_file():
            continue
        kwargs = dict(call_kwargs or {})
        if method != "none":
            kwargs.update(method=method, subjects=list(prompt.subjects))
        generator = torch.Generator(device=pipe.device).manual_seed(int(seed))
        image = pipe(prompt.text, generator=generator, **kwargs).images[0]
        path = _image_path(out, method, prompt.text, seed)
        atomic_save_png(path, image)
        written += 1
        if on_image is not None:
            on_image(path)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return written


def mean_interval(per_prompt: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """``(mean over images, 95 % low, high)``: the t-interval of the per-prompt means around the pooled mean.

    The pooled mean is what the authors report (``np.average`` of all images); with equal images
    per prompt it equals the mean of the per-prompt means. One prompt gives no interval (NaN).
    """
    from scipy import stats

    values = [v for p in per_prompt for v in p]
    if not values:
        return (float("nan"), float("nan"), float("nan"))
    mean = float(np.mean(values))
    means = np.array([np.mean(p) for p in per_prompt if len(p)])
    if len(means) < 2:
        return (mean, float("nan"), float("nan"))
    half = float(stats.t.ppf(0.975, len(means) - 1) * means.std(ddof=1) / math.sqrt(len(means)))
    return (mean, mean - half, mean + half)


def _folder_images(folder: Path) -> list[Path]:
    """Images of one prompt folder (``.png``/``.jpg`` anywhere below it, as the authors' ``rglob``), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg") and not p.name.startswith("."))


def score_folders(
    folders: dict[str, str | Path],
    scorer: Any,
    *,
    captioner: Any = None,
    prompts: Sequence[str] | None = None,
    batch_size: int = 16,
    cache: str | Path | None = None,
    on_prompt: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Score ``{method: folder}`` where each folder holds ``<prompt>/<seed>.png``; returns raw and aggregated results.

    ``scorer`` is a :class:`~attnsynth.metrics.clip_score.ClipScorer`, ``captioner`` an optional
    :class:`~attnsynth.metrics.clip_score.BlipCaptioner`. ``prompts`` restricts the prompt folders read
    (default: every sub-folder). ``cache`` (a JSON file) keeps per-image scores so a rerun scores only
    new images (written atomically after every prompt).
    """
    from PIL import Image

    from attnsynth.utils.io import atomic_write_json, read_json

    cached: dict[str, Any] = read_json(cache, "score cache") if cache is not None and Path(cache).is_file() else {}
    raw: dict[str, dict[str, Any]] = {}
    for method, folder in folders.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"images folder {folder} (method {method}) does not exist; expected <prompt>/<seed>.png inside")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if prompts is None else list(prompts)
        raw[method] = {}
        for prompt in names:
            files = _folder_images(folder / prompt)
            if not files:
                continue
            key = f"{method}\n{prompt}"
            entry = cached.get(key, {"images": [], "full_text": [], "min_object": [], "first_half": [], "second_half": [], "text_text": [], "captions": []})
            new = [f for f in files if f.name not in entry["images"]]
            if captioner is not None and len(entry["text_text"]) < len(entry["images"]):
                new, entry = files, {k: [] for k in entry}  # cached without captions: rescore this prompt
            for start in range(0, len(new), batch_size):
                chunk = new[start : start + batch_size]
                images = []
                for f in chunk:
                    with Image.open(f) as im:
                        images.append(im.convert("RGB"))
                sims = scorer.similarities(prompt, images)
                for name in ("full_text", "min_object", "first_half", "second_half"):
                    entry[name] += sims[name]
                entry["images"] += [f.name for f in chunk]
                if captioner is not None:
                    captions = captioner(images)
                    entry["captions"] += captions
                    entry["text_text"] += scorer.text_text(prompt, captions)
            raw[method][prompt] = entry
            if cache is not None and new:
                cached[key] = entry
                atomic_write_json(cache, cached)
            if on_prompt is not None:
                on_prompt(method, prompt)
    return {"raw": raw, "table": _aggregate(raw, with_captions=captioner is not None)}


def _aggregate(raw: dict[str, dict[str, Any]], *, with_captions: bool) -> list[dict[str, Any]]:
    metrics = ("full_text", "min_object") + (("text_text",) if with_captions else ())
    rows = []
    for method, per_prompt in raw.items():
        by_set: dict[str, list[str]] = {}
        for prompt in per_prompt:
            by_set.setdefault(_set_of(prompt), []).append(prompt)
        groups = [(s, by_set[s]) for s in (*PROMPT_SETS, "other") if s in by_set]
        if len(groups) > 1:
            groups.append(("all", list(per_prompt)))
        for prompt_set, names in groups:
            row: dict[str, Any] = {"method": method, "prompt_set": prompt_set, "prompts": len(names),
                                   "images": sum(len(per_prompt[p]["images"]) for p in names)}
            for metric in metrics:
                row[metric] = mean_interval([per_prompt[p][metric] for p in names])
            rows.append(row)
    return rows


def clip_markdown(results: dict[str, Any]) -> str:
    """GitHub-markdown table of :func:`score_folders`' rows (mean [95 % interval over prompts])."""
    rows = results["table"]
    captions = any("text_text" in r for r in rows)

    def cell(value: tuple[float, float, float]) -> str:
        mean, lo, hi = value
        return f"{mean:.4f}" if math.isnan(lo) else f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"

    head = "| prompt set | method | prompts | images | full-prompt sim. | min-object sim. |" + (" text–text sim. (BLIP) |" if captions else "")
    lines = [head, "|---|---|---|---|---|---|" + ("---|" if captions else "")]
    for r in sorted(rows, key=lambda r: ((*PROMPT_SETS, "other", "all").index(r["prompt_set"]), r["method"])):
        line = f"| {r['prompt_set']} | {r['method']} | {r['prompts']} | {r['images']} | {cell(r['full_text'])} | {cell(r['min_object'])} |"
        lines.append(line + (f" {cell(r['text_text'])} |" if captions else ""))
    return "\n".join(lines)


def write_results(path: str | Path, results: dict[str, Any]) -> None:
    """Save results as JSON atomically (tuples as lists)."""
    from attnsynth.utils.io import atomic_write_json

    atomic_write_json(path, json.loads(json.dumps(results)))
