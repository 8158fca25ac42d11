"""Loaders for real dataset layouts (CelebAMask-HQ/SEAN, ADE20K, generic folders) and toy data.

:func:`load_dataset` picks the layout from a path (or ``"toy-faces"``); every dataset yields
``{"image": [3, H, W] float in [-1, 1], "labels": [H, W] long, "name": str}``.
"""

from __future__ import annotations

from pathlib import Path

from attnsynth.data.base import PairDataset

LAYOUTS = ("auto", "celebamask", "ade20k", "folder")


def load_dataset(data: str | Path, *, split: str = "train", resolution: tuple[int, int], augment: bool = False, layout: str = "auto", toy_n: int = 512, seed: int = 0, **kwargs) -> PairDataset:
    """Open ``data`` (a directory or ``"toy-faces"``) as a :class:`PairDataset` of one split.

    ``layout="auto"`` recognises the SEAN/CelebAMask-HQ layout (``train|test/images``), a plain
    folder (``images/`` + ``labels/``) and SPADE's ADE20K layout (``*_train_*.jpg``), in that order.
    """
    from attnsynth.data.ade20k import ade20k, is_ade20k_layout
    from attnsynth.data.celebamask import celebamask_hq, is_celebamask_layout
    from attnsynth.data.folders import generic_folder
    from attnsynth.data.toy import TOY_FACES, ToyFaces

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is unknown; expected one of {', '.join(LAYOUTS)}")
    if str(data) == TOY_FACES:
        return ToyFaces(n=toy_n, resolution=resolution, split=split, seed=seed, augment=augment, **kwargs)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} is not a directory (nor '{TOY_FACES}')")
    if layout == "celebamask" or (layout == "auto" and is_celebamask_layout(root)):
        return celebamask_hq(root, split=split, resolution=resolution, augment=augment, seed=seed, **kwargs)
    if layout == "folder" or (layout == "auto" and (root / "images").is_dir()):
        return generic_folder(root, split=split, resolution=resolution, augment=augment, seed=seed, **kwargs)
    if layout == "ade20k" or (layout == "auto" and is_ade20k_layout(root)):
        return ade20k(root, split=split, resolution=resolution, augment=augment, seed=seed, **kwargs)
    raise ValueError(f"--data {root}: no known layout (expected train|test/images + labels, images/ + labels/, or ADE20K *_train_*.jpg files)")


__all__ = ["PairDataset", "load_dataset"]
