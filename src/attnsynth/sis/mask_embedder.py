"""Mask embedder: one-hot mask → one shape token per class, a linear (affine) function of the mask.

Each class map is nearest-resized to a fixed grid (128² for the faithful config; an (gh, gw) grid of
the image's aspect for non-square images), flattened, and mapped by ONE linear layer shared by all
classes: ``z_c = W · vec(resize(m_c)) + b`` → ``[B, C', D_shape]``. Because the map is affine and
per-class, swapping (or convexly interpolating) a class's mask channel swaps (interpolates) exactly
that class's token — the property the shape edits rely on.

With ``drop_background`` the background channel is left out (C' = C − 1): the background is then
only implied by the absence of every other class. On by default in the configs, as in the authors'
CelebA scripts (``--exclude_bg``: 18 shape tokens at 19 classes); ``drop_background=False`` keeps it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskEmbedder(nn.Module):
    """`forward(onehot [B, C, H, W]) -> shape tokens [B, C', D_shape]` with one Linear(gh·gw → D_shape)."""

    def __init__(self, *, num_classes: int = 19, grid: tuple[int, int] = (128, 128), out_dim: int = 256,
                 drop_background: bool = False, background_class: int = 0) -> None:
        super().__init__()
        self.num_classes, self.grid = num_classes, tuple(grid)
        self.drop_background, self.background_class = drop_background, background_class
        self.linear = nn.Linear(self.grid[0] * self.grid[1], out_dim)

    @property
    def kept_classes(self) -> list[int]:
        """Class indices that get a shape token, in token order."""
        return [c for c in range(self.num_classes) if not (self.drop_background and c == self.background_class)]

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        """onehot [B, C, H, W] → shape tokens [B, C', D_shape]."""
        if self.drop_background:
            onehot = onehot[:, self.kept_classes]
        grid = F.interpolate(onehot, size=self.grid, mode="nearest")  # [B, C', gh, gw]
        return self.linear(grid.flatten(2))
