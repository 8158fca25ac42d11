"""Paired image/label-map transforms: resize (labels nearest), random crop, class-aware flip.

All randomness comes from an explicit ``torch.Generator`` so that a sample's augmentation is a
pure function of its seed — the trainer derives that seed from (run seed, epoch, index), which
makes data augmentation part of the resumable state without storing any RNG.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image


@dataclasses.dataclass(frozen=True)
class PairTransform:
    """Resize an (image, labels) pair, optionally random-crop and flip it, and convert to tensors.

    Training (``augment=True``) follows SPADE/CA²-SIS: resize to ``resolution × resize_ratio``
    (286/256 by default), random-crop ``resolution``, flip with probability ½. The flip also
    relabels left/right classes through ``flip_permutation`` (the official code does not).
    Evaluation (``augment=False``) is a plain resize to ``resolution``.
    """

    resolution: tuple[int, int]  # output (H, W)
    augment: bool = False
    resize_ratio: float = 286 / 256
    flip: bool = True
    flip_permutation: tuple[int, ...] | None = None  # perm[label] = label after a horizontal flip

    def __post_init__(self) -> None:
        if len(self.resolution) != 2 or min(self.resolution) <= 0:
            raise ValueError(f"resolution must be two positive integers (H, W), got {self.resolution}")
        if self.resize_ratio < 1.0:
            raise ValueError(f"resize_ratio must be >= 1 (resize then crop), got {self.resize_ratio}")

    @property
    def load_size(self) -> tuple[int, int]:
        """(H, W) the pair is resized to before cropping."""
        if not self.augment:
            return self.resolution
        return tuple(int(round(s * self.resize_ratio)) for s in self.resolution)  # type: ignore[return-value]

    def __call__(self, image: Image.Image, labels: Image.Image, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL RGB image + PIL label map → (image [3, H, W] float in [-1, 1], labels [H, W] long)."""
        height, width = self.load_size
        if image.size != (width, height):
            image = image.resize((width, height), Image.BICUBIC)
        if labels.size != (width, height):
            labels = labels.resize((width, height), Image.NEAREST)
        pixels = np.array(image, dtype=np.uint8)  # [H, W, 3]
        label_map = np.array(labels, dtype=np.int64)  # [H, W]
        if self.augment:
            if generator is None:
                raise ValueError("PairTransform(augment=True) needs a torch.Generator for its random crop and flip")
            top = int(torch.randint(0, height - self.resolution[0] + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - self.resolution[1] + 1, (1,), generator=generator))
            flip = bool(torch.rand((), generator=generator) < 0.5)
            pixels = pixels[top : top + self.resolution[0], left : left + self.resolution[1]]
            label_map = label_map[top : top + self.resolution[0], left : left + self.resolution[1]]
            if self.flip and flip:
                pixels, label_map = hflip(pixels, label_map, self.flip_permutation)
        image_t = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 127.5 - 1.0
        return image_t, torch.from_numpy(np.ascontiguousarray(label_map))


def hflip(pixels: np.ndarray, labels: np.ndarray, permutation: tuple[int, ...] | list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an [H, W, 3] image and [H, W] label map; left/right classes swap via ``permutation``."""
    pixels = pixels[:, ::-1]
    labels = labels[:, ::-1]
    if permutation is not None:
        labels = np.asarray(permutation, dtype=np.int64)[labels]
    return pixels, labels
