"""Image conversions shared by the CLI, demos and metrics."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] float tensor (C×H×W or B×C×H×W, first item taken) → H×W×3 uint8 array."""
    if isinstance(image, torch.Tensor):
        if image.ndim == 4:
            image = image[0]
        image = image.detach().float().cpu().clamp(-1, 1).permute(1, 2, 0).numpy()
        return np.round((image + 1.0) * 127.5).astype(np.uint8)
    return np.asarray(image, dtype=np.uint8)


def from_uint8(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 array → 3×H×W float tensor in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return tensor / 127.5 - 1.0


def parse_resolution(text: str | int) -> tuple[int, int]:
    """'256' → (256, 256); 'HxW' such as '256x512' → (256, 512) (height first, as in torch)."""
    if isinstance(text, int):
        return text, text
    parts = str(text).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"resolution {text!r} is not an integer or HxW (e.g. 256 or 256x512)") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"resolution {text!r} must be a positive integer or HxW (e.g. 256 or 256x512)")
    return values[0], values[1]


def label_palette(num_classes: int) -> np.ndarray:
    """[num_classes, 3] uint8 colours, the PASCAL VOC bit-interleaving scheme (0 = black)."""
    colours = np.zeros((num_classes, 3), np.uint8)
    for index in range(num_classes):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[index] = (r, g, b)
    return colours


def colorize_labels(labels: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """Label map [H, W] → [H, W, 3] uint8 with one colour per class."""
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return label_palette(num_classes)[labels.astype(np.int64)]
