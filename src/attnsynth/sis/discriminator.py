"""Multiscale PatchGAN discriminator on one-hot mask ⊕ image (SPADE/pix2pixHD design).

Scale ``k`` sees the input average-pooled (3×3, stride 2) ``k`` times. Each scale is
conv4×4/2 → LeakyReLU, then ``layers − 1`` × [spectral-norm conv4×4/2 → InstanceNorm → LeakyReLU(0.2)],
then conv4×4/1 → one logit per patch (the authors' `NLayerDiscriminator`: every intermediate conv has
stride 2; receptive field 46 px at 3 layers). Spectral norm is `spectral_norm` below: the legacy
``torch.nn.utils.spectral_norm`` of the authors' code (power iteration v then u), stored in the
parametrization layout (``parametrizations.weight.original`` / ``.0._u`` / ``.0._v``). Every intermediate activation
is returned for the feature-matching loss. Faithful (C = 19, 64 base channels, 3 layers, 2 scales):
1.36 M parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class _SpectralNorm(nn.Module):
    """W / σ(W), σ estimated by one power-iteration step per training forward, in the order of the legacy
    ``torch.nn.utils.spectral_norm`` that the authors' discriminator uses: v ← N(Wᵀu), then u ← N(Wv),
    σ = uᵀWv. (``torch.nn.utils.parametrizations.spectral_norm`` updates u first, so from the same stored u, v
    a training step gives other σ, u, v.) u and v start as normalised Gaussians, without warm-up iterations,
    also as the legacy one. Eval mode uses the stored u, v."""

    def __init__(self, weight: torch.Tensor, *, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        rows, cols = weight.shape[0], weight[0].numel()
        self.register_buffer("_u", F.normalize(weight.new_empty(rows).normal_(0, 1), dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(weight.new_empty(cols).normal_(0, 1), dim=0, eps=eps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)  # [out, in·k·k]
        if self.training:
            with torch.no_grad():  # in place, so DDP replicas and the state dict see the update
                self._v.copy_(F.normalize(matrix.t() @ self._u, dim=0, eps=self.eps))
                self._u.copy_(F.normalize(matrix @ self._v, dim=0, eps=self.eps))
        u, v = self._u.clone(), self._v.clone()
        return weight / torch.dot(u, matrix @ v)


def spectral_norm(conv: nn.Conv2d) -> nn.Conv2d:
    """Register `_SpectralNorm` on ``conv.weight`` (state dict keys ``parametrizations.weight.original/0._u/0._v``)."""
    parametrize.register_parametrization(conv, "weight", _SpectralNorm(conv.weight.detach()))
    return conv


class PatchDiscriminator(nn.Module):
    """One scale: `forward(x [B, C+3, H, W]) -> [feature_1, …, logits [B, 1, h, w]]`."""

    def __init__(self, *, in_channels: int, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        pad = math.ceil((4 - 1) / 2)
        blocks = [nn.Sequential(nn.Conv2d(in_channels, channels, 4, stride=2, padding=pad), nn.LeakyReLU(0.2))]
        width = channels
        for n in range(1, layers):
            out = min(width * 2, 512)
            blocks.append(nn.Sequential(
                spectral_norm(nn.Conv2d(width, out, 4, stride=2, padding=pad, bias=False)),
                nn.InstanceNorm2d(out, affine=False),
                nn.LeakyReLU(0.2),
            ))
            width = out
        blocks.append(nn.Sequential(nn.Conv2d(width, 1, 4, stride=1, padding=pad)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """`forward(image, onehot) -> list (per scale) of lists of features; the last feature is the logits`."""

    def __init__(self, *, num_classes: int, scales: int = 2, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels=num_classes + 3, channels=channels, layers=layers) for _ in range(scales)
        )

    def forward(self, image: torch.Tensor, onehot: torch.Tensor) -> list[list[torch.Tensor]]:
        """image [B, 3, H, W] in [-1, 1], onehot [B, C, H, W] → [[features…, logits] per scale]."""
        x = torch.cat([onehot.to(image.dtype), image], dim=1)
        outputs = []
        for i, discriminator in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs
