"""Fréchet distance between feature distributions (FID when the features are Inception's).

Reference definition: Heusel et al., "GANs trained by a two time-scale update rule converge to a
local Nash equilibrium", NeurIPS 2017; computed as in ``pytorch-fid``'s
``calculate_frechet_distance``: ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) with Σ the unbiased
(N−1) covariance and the real part of ``scipy.linalg.sqrtm``. The feature extractor is pluggable:
any callable mapping images [B, 3, H, W] in [-1, 1] to features [B, D]. The usual FID network is
the TorchScript Inception-v3 of StyleGAN2-ADA / clean-fid (``pt_inception-2015-12-05*.pth``),
loaded from a local file by :func:`load_inception`; only its numbers are comparable to papers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import scipy.linalg
import torch

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


class FeatureStats:
    """Streaming float64 sum and outer-product sum of features, for mean and covariance."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None  # [D]
        self.outer: torch.Tensor | None = None  # [D, D]

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features [B, D]."""
        features = features.detach().double().cpu().flatten(1)
        if self.total is None:
            self.total = torch.zeros(features.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(features.shape[1], features.shape[1], dtype=torch.float64)
        self.count += features.shape[0]
        self.total += features.sum(0)
        self.outer += features.T @ features

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and unbiased covariance [D, D] (needs at least 2 samples)."""
        if self.count < 2 or self.total is None or self.outer is None:
            raise ValueError(f"FID needs at least 2 feature vectors per side, got {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean.numpy(), cov.numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class FID:
    """Accumulate real and generated images through ``features`` and report their Fréchet distance."""

    def __init__(self, features: FeatureFn) -> None:
        self.features = features
        self.real = FeatureStats()
        self.fake = FeatureStats()

    @torch.no_grad()
    def update(self, images: torch.Tensor, *, real: bool) -> None:
        """Add a batch of images [B, 3, H, W] in [-1, 1] to the real or the generated side."""
        (self.real if real else self.fake).update(self.features(images))

    def compute(self) -> float:
        """FID between everything added so far."""
        return frechet_distance(*self.real.mean_cov(), *self.fake.mean_cov())


class InceptionFeatures:
    """Pool3 features [B, 2048] of the standard TorchScript FID Inception-v3, from a local file."""

    def __init__(self, path: str | Path, *, device: torch.device | str = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--inception-weights {path} does not exist (expected the TorchScript pt_inception-2015-12-05*.pth)")
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as error:
            raise ValueError(f"--inception-weights {path} is not a TorchScript Inception file: {str(error).splitlines()[0]}") from None
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → the network's uint8-range input → features."""
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(self.device, torch.uint8)
        return self.module(pixels, return_features=True)


def load_inception(path: str | Path, *, device: torch.device | str = "cpu") -> InceptionFeatures:
    """Load the FID Inception network from a local TorchScript file (no download)."""
    return InceptionFeatures(path, device=device)
