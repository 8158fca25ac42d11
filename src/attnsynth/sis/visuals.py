"""Pictures for people: label-map colouring, image grids and per-class attention overlays."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attnsynth.utils.images import to_uint8


def palette(num_classes: int) -> np.ndarray:
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


def colorize(labels: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """Label map [H, W] → [H, W, 3] uint8 with one colour per class."""
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return palette(num_classes)[labels.astype(np.int64)]


def grid(rows: list[list[np.ndarray]], *, pad: int = 2) -> np.ndarray:
    """Tile rows of equal-size [H, W, 3] uint8 images into one image with ``pad`` white pixels between."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    out = np.full((len(rows) * (height + pad) - pad, columns * (width + pad) - pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * (height + pad) : i * (height + pad) + height, j * (width + pad) : j * (width + pad) + width] = tile
    return out


def strip(images: torch.Tensor) -> np.ndarray:
    """Batch [B, 3, H, W] in [-1, 1] → one row image [H, B·W + pads, 3] uint8."""
    return grid([[to_uint8(image) for image in images]])


def attention_probabilities(logits: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Average the per-layer pre-softmax logits [B, C, h, w] into class probabilities [B, C, H, W].

    Each layer's softmax over classes is upsampled (nearest) to ``size`` and the layers averaged.
    """
    if not logits:
        raise ValueError("no attention maps: the model has no cross-attention (SPADE arch?)")
    probs = [F.interpolate(layer.float().softmax(dim=1), size=size, mode="nearest") for layer in logits]
    return torch.stack(probs).mean(dim=0)


def attention_overlay(image: torch.Tensor, probability: torch.Tensor, *, colour: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """Overlay one class's attention [H, W] in [0, 1] on an image [3, H, W] in [-1, 1] (uint8 [H, W, 3])."""
    base = to_uint8(image).astype(np.float32)
    weight = probability.detach().float().cpu().clamp(0, 1).numpy()[..., None]  # [H, W, 1]
    tint = np.asarray(colour, np.float32)[None, None]
    return np.round(base * (1 - 0.6 * weight) + tint * 0.6 * weight).astype(np.uint8)
