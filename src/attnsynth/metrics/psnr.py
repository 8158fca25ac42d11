"""Peak signal-to-noise ratio.

Reference definition: PSNR = 10·log10(MAX² / MSE), MAX = the data range, as in
``skimage.metrics.peak_signal_noise_ratio`` and the SEAN / CA²-SIS evaluation scripts. The MSE is
taken per image over all channels and pixels; identical images give +inf.
"""

from __future__ import annotations

import torch


def psnr(image: torch.Tensor, target: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB between two [B, C, H, W] batches (default range [-1, 1], i.e. 2).

    Returns a float64 tensor [B]; +inf where the images are identical.
    """
    if image.shape != target.shape or image.ndim != 4:
        raise ValueError(f"psnr expects two [B, C, H, W] tensors of equal shape, got {tuple(image.shape)} and {tuple(target.shape)}")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    diff = image.detach().double() - target.detach().double()
    mse = diff.pow(2).flatten(1).mean(dim=1)  # [B]
    return 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 → +inf
