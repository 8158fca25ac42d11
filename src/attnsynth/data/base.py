"""The dataset contract shared by every layout: ``{"image", "labels", "name"}`` samples.

Subclasses implement :meth:`PairDataset.load` (native-size PIL image + label map) and
:meth:`PairDataset.name`; this base applies the :class:`~attnsynth.data.transforms.PairTransform`
with a per-sample seed so augmentation is reproducible and resumable.
"""

from __future__ import annotations

import torch
from PIL import Image

from attnsynth.data.labelsets import LabelSet
from attnsynth.data.transforms import PairTransform


class PairDataset(torch.utils.data.Dataset):
    """Base of all SIS datasets: index → ``{"image": [3, H, W] in [-1, 1], "labels": [H, W] long, "name": str}``.

    Index with an int (augmentation seeded by ``(seed, index)``) or with ``(index, aug_seed)``,
    as the trainer does so that augmentation follows from the step being trained.
    """

    def __init__(self, *, label_set: LabelSet, resolution: tuple[int, int], augment: bool = False, flip: bool = True, resize_ratio: float = 286 / 256, seed: int = 0) -> None:
        self.label_set = label_set
        self.seed = seed
        self.transform = PairTransform(resolution=tuple(resolution), augment=augment, flip=flip, resize_ratio=resize_ratio, flip_permutation=tuple(label_set.flip_permutation()))

    @property
    def num_classes(self) -> int:
        """Number of classes C of the label set."""
        return self.label_set.num_classes

    @property
    def resolution(self) -> tuple[int, int]:
        """Output (H, W) of every sample."""
        return self.transform.resolution

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        """Native-size (PIL RGB image, PIL single-channel label map) of sample ``index``."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A stable name for sample ``index`` (file basename or scene seed)."""
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, aug_seed = key if isinstance(key, tuple) else (key, self.seed * 1_000_003 + key)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for a dataset of {len(self)}")
        image, labels = self.load(index)
        generator = torch.Generator().manual_seed(int(aug_seed)) if self.transform.augment else None
        image_t, labels_t = self.transform(image, labels, generator)
        return {"image": image_t, "labels": labels_t, "name": self.name(index)}
