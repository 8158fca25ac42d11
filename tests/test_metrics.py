"""Metrics against hand computations and an independent scipy implementation."""

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from attnsynth.metrics import FID, MeanIoU, frechet_distance, kernel_distance, mean_iou, psnr, ssim


def test_psnr_identical_is_inf_and_constant_offset_matches_formula():
    a = torch.zeros(2, 3, 8, 8)
    assert torch.isinf(psnr(a, a, data_range=1.0)).all()
    # offset 0.1 on a range of 1 → MSE 0.01 → 10·log10(1/0.01) = 20 dB
    assert psnr(a + 0.1, a, data_range=1.0) == pytest.approx(torch.tensor([20.0, 20.0], dtype=torch.float64))
    # default range [-1, 1] (2): offset 0.2 → 10·log10(4/0.04) = 20 dB
    assert float(psnr(a + 0.2, a)[0]) == pytest.approx(20.0)


def test_ssim_identical_is_one():
    x = torch.rand(2, 3, 20, 24) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_ssim_of_constant_images_matches_hand_formula():
    c1, c2 = 0.3, 0.7  # on [0, 1]: variances and covariance vanish → SSIM = (2ab + C1)/(a² + b² + C1)
    a, b = torch.full((1, 1, 16, 16), c1, dtype=torch.float64), torch.full((1, 1, 16, 16), c2, dtype=torch.float64)
    k1 = (0.01 * 1.0) ** 2
    expected = (2 * c1 * c2 + k1) / (c1**2 + c2**2 + k1)
    assert float(ssim(a, b, data_range=1.0)) == pytest.approx(expected, rel=1e-9)


def test_ssim_matches_independent_scipy_gaussian_filter():
    rng = np.random.default_rng(0)
    x = rng.random((3, 24, 30))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)

    def blur(v):  # 11 taps (radius int(3.5·1.5 + 0.5) = 5), valid region = crop 5 px per side
        return scipy.ndimage.gaussian_filter(v, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

    values = []
    for cx, cy in zip(x, y):
        mx, my = blur(cx), blur(cy)
        vx, vy, cov = blur(cx * cx) - mx**2, blur(cy * cy) - my**2, blur(cx * cy) - mx * my
        C1, C2 = 0.01**2, 0.03**2
        values.append((((2 * mx * my + C1) * (2 * cov + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))).mean())
    ours = ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None], data_range=1.0)
    assert float(ours) == pytest.approx(float(np.mean(values)), abs=1e-10)
    assert float(ours) < 0.9  # the noise is visible


def test_ssim_rejects_too_small_images():
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_frechet_distance_of_shifted_gaussians_is_squared_shift():
    sigma = np.diag([1.0, 2.0, 0.5])
    mu = np.array([0.0, 1.0, 2.0])
    shift = np.array([3.0, 0.0, -4.0])
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(25.0, abs=1e-6)
    # different isotropic scales: Tr(s1 + s2 - 2 sqrt(s1 s2)) = d·(a - b)² for a², b² variances
    assert frechet_distance(mu, np.eye(3) * 4.0, mu, np.eye(3)) == pytest.approx(3.0, abs=1e-6)


def test_fid_with_pluggable_features_is_zero_for_the_same_set_and_grows_with_shift():
    images = torch.rand(64, 3, 4, 4) * 2 - 1
    features = lambda x: x.flatten(1)[:, :5]  # noqa: E731 — a toy feature extractor
    same = FID(features)
    same.update(images, real=True)
    same.update(images, real=False)
    assert same.compute() == pytest.approx(0.0, abs=1e-6)
    shifted = FID(features)
    shifted.update(images, real=True)
    shifted.update(images + 0.5, real=False)
    assert shifted.compute() == pytest.approx(5 * 0.25, rel=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=generator), torch.randn(400, 8, generator=generator)
    same = kernel_distance(x, y, subsets=5, subset_size=200)
    small, large = (kernel_distance(x, y + s, subsets=5, subset_size=200) for s in (0.3, 1.0))
    assert abs(same) < 0.05 * small < small < large


def test_miou_hand_computed():
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2]])
    # class 0: TP 3, FP 0, FN 1 → 3/4; class 1: TP 3, FP 1, FN 1 → 3/5; class 2: TP 0, FP 1 → 0
    assert mean_iou(pred, truth, num_classes=4) == pytest.approx((0.75 + 0.6 + 0.0) / 3)
    metric = MeanIoU(num_classes=4)
    metric.update(pred, truth)
    assert math.isnan(float(metric.per_class()[3]))


def test_miou_ignore_index_and_range_error():
    truth = torch.tensor([[0, 255], [1, 1]])
    pred = torch.tensor([[0, 1], [1, 1]])
    assert mean_iou(pred, truth, num_classes=2, ignore_index=255) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mean_iou(pred + 5, truth, num_classes=2, ignore_index=255)
