"""Mapping network for random styles (StarGAN-v2 style): noise z → one style token per class.

``z ∈ R^16`` → shared MLP (``mapping_shared_layers`` × Linear+ReLU) → per-class heads
(``mapping_head_layers − 1`` × Linear+ReLU, then Linear → D_style, no output squashing) →
``[B, C, D_style]``; classes marked absent get a zero token. This is the authors' `MappingNetwork`
(faithful: 4 shared + 4 head layers, 512 wide, 28,244,224 parameters at 19 classes); their
checkpoints store it inside G as ``noise_encoder.*``. Trained with the generator frozen (hinge GAN +
L_att, optional diversity term).
"""

from __future__ import annotations

import torch
from torch import nn

from attnsynth.sis.configs import SISConfig


class _PerClassLinear(nn.Module):
    """C independent linear maps applied to per-class inputs: [B, C, i] → [B, C, o]."""

    def __init__(self, *, classes: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = in_features ** -0.5
        self.weight = nn.Parameter(torch.empty(classes, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(classes, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bci,cio->bco", x, self.weight) + self.bias


class MappingNetwork(nn.Module):
    """`forward(z [B, latent], present [B, C] bool) -> style tokens [B, C, D_style]` (absent classes zeroed)."""

    def __init__(self, config: SISConfig) -> None:
        super().__init__()
        self.config = config
        hidden, classes = config.mapping_hidden, config.num_classes
        shared: list[nn.Module] = []
        width = config.mapping_latent_dim
        for _ in range(config.mapping_shared_layers):
            shared += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.shared = nn.Sequential(*shared)
        heads: list[nn.Module] = []
        for _ in range(config.mapping_head_layers - 1):
            heads += [_PerClassLinear(classes=classes, in_features=hidden, out_features=hidden), nn.ReLU(inplace=True)]
        heads.append(_PerClassLinear(classes=classes, in_features=hidden, out_features=config.style_dim))
        self.heads = nn.Sequential(*heads)

    def forward(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim], present [B, C] (bool or 0/1) → tokens [B, C, D_style]."""
        latent, classes = self.config.mapping_latent_dim, self.config.num_classes
        if z.ndim != 2 or z.shape[1] != latent:
            raise ValueError(f"z has shape {tuple(z.shape)}; expected [B, {latent}]")
        if present.shape != (z.shape[0], classes):
            raise ValueError(f"present has shape {tuple(present.shape)}; expected [{z.shape[0]}, {classes}]")
        h = self.shared(z).unsqueeze(1).expand(-1, classes, -1)  # [B, C, hidden]
        tokens = self.heads(h)
        return tokens * present.to(tokens.dtype).unsqueeze(-1)
