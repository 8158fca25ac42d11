"""SPADE/SEAN-style baseline generator: per-pixel modulation with the mask inside the generator.

This is the conditioning CA²-SIS is contrasted with. Every normalisation layer modulates the
parameter-free-normalised activations per pixel, ``x̂ · (1 + γ) + β``, where

* the **style** part broadcasts each class's style token to the pixels of that class (through the
  mask: ``S[:, :, p] = P · s_{class(p)}``, a per-layer projection P) and convolves that map
  (SEAN's idea), and
* the **mask** part is a small conv net on the resized one-hot mask (SPADE's idea);
``γ = γ_style + γ_mask`` and likewise for β. A pixel can therefore only see its own class's style
(no global statistics), and the mask must be present at every layer. The generator starts from
the resized mask (conv3×3) on the same first grid as CA²-SIS and follows the same stage widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SPADENorm(nn.Module):
    """Instance-normalise x, then modulate per pixel with γ, β from (class style broadcast) + (mask conv)."""

    def __init__(self, *, channels: int, num_classes: int, style_dim: int, hidden: int = 128, style_channels: int = 128) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.mask_shared = nn.Sequential(nn.Conv2d(num_classes, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.mask_gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)
        self.style_proj = nn.Linear(style_dim, style_channels)
        self.style_gamma_beta = nn.Conv2d(style_channels, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x [B, ch, h, w], onehot [B, C, h, w] (already resized), style [B, C, D_style] → [B, ch, h, w]."""
        style_map = torch.einsum("bchw,bcs->bshw", onehot, self.style_proj(style))  # [B, S, h, w]
        modulation = self.mask_gamma_beta(self.mask_shared(onehot)) + self.style_gamma_beta(style_map)
        gamma, beta = modulation.chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class SPADEResBlock(nn.Module):
    """SPADE → LReLU → conv3×3 → SPADE → LReLU → conv3×3, with a SPADE → conv1×1 shortcut on width change."""

    def __init__(self, *, in_channels: int, out_channels: int, num_classes: int, style_dim: int, hidden: int, style_channels: int) -> None:
        super().__init__()
        middle = min(in_channels, out_channels)
        kwargs = dict(num_classes=num_classes, style_dim=style_dim, hidden=hidden, style_channels=style_channels)
        self.norm_0 = SPADENorm(channels=in_channels, **kwargs)
        self.conv_0 = nn.Conv2d(in_channels, middle, 3, padding=1)
        self.norm_1 = SPADENorm(channels=middle, **kwargs)
        self.conv_1 = nn.Conv2d(middle, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.norm_s = SPADENorm(channels=in_channels, **kwargs)
            self.conv_s = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        else:
            self.norm_s = self.conv_s = None

    def forward(self, x: torch.Tensor, onehot: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        skip = x if self.conv_s is None else self.conv_s(self.norm_s(x, onehot, style))
        h = self.conv_0(F.leaky_relu(self.norm_0(x, onehot, style), 0.2))
        h = self.conv_1(F.leaky_relu(self.norm_1(h, onehot, style), 0.2))
        return skip + h


class SPADEGenerator(nn.Module):
    """`forward(onehot [B, C, H, W], style [B, C, D_style]) -> (image [B, 3, H, W], [])` (no attention)."""

    def __init__(self, *, num_classes: int, start_size: tuple[int, int], style_dim: int, base_channels: int = 512,
                 stage_channels: tuple[int, ...] = (256, 128, 64, 32, 32), hidden: int = 128, style_channels: int = 128) -> None:
        super().__init__()
        self.start_size = tuple(start_size)
        self.conv_in = nn.Conv2d(num_classes, base_channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        channels = base_channels
        for out_channels in stage_channels:
            self.blocks.append(SPADEResBlock(in_channels=channels, out_channels=out_channels, num_classes=num_classes,
                                             style_dim=style_dim, hidden=hidden, style_channels=style_channels))
            channels = out_channels
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, onehot: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.conv_in(F.interpolate(onehot, size=self.start_size, mode="nearest"))
        for i, block in enumerate(self.blocks):
            if i:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x, F.interpolate(onehot, size=x.shape[-2:], mode="nearest"), style)
        return torch.tanh(self.conv_out(F.leaky_relu(x, 0.2))), []
