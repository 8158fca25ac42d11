"""Label-map noise for robustness tests: boundary jitter plus random blobs.

``perturb_labels(labels, level)`` changes about ``level`` of the pixels: half of that budget by
*boundary jitter* (pixels next to another class take a random neighbour's label, pass after pass,
so boundaries fray and drift) and half by *random blobs* (discs of a class already in the map,
dropped at random places). CA²-SIS reports robustness to mask noise without a protocol; this is
ours, exact and seeded, so levels are comparable across models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _boundary(labels: torch.Tensor) -> torch.Tensor:
    """[H, W] bool: pixels with a 4-neighbour of another class."""
    padded = F.pad(labels[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    centre = padded[1:-1, 1:-1]
    return (padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre) | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre)


def perturb_labels(labels: torch.Tensor, level: float, *, generator: torch.Generator | None = None, max_passes: int = 50) -> torch.Tensor:
    """A noisy copy of one label map [H, W] (long) with about ``level`` of its pixels changed."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"noise level must be in [0, 1], got {level}")
    if labels.ndim != 2:
        raise ValueError(f"perturb_labels takes one label map [H, W], got shape {tuple(labels.shape)}")
    generator = generator or torch.Generator().manual_seed(0)
    original = labels.cpu().long()
    noisy = original.clone()
    height, width = noisy.shape
    budget = level * height * width
    offsets = torch.tensor([(-1, 0), (1, 0), (0, -1), (0, 1)])
    # 1. boundary jitter: each pass, a random share of boundary pixels copies a random 4-neighbour
    for _ in range(max_passes):
        if (noisy != original).sum() >= budget / 2:
            break
        ys, xs = _boundary(noisy).nonzero(as_tuple=True)
        if ys.numel() == 0:
            break
        pick = torch.rand(ys.numel(), generator=generator) < 0.5
        ys, xs = ys[pick], xs[pick]
        step = offsets[torch.randint(0, 4, (ys.numel(),), generator=generator)]
        ny = (ys + step[:, 0]).clamp(0, height - 1)
        nx = (xs + step[:, 1]).clamp(0, width - 1)
        noisy[ys, xs] = noisy[ny, nx]
    # 2. random blobs of classes present in the map, until the budget is spent
    classes = original.unique()
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    max_radius = max(1.0, 0.08 * min(height, width))
    for _ in range(10_000):
        if (noisy != original).sum() >= budget:
            break
        cy = float(torch.rand((), generator=generator)) * height
        cx = float(torch.rand((), generator=generator)) * width
        radius = 1.0 + float(torch.rand((), generator=generator)) * (max_radius - 1.0)
        value = classes[torch.randint(0, classes.numel(), (), generator=generator)]
        noisy[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return noisy.to(labels.device)
