"""Shapes toy world for text-to-image: procedural multi-object scenes, captions and an exact oracle.

A scene is 1–4 coloured shapes (circle, square, triangle, star, cross, diamond; eight colours,
optional two-tone stripes or dots) on a light, low-saturation background, with a caption from a
small grammar (see :mod:`attnsynth.toyworld.shapes_grammar` for it in BNF) and a :class:`Spec`
that holds the truth: each subject's shape, colour, count and boxes, the spatial relations, and
the character spans of every noun and colour word in the caption.

* :func:`render` draws scene ``seed`` at any resolution (32–512; same layout at every size).
* :func:`render_objects` draws given subjects (e.g. the novel heart, which :func:`render` never
  draws: ``NOVEL_SHAPES`` are outside the training captions) in a random layout and appearance.
* :func:`sample_prompt` / :func:`spec_from_prompt` make and parse prompts without images.
* :func:`detect` / :func:`score` (the oracle, :mod:`attnsynth.toyworld.shapes_oracle`) read
  shapes, colours and boxes back from any image, e.g. a model's output, and check a spec.
* :func:`export` writes a dataset (``images/*.png``, ``metadata.jsonl``, ``dataset.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from attnsynth.toyworld.shapes_draw import draw, object_masks, sample_background, sample_instances, sample_layout
from attnsynth.toyworld.shapes_grammar import (
    ALL_SHAPES,
    COLOURS,
    NOVEL_SHAPES,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SYNONYMS,
    ObjectSpec,
    Spec,
    Subject,
    compose_caption,
    sample_objects,
    sample_prompt,
    spec_from_prompt,
    vocabulary,
)
from attnsynth.toyworld.shapes_oracle import Detection, detect, score, shapes_for
from attnsynth.utils.io import atomic_directory, png_bytes

__all__ = [
    "ALL_SHAPES",
    "COLOURS",
    "NOVEL_SHAPES",
    "RELATIONS",
    "RELATION_PHRASES",
    "SHAPES",
    "SYNONYMS",
    "Detection",
    "ObjectSpec",
    "ShapesScene",
    "Spec",
    "Subject",
    "detect",
    "export",
    "object_masks",
    "read_export",
    "render",
    "render_objects",
    "sample_prompt",
    "score",
    "shapes_for",
    "spec_from_prompt",
    "vocabulary",
]

MIN_RESOLUTION, MAX_RESOLUTION = 32, 512
DATASET_FORMAT = "attnsynth-toyworld-shapes/1"


@dataclass(frozen=True)
class ShapesScene:
    """One rendered scene: ``image`` [H, W, 3] uint8, its ``caption`` and the ground-truth ``spec``."""

    image: np.ndarray
    caption: str
    spec: Spec


def _check_seed(seed: int, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be an integer in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {resolution!r}")
    return int(resolution)


def render(seed: int, resolution: int = 64) -> ShapesScene:
    """Draw scene ``seed`` at ``resolution``² pixels; deterministic, same layout at every resolution.

    All random choices come from ``Generator(PCG64(seed))`` in a fixed order (subjects, caption,
    layout, appearance, then pixel noise last), so only the noise depends on the resolution.
    """
    seed, resolution = _check_seed(seed), _check_resolution(resolution)
    rng = np.random.Generator(np.random.PCG64(seed))
    objects, relations = sample_objects(rng)
    caption, subjects = compose_caption(rng, objects, relations)
    boxes = sample_layout(rng, objects, relations)
    instances = sample_instances(rng, objects, boxes)
    background = sample_background(rng)
    image = draw(instances, background, resolution, rng)
    placed = tuple(ObjectSpec(shape=o.shape, colour=o.colour, count=o.count, boxes=b) for o, b in zip(objects, boxes))
    return ShapesScene(image=image, caption=caption, spec=Spec(objects=placed, relations=tuple(relations), subjects=subjects))


def render_objects(
    objects: Sequence[ObjectSpec], seed: int, resolution: int = 64, relations: Sequence[tuple[int, str, int]] = ()
) -> ShapesScene:
    """Draw the given subjects (shape, colour, count; boxes ignored) like :func:`render` draws its own.

    Caption words, layout, appearance and noise come from ``Generator(PCG64(seed))`` in
    :func:`render`'s order. This is how scenes with a novel shape (``NOVEL_SHAPES``) are made,
    e.g. the training images of a textual-inversion concept.
    """
    seed, resolution = _check_seed(seed), _check_resolution(resolution)
    objects = [ObjectSpec(shape=o.shape, colour=o.colour, count=o.count) for o in objects]
    if not objects:
        raise ValueError("objects must hold at least one ObjectSpec, got none")
    relations = [tuple(r) for r in relations]
    rng = np.random.Generator(np.random.PCG64(seed))
    caption, subjects = compose_caption(rng, objects, relations)  # type: ignore[arg-type]
    boxes = sample_layout(rng, objects, relations)  # type: ignore[arg-type]
    instances = sample_instances(rng, objects, boxes)
    background = sample_background(rng)
    image = draw(instances, background, resolution, rng)
    placed = tuple(ObjectSpec(shape=o.shape, colour=o.colour, count=o.count, boxes=b) for o, b in zip(objects, boxes))
    return ShapesScene(image=image, caption=caption, spec=Spec(objects=placed, relations=tuple(relations), subjects=subjects))


def export(out: str | Path, *, n: int, resolution: int, seed: int, overwrite: bool = False, progress: bool = False) -> Path:
    """Write ``n`` scenes (scene i from seed ``seed + i``) as a dataset directory, atomically.

    Layout: ``images/000000.png …``, ``metadata.jsonl`` (one JSON line per image with
    ``file_name``, ``caption`` and ``spec``: the Hugging Face imagefolder convention) and
    ``dataset.json`` (arguments, word lists, format). Byte-identical for the same arguments.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    resolution, seed = _check_resolution(resolution), _check_seed(seed)
    out = Path(out)
    with atomic_directory(out, overwrite) as tmp:
        (tmp / "images").mkdir()
        lines = []
        indices: range | Iterator[int] = range(n)
        if progress:
            from rich.progress import track

            indices = track(indices, description=f"shapes {resolution}²", total=n)
        for i in indices:
            scene = render(seed + i, resolution)
            name = f"images/{i:06d}.png"
            (tmp / name).write_bytes(png_bytes(scene.image))
            lines.append(json.dumps({"file_name": name, "caption": scene.caption, "spec": scene.spec.to_dict()}, sort_keys=True))
        (tmp / "metadata.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        info = {
            "format": DATASET_FORMAT,
            "n": int(n),
            "resolution": resolution,
            "seed": seed,
            "shapes": list(SHAPES),
            "colours": {k: list(v) for k, v in COLOURS.items()},
            "synonyms": {k: list(v) for k, v in SYNONYMS.items()},
            "relations": {k: list(v) for k, v in RELATION_PHRASES.items()},
            "vocabulary": vocabulary(),
        }
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def read_export(path: str | Path) -> Iterator[ShapesScene]:
    """Iterate over the scenes of a directory written by :func:`export` (images decoded to uint8)."""
    from PIL import Image

    path = Path(path)
    metadata = path / "metadata.jsonl"
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} not found; expected a directory written by attnsynth toyworld shapes")
    with metadata.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            with Image.open(path / record["file_name"]) as im:
                image = np.asarray(im.convert("RGB"))
            yield ShapesScene(image=image, caption=record["caption"], spec=Spec.from_dict(record["spec"]))
