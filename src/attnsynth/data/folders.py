"""Paired (image, label map) datasets read from files, with one-line errors naming the bad file.

:class:`PairedImageLabels` is the dataset every file layout builds on; :func:`pair_by_stem`
matches images to label maps by basename; :func:`generic_folder` reads the plain layout
``ROOT/[split/]images/*`` + ``ROOT/[split/]labels/*.png`` with an optional ``classes.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnsynth.data.base import PairDataset
from attnsynth.data.labelsets import LABELSETS, LabelSet

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def pair_by_stem(images: Sequence[Path], labels: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Match image and label files by basename (without suffix); unpaired files are an error."""
    image_by_stem = {p.stem: p for p in images}
    label_by_stem = {p.stem: p for p in labels}
    for kind, files in (("image", images), ("label", labels)):
        stems = [p.stem for p in files]
        if len(set(stems)) != len(stems):
            dup = sorted({s for s in stems if stems.count(s) > 1})[:3]
            raise ValueError(f"several {kind} files share the basename(s) {', '.join(dup)} in {files[0].parent}")
    lonely_images = sorted(set(image_by_stem) - set(label_by_stem))
    lonely_labels = sorted(set(label_by_stem) - set(image_by_stem))
    if lonely_images or lonely_labels:
        parts = []
        if lonely_images:
            parts.append(f"images without a label map: {_few(image_by_stem[s] for s in lonely_images)}")
        if lonely_labels:
            parts.append(f"label maps without an image: {_few(label_by_stem[s] for s in lonely_labels)}")
        raise ValueError("unpaired files — " + "; ".join(parts))
    return [(image_by_stem[s], label_by_stem[s]) for s in sorted(image_by_stem)]


def _few(paths, limit: int = 3) -> str:
    paths = [str(p) for p in paths]
    more = f" (+{len(paths) - limit} more)" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def list_files(directory: Path, suffixes: Sequence[str]) -> list[Path]:
    """Sorted regular files in ``directory`` whose suffix (case-insensitive) is in ``suffixes``."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def read_image(path: Path) -> Image.Image:
    """Open an RGB image, turning decoder failures into a one-line error naming the file."""
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {' '.join(str(error).split())}") from None


def read_labels(path: Path, num_classes: int) -> Image.Image:
    """Open a single-channel label map and check its values lie in [0, num_classes − 1]."""
    try:
        with Image.open(path) as handle:
            handle.load()
            labels = handle
    except FileNotFoundError:
        raise FileNotFoundError(f"label map {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read label map {path}: {' '.join(str(error).split())}") from None
    if labels.mode not in ("L", "P", "I", "I;16", "1"):
        raise ValueError(f"label map {path} has mode {labels.mode} ({len(labels.getbands())} channels); expected a single-channel PNG of class ids")
    values = np.asarray(labels)
    top = int(values.max()) if values.size else 0
    if top >= num_classes or (values.size and int(values.min()) < 0):
        bad = top if top >= num_classes else int(values.min())
        raise ValueError(f"label map {path} contains value {bad}; valid class ids are 0..{num_classes - 1}")
    if labels.mode != "L":
        labels = Image.fromarray(values.astype(np.uint8 if num_classes <= 256 else np.int32))
    return labels


def labelset_from_json(path: Path, *, name: str) -> LabelSet:
    """Read a label set from ``classes.json``/``dataset.json``: ``{"names"|"class_names": [...], "flip_pairs": [[a, b]], "presets": {...}}``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {' '.join(str(error).split())}") from None
    registered = None  # a dataset.json may name a registered label set ("labelset": "celebamask_hq")
    for key in ("labelset", "label_set"):  # dataset.json of a toy-faces export nests the label set
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
        elif isinstance(data, dict) and isinstance(data.get(key), str):
            registered = LABELSETS.get(data[key].strip().lower())
    if isinstance(data, list):
        data = {"names": data}
    names = data.get("class_names", data.get("names")) if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must hold a list of class names under 'names' (or 'class_names')")
    presets = {str(k): tuple(int(i) for i in v) for k, v in data.get("presets", {}).items()}
    if registered is not None and registered.class_names == tuple(names):
        presets = {**registered.presets, **presets}  # the registered edit presets (eyes, mouth, brows…), file wins
    return LabelSet(
        name=str(data.get("name", name)),
        class_names=tuple(names),
        flip_pairs=tuple(tuple(int(i) for i in p) for p in data.get("flip_pairs", [])),
        presets=presets,
    )


class PairedImageLabels(PairDataset):
    """(image file, label-map file) pairs; every file problem raises a one-line error naming the file."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], *, label_set: LabelSet, resolution: tuple[int, int], **kwargs) -> None:
        if not pairs:
            raise ValueError("dataset is empty: no (image, label map) pairs found")
        super().__init__(label_set=label_set, resolution=resolution, **kwargs)
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        """Basename (without suffix) of sample ``index``."""
        return self.pairs[index][0].stem

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        """Read and check sample ``index`` at its native size (PIL RGB image, PIL label map)."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        labels = read_labels(label_path, self.num_classes)
        if image.size != labels.size:
            raise ValueError(f"label map {label_path} is {labels.size[1]}×{labels.size[0]} but image {image_path} is {image.size[1]}×{image.size[0]} (H×W); they must match")
        return image, labels

    def validate(self) -> None:
        """Read every pair once and raise on the first bad file (slow on big sets; optional)."""
        for index in range(len(self)):
            self.load(index)


def infer_labelset(label_paths: Sequence[Path], *, name: str) -> LabelSet:
    """Label set ``class_0 … class_K`` with K the largest value found in the label maps."""
    top = 0
    for path in label_paths:
        top = max(top, int(np.asarray(read_labels(path, 1 << 31)).max()))
    return LabelSet(name=name, class_names=tuple(f"class_{i}" for i in range(top + 1)))


def generic_folder(root: str | Path, *, split: str | None = None, resolution: tuple[int, int], augment: bool = False, label_set: LabelSet | None = None, **kwargs) -> PairedImageLabels:
    """Plain layout: ``ROOT/[split/]images/*`` + ``ROOT/[split/]labels/*.png`` (+ ``classes.json``).

    Without ``classes.json`` (or ``label_set``) the classes are named ``class_0 … class_K`` from
    the largest label value present, and no left/right pairs are known.
    """
    root = Path(root)
    base = root / split if split and (root / split / "images").is_dir() else root
    pairs = pair_by_stem(list_files(base / "images", IMAGE_SUFFIXES), list_files(base / "labels", (".png",)))
    if label_set is None:
        for candidate in (base / "classes.json", root / "classes.json", root / "dataset.json"):
            if candidate.is_file():
                label_set = labelset_from_json(candidate, name=root.name)
                break
        else:
            label_set = infer_labelset([p for _, p in pairs], name=root.name)
    return PairedImageLabels(pairs, label_set=label_set, resolution=resolution, augment=augment, **kwargs)
