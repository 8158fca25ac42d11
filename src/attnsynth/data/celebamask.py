"""CelebAMask-HQ in the SEAN layout: ``ROOT/{train,test}/images/*.jpg|png`` + ``…/labels/*.png``.

Label maps are single-channel PNGs of class ids 0–18 (:data:`CELEBAMASK_HQ`), paired with the
images by basename. Toy-face exports use the same layout and may carry their own label set in
``ROOT/dataset.json``, which then takes precedence.
"""

from __future__ import annotations

from pathlib import Path

from attnsynth.data.folders import IMAGE_SUFFIXES, PairedImageLabels, labelset_from_json, list_files, pair_by_stem
from attnsynth.data.labelsets import CELEBAMASK_HQ, LabelSet

SPLITS = ("train", "test")


def is_celebamask_layout(root: Path) -> bool:
    """True when ``root`` has ``train/images`` or ``test/images`` beside a ``labels`` folder."""
    return any((root / s / "images").is_dir() and (root / s / "labels").is_dir() for s in SPLITS)


def celebamask_hq(root: str | Path, *, split: str = "train", resolution: tuple[int, int], augment: bool = False, label_set: LabelSet | None = None, **kwargs) -> PairedImageLabels:
    """Dataset of one split (``train`` or ``test``) of a SEAN-layout CelebAMask-HQ folder."""
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not a CelebAMask-HQ split; expected one of {', '.join(SPLITS)}")
    base = root / split
    if not (base / "images").is_dir():
        raise FileNotFoundError(f"{base / 'images'} does not exist (expected the SEAN layout ROOT/{{train,test}}/images, ROOT/{{train,test}}/labels)")
    pairs = pair_by_stem(list_files(base / "images", IMAGE_SUFFIXES), list_files(base / "labels", (".png",)))
    if label_set is None:
        described = [p for p in (root / "dataset.json", root / "classes.json") if p.is_file()]
        label_set = labelset_from_json(described[0], name=root.name) if described else CELEBAMASK_HQ
    return PairedImageLabels(pairs, label_set=label_set, resolution=resolution, augment=augment, **kwargs)
