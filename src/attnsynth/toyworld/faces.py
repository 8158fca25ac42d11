"""Toy faces for semantic image synthesis: procedural face-like scenes with exact ground truth.

``render(seed, resolution)`` draws a ``FaceRecord`` (geometry, one style per CelebAMask-HQ class,
a global illumination) from ``Generator(PCG64(seed))`` and rasterises it. Styles are correlated
across classes and every pixel is lit by one smooth shading field and colour cast — the global
effects CA²-SIS says SPADE-style generators miss. The oracles in ``faces_oracle`` read the truth
back from an image (style error after removing the illumination, global consistency, per-class
transfer accuracy); ``export`` writes the CelebAMask-HQ/SEAN folder layout.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from attnsynth.data.labelsets import CELEBAMASK_HQ
from attnsynth.toyworld.faces_draw import MAX_RESOLUTION, MIN_RESOLUTION, check_resolution, paint, rasterize
from attnsynth.toyworld.faces_oracle import (
    fit_light,
    global_consistency,
    per_class_style_error,
    per_class_transfer,
    style_error,
    transfer_accuracy,
)
from attnsynth.toyworld.faces_record import ClassStyle, FaceGeometry, FaceRecord, Illumination, sample_illumination, sample_record
from attnsynth.utils.io import png_bytes, read_json

__all__ = [
    "LABELSET", "CLASS_NAMES", "NUM_CLASSES", "MIN_RESOLUTION", "MAX_RESOLUTION",
    "FaceScene", "FaceRecord", "FaceGeometry", "ClassStyle", "Illumination",
    "render", "render_record", "sample_record", "sample_illumination", "load_record", "export", "scenes_per_second",
    "style_error", "per_class_style_error", "global_consistency", "transfer_accuracy", "per_class_transfer", "fit_light",
]

LABELSET = CELEBAMASK_HQ
CLASS_NAMES = LABELSET.class_names
NUM_CLASSES = LABELSET.num_classes
DATASET_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class FaceScene:
    """One rendered toy face: ``image`` [H, W, 3] uint8, ``labels`` [H, W] uint8 class ids, ``record``.

    Compared by identity (arrays have no single truth value); compare ``record`` or the arrays.
    """

    image: np.ndarray
    labels: np.ndarray
    record: FaceRecord


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def render(seed: int, resolution: int) -> FaceScene:
    """Draw scene ``seed`` at ``resolution``² (32–512); the same seed gives the same face at any size."""
    resolution = check_resolution(resolution)
    return render_record(sample_record(_check_seed(seed)), resolution)


def render_record(record: FaceRecord, resolution: int, *, labels: np.ndarray | None = None) -> FaceScene:
    """Render ``record`` (e.g. relit via ``record.with_illumination``); ``labels`` overrides its geometry.

    Passing another scene's ``labels`` paints this record's styles on that shape (shape/style swap).
    """
    resolution = check_resolution(resolution)
    if labels is None:
        labels = rasterize(record.geometry, resolution)
    else:
        labels = np.asarray(labels)
        if labels.shape != (resolution, resolution):
            raise ValueError(f"labels shape {labels.shape} does not match resolution {resolution}")
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"label values must be in [0, {NUM_CLASSES - 1}], got {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    return FaceScene(image=paint(record, labels), labels=labels, record=record)


def load_record(path: str | os.PathLike) -> FaceRecord:
    """Read a record JSON written by ``export`` (or ``json.dump(record.to_dict())``)."""
    path = Path(path)
    data = read_json(path, "face record")
    try:
        return FaceRecord.from_dict(data)
    except ValueError as error:
        raise ValueError(f"face record {path}: {error}") from None


def _record_json(record: FaceRecord) -> bytes:
    return (json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")


def export(
    out: str | os.PathLike,
    *,
    n: int,
    resolution: int,
    seed: int,
    test_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``n`` scenes (seeds ``seed … seed+n−1``) in the CelebAMask-HQ/SEAN layout, atomically.

    ``{train,test}/images/000000.png`` (RGB), ``{train,test}/labels/000000.png`` (one channel, class
    ids) and ``{train,test}/records/000000.json``, plus ``dataset.json``. The last
    ``round(n · test_fraction)`` scenes go to ``test/``. Output is byte-identical for equal arguments.
    """
    from attnsynth.utils.io import atomic_directory

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    resolution = check_resolution(resolution)
    seed = _check_seed(seed)
    if not isinstance(test_fraction, (int, float)) or not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    n = int(n)
    n_test = int(math.floor(n * float(test_fraction) + 0.5))
    width = max(6, len(str(max(n - 1, 0))))
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for split in ("train", "test"):
            for kind in ("images", "labels", "records"):
                (tmp / split / kind).mkdir(parents=True)
        indices = range(n)
        if progress:
            from rich.progress import track

            indices = track(indices, description=f"toy faces {resolution}²", total=n, transient=True)
        for i in indices:
            scene = render(seed + i, resolution)
            split = tmp / ("test" if i >= n - n_test else "train")
            stem = f"{i:0{width}d}"
            (split / "images" / f"{stem}.png").write_bytes(png_bytes(scene.image))
            (split / "labels" / f"{stem}.png").write_bytes(png_bytes(scene.labels))
            (split / "records" / f"{stem}.json").write_bytes(_record_json(scene.record))
        meta = {
            "generator": "attnsynth.toyworld.faces",
            "version": DATASET_VERSION,
            "labelset": LABELSET.name,
            "flip_pairs": [list(p) for p in LABELSET.flip_pairs],
            "class_names": list(CLASS_NAMES),
            "num_classes": NUM_CLASSES,
            "resolution": resolution,
            "seed": seed,
            "n": n,
            "n_train": n - n_test,
            "n_test": n_test,
            "test_fraction": float(test_fraction),
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out)


def scenes_per_second(resolution: int = 64, n: int = 200, seed: int = 0) -> float:
    """Measure ``render`` throughput (scenes/s, one thread, wall clock) over ``n`` consecutive seeds."""
    resolution = check_resolution(resolution)
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    render(seed, resolution)  # warm the coordinate-grid cache
    start = time.perf_counter()
    for i in range(n):
        render(seed + i, resolution)
    return n / (time.perf_counter() - start)
