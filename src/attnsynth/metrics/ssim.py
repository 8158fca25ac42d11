"""Structural similarity (SSIM).

Reference definition: Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error
visibility to structural similarity", IEEE TIP 2004 (their ``ssim_index.m``): an 11×11 Gaussian
window with σ = 1.5, K1 = 0.01, K2 = 0.03, statistics over the *valid* region only (no padding),
population (not sample) covariance, the SSIM map averaged over pixels and then over channels.
This matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, channel_axis=…)`` and torchmetrics' default SSIM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian [size] centred on the middle tap."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of [B, C, H, W], channel by channel."""
    channels = x.shape[1]
    k = window.numel()
    horizontal = window.view(1, 1, 1, k).expand(channels, 1, 1, k)
    vertical = window.view(1, 1, k, 1).expand(channels, 1, k, 1)
    return F.conv2d(F.conv2d(x, horizontal, groups=channels), vertical, groups=channels)


def ssim(
    image: torch.Tensor,
    target: torch.Tensor,
    *,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image mean SSIM between two [B, C, H, W] batches (default range [-1, 1]); float64 [B].

    Identical images give exactly 1. Both sides must be at least ``window_size`` pixels.
    """
    if image.shape != target.shape or image.ndim != 4:
        raise ValueError(f"ssim expects two [B, C, H, W] tensors of equal shape, got {tuple(image.shape)} and {tuple(target.shape)}")
    if min(image.shape[-2:]) < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}×{window_size} pixels, got {tuple(image.shape[-2:])}")
    x = image.detach().double()
    y = target.detach().double()
    window = gaussian_window(window_size, sigma).to(x.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x**2
    var_y = _filter(y * y, window) - mu_y**2
    cov = _filter(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)  # [B]: mean over channels and valid pixels
