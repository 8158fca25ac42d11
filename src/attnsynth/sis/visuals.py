"""Pictures for people: image grids and per-class attention overlays (label colours: ``utils.images``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attnsynth.utils.images import to_uint8


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


def heatmap(probability: torch.Tensor) -> np.ndarray:
    """One class's attention [H, W] → uint8 [H, W, 3] in a black-red-yellow-white scale, scaled to its own maximum.

    Softmax attention over C classes is often far below 1 for a small class; scaled to its maximum
    its layout shows (the caption should say the maximum).
    """
    p = probability.detach().float().cpu()
    p = (p / p.max().clamp_min(1e-8)).numpy()  # [H, W] in [0, 1]
    rgb = np.stack([np.clip(3 * p, 0, 1), np.clip(3 * p - 1, 0, 1), np.clip(3 * p - 2, 0, 1)], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def attention_overlay(image: torch.Tensor, probability: torch.Tensor, *, colour: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """Overlay one class's attention [H, W] in [0, 1] on an image [3, H, W] in [-1, 1] (uint8 [H, W, 3])."""
    base = to_uint8(image).astype(np.float32)
    weight = probability.detach().float().cpu().clamp(0, 1).numpy()[..., None]  # [H, W, 1]
    tint = np.asarray(colour, np.float32)[None, None]
    return np.round(base * (1 - 0.6 * weight) + tint * 0.6 * weight).astype(np.uint8)


def attention_overlays(images: torch.Tensor, logits: list[torch.Tensor], class_ids: list[int], class_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """File name → overlay of each class's attention on each output image (``[k_]<id>_<name>.png``)."""
    probs = attention_probabilities(logits, tuple(images.shape[-2:]))  # [N, C, H, W]
    out = {}
    for k in range(images.shape[0]):
        prefix = f"{k}_" if images.shape[0] > 1 else ""
        for c in class_ids:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in class_names[c])
            out[f"{prefix}{c:02d}_{safe}.png"] = attention_overlay(images[k], probs[k, c])
    return out
