"""ADE20K (SceneParsing, 150 classes) in the SPADE layout, and its label set.

SPADE's loader walks ``ROOT`` recursively and keeps ``*_train_*``/``*_val_*`` files: images are
``.jpg``, label maps ``.png`` with the same basename (e.g. ``ADEChallengeData2016/images/training/
ADE_train_00000001.jpg`` and ``…/annotations/training/ADE_train_00000001.png``). Label value 0 is
"other" (unlabelled) and 1–150 the classes, so C = 151 here (value 0 kept as a class, as CA²-SIS
does with its 151-class style encoder).
"""

from __future__ import annotations

from pathlib import Path

from attnsynth.data.folders import PairedImageLabels, pair_by_stem
from attnsynth.data.labelsets import LabelSet

# Short names of objectInfo150 (the ADE20K SceneParsing benchmark), in label order 1..150.
_ADE20K_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

ADE20K = LabelSet(
    name="ade20k",
    class_names=("other",) + _ADE20K_NAMES,
    presets={"sky": (3,), "ground": (4, 7, 12, 14, 30), "vegetation": (5, 10, 18, 67), "water": (22, 27, 61, 129)},
)
"""151 classes: 0 "other" + the 150 SceneParsing classes; no left/right pairs."""

SPLITS = {"train": "train", "val": "val", "test": "val"}


def _ade_files(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    tag = f"_{SPLITS[split]}_"
    images, labels = [], []
    for path in sorted(root.rglob("*")):
        if tag not in path.name or not path.is_file():
            continue
        if path.suffix.lower() == ".jpg":
            images.append(path)
        elif path.suffix.lower() == ".png":
            labels.append(path)
    return images, labels


def is_ade20k_layout(root: Path) -> bool:
    """True when ``root`` holds SPADE-style ``*_train_*.jpg`` or ``*_val_*.jpg`` files somewhere below."""
    return (root / "ADEChallengeData2016").is_dir() or any("_train_" in p.name or "_val_" in p.name for p in root.rglob("*.jpg"))


def ade20k(root: str | Path, *, split: str = "train", resolution: tuple[int, int], augment: bool = False, label_set: LabelSet = ADE20K, **kwargs) -> PairedImageLabels:
    """Dataset of the ``train`` or ``val`` (alias ``test``) split of an ADE20K folder (SPADE layout)."""
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not an ADE20K split; expected train or val")
    if not root.is_dir():
        raise FileNotFoundError(f"ADE20K root {root} is not a directory")
    images, labels = _ade_files(root, split)
    if not images and not labels:
        raise FileNotFoundError(f"no *_{SPLITS[split]}_*.jpg / .png files below {root} (expected the SPADE ADE20K layout)")
    return PairedImageLabels(pair_by_stem(images, labels), label_set=label_set, resolution=resolution, augment=augment, **kwargs)
