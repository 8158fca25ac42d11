"""Figures of subject attention maps over the denoising steps (guided vs unguided), drawn with PIL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from attnsynth.t2i.losses import group_maps
from attnsynth.t2i.subjects import SubjectGroup

__all__ = ["attention_steps_figure", "heatmap"]

# Piecewise-linear colour map (black → purple → orange → pale yellow), like matplotlib's "magma".
_STOPS = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float64)


def heatmap(values: np.ndarray) -> np.ndarray:
    """Map an ``[h, w]`` array to RGB uint8 ``[h, w, 3]``, normalised to its own min..max."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min()
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    position = scaled * (len(_STOPS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(_STOPS) - 2)
    frac = (position - low)[..., None]
    return np.round(_STOPS[low] * (1 - frac) + _STOPS[low + 1] * frac).astype(np.uint8)


def _steps_to_show(num_steps: int, columns: int) -> list[int]:
    """Up to ``columns`` step indices spread evenly from the first to the last step."""
    if num_steps <= columns:
        return list(range(num_steps))
    return sorted({round(i * (num_steps - 1) / (columns - 1)) for i in range(columns)})


def attention_steps_figure(
    runs: Mapping[str, tuple[np.ndarray, torch.Tensor]],
    groups: Sequence[SubjectGroup],
    *,
    columns: int = 8,
    cell: int = 64,
    gamma: float = 0.5,
    overlay: float = 0.4,
) -> np.ndarray:
    """One row per (run, subject): the run's final image, then the subject's map at selected steps.

    ``runs``: ``{label: (image uint8 [H, W, 3], maps [steps, h, w, T])}`` for one image each,
    e.g. ``{"guided": ..., "unguided": ...}``. A subject's map is the sum of its tokens' maps,
    each cell normalised to its own range after ``value ** gamma`` (0.5 by default: sharp maps, whose
    mass sits in a few cells, would otherwise show one bright cell and black elsewhere; 1 = linear).
    Cells are upsampled bilinearly and drawn over the run's image at weight ``overlay`` (0: the map
    alone), so a reader sees which object a subject's attention sits on. Returns an RGB uint8 array.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not 0.0 <= overlay < 1.0:
        raise ValueError(f"overlay must be in [0, 1), got {overlay}")
    if not runs or not groups:
        raise ValueError("attention_steps_figure needs at least one run and one subject group")
    num_steps = next(iter(runs.values()))[1].shape[0]
    steps = _steps_to_show(num_steps, columns)
    label_width, header = 150, 16
    rows = len(runs) * len(groups)
    width = label_width + cell * (1 + len(steps))
    canvas = Image.new("RGB", (width, header + rows * cell), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_width + 4, 2), "image", fill="black")
    for c, step in enumerate(steps):
        draw.text((label_width + cell * (1 + c) + 4, 2), f"step {step}", fill="black")
    row = 0
    for label, (image, maps) in runs.items():
        subject_maps = group_maps(maps.float(), list(groups))  # [steps, K, h, w]
        thumbnail = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((cell, cell), Image.BILINEAR)
        backdrop = overlay * np.asarray(thumbnail, dtype=np.float64)  # [cell, cell, 3]
        for k, group in enumerate(groups):
            top = header + row * cell
            draw.text((4, top + cell // 2 - 6), f"{label}: {group.name}"[:26], fill="black")
            if k == 0:
                canvas.paste(thumbnail, (label_width, top))
            for c, step in enumerate(steps):
                values = subject_maps[step, k].clamp_min(0).numpy() ** gamma
                tile = np.asarray(Image.fromarray(heatmap(values)).resize((cell, cell), Image.BILINEAR), dtype=np.float64)
                tile = Image.fromarray(np.round(backdrop + (1 - overlay) * tile).astype(np.uint8))
                canvas.paste(tile, (label_width + cell * (1 + c), top))
            row += 1
    return np.asarray(canvas)
