"""Kernel Inception distance (unbiased MMD² with a cubic polynomial kernel).

Reference definition: Bińkowski et al., "Demystifying MMD GANs", ICLR 2018, as computed by
StyleGAN2-ADA's ``metrics/kernel_inception_distance.py``: k(x, y) = (xᵀy / D + 1)³, the unbiased
MMD² estimate averaged over random subsets. Features come from any pluggable extractor.
"""

from __future__ import annotations

import torch


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """KID between feature sets real [N, D] and fake [M, D] (subsets capped at the smaller set)."""
    real = real.detach().double().cpu()
    fake = fake.detach().double().cpu()
    m = min(real.shape[0], fake.shape[0], subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per side, got {real.shape[0]} and {fake.shape[0]}")
    dim = real.shape[1]
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(subsets):
        x = fake[torch.randperm(fake.shape[0], generator=generator)[:m]]
        y = real[torch.randperm(real.shape[0], generator=generator)[:m]]
        a = (x @ x.T / dim + 1) ** 3 + (y @ y.T / dim + 1) ** 3  # [m, m]
        b = (x @ y.T / dim + 1) ** 3
        total += float((a.sum() - a.diagonal().sum()) / (m - 1) - b.sum() * 2 / m) / m
    return total / subsets
