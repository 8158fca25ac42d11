"""Tests for attnsynth.attention.geometry: centroids, A&E smoothing, NMS peaks, box mass, TV."""

import ast
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from attnsynth.attention import geometry
from attnsynth.attention.geometry import (
    box_coverage,
    centroid,
    diagonal,
    disc_mask,
    find_peaks,
    gaussian_kernel,
    gaussian_smooth,
    mass_in_box,
    normalise,
    total_variation,
)


def blob(height, width, x, y, sigma=1.0, amplitude=1.0):
    """A Gaussian bump centred at pixel (x, y)."""
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    return amplitude * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))


def test_centroid_of_delta_and_uniform_and_batched():
    maps = torch.zeros(2, 8, 10)
    maps[0, 5, 3] = 2.0  # row 5, column 3 -> (x, y) = (3, 5)
    maps[1] = 1.0
    c = centroid(maps)
    assert c.shape == (2, 2)
    torch.testing.assert_close(c[0], torch.tensor([3.0, 5.0]))
    torch.testing.assert_close(c[1], torch.tensor([4.5, 3.5]))
    assert centroid(maps[1:].half()).dtype == torch.float32


def test_centroid_is_differentiable():
    maps = torch.rand(3, 6, 6, requires_grad=True)
    centroid(maps)[:, 0].sum().backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0


def test_diagonal_is_distance_between_corner_pixels():
    assert diagonal(16, 16) == pytest.approx(math.sqrt(2) * 15)
    assert diagonal(1, 5) == pytest.approx(4.0)


def test_normalise_sums_to_one():
    out = normalise(torch.rand(2, 3, 5, 4) * 7)
    torch.testing.assert_close(out.sum(dim=(-2, -1)), torch.ones(2, 3))


def diffusers_smoothing():
    module = pytest.importorskip(
        "diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite"
    )
    return module.GaussianSmoothing


@pytest.mark.parametrize("kernel_size,sigma", [(3, 0.5), (5, 1.0)])
def test_gaussian_smooth_matches_diffusers_attend_and_excite(kernel_size, sigma):
    smoothing = diffusers_smoothing()(kernel_size=kernel_size, sigma=sigma)
    maps = torch.rand(2, 3, 16, 12)
    ours = gaussian_smooth(maps, kernel_size=kernel_size, sigma=sigma)
    assert ours.shape == maps.shape
    pad = kernel_size // 2
    for b in range(2):
        for k in range(3):
            padded = F.pad(maps[b, k][None, None], (pad, pad, pad, pad), mode="reflect")
            reference = smoothing(padded)[0, 0]
            torch.testing.assert_close(ours[b, k], reference, rtol=0, atol=1e-6)  # conv algorithm ulps
    torch.testing.assert_close(gaussian_kernel(kernel_size, sigma), smoothing.weight[0, 0], rtol=0, atol=0)


def test_gaussian_smooth_keeps_mass_of_interior_blob_and_handles_thin_maps():
    maps = blob(12, 12, 6, 6, sigma=1.0)
    torch.testing.assert_close(gaussian_smooth(maps).sum(), maps.sum(), rtol=1e-3, atol=0)
    assert gaussian_smooth(maps).max() < maps.max()  # it does blur
    assert gaussian_smooth(torch.rand(1, 7)).shape == (1, 7)  # reflect impossible -> replicate


def test_gaussian_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        gaussian_kernel(4)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(3, 0.0)


def three_blobs():
    return (
        blob(16, 16, 3, 3, amplitude=1.0)
        + blob(16, 16, 12, 4, amplitude=0.7)
        + blob(16, 16, 7, 13, amplitude=0.4)
    )


def test_find_peaks_returns_blobs_in_order_of_height():
    peaks, centres = find_peaks(three_blobs(), n_peaks=3, radius=3)
    assert peaks.shape == centres.shape == (3, 2)
    torch.testing.assert_close(peaks, torch.tensor([[3.0, 3.0], [12.0, 4.0], [7.0, 13.0]]))
    torch.testing.assert_close(centres, peaks, atol=0.05, rtol=0)  # symmetric blobs


def test_find_peaks_is_batched_and_differentiable():
    a = three_blobs()
    b = torch.roll(a, shifts=(2, 5), dims=(0, 1))
    maps = torch.stack([a, b])[:, None].requires_grad_(True)  # [2, 1, 16, 16]
    peaks, centres = find_peaks(maps, n_peaks=3, radius=3)
    assert peaks.shape == (2, 1, 3, 2) and not peaks.requires_grad
    for i, single in enumerate([a, b]):
        p, c = find_peaks(single, n_peaks=3, radius=3)
        torch.testing.assert_close(peaks[i, 0], p)
        torch.testing.assert_close(centres[i, 0], c)
    centres[..., 1, :].sum().backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0


def test_find_peaks_zeroes_each_disc_before_the_next_search():
    # One wide blob: the second peak must lie outside the first (open) disc, not next to the maximum.
    maps = blob(16, 16, 8, 8, sigma=3.0)
    peaks, _ = find_peaks(maps, n_peaks=2, radius=4)
    assert torch.linalg.norm(peaks[1] - peaks[0]) >= 4


def test_find_peaks_centroid_uses_the_original_map_over_the_whole_disc():
    # AI-T2I: g_j is the centroid of the ORIGINAL map over all of disc j, pixels that disc 1
    # already took included (not only the not-yet-taken ones).
    torch.manual_seed(0)
    maps = blob(16, 16, 8, 8, sigma=3.0).double() + 0.01 * torch.rand(16, 16, dtype=torch.float64)  # one wide blob
    peaks, centres = find_peaks(maps, n_peaks=3, radius=5)
    grid = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="xy"), dim=-1)  # (x, y)
    remaining = maps.clone()
    for j in range(3):
        index = int(remaining.argmax())
        peak = torch.tensor([index % 16, index // 16], dtype=torch.float32)
        disc = ((grid - peak) ** 2).sum(-1) < 25  # strict
        expected = (grid * (maps * disc)[..., None]).sum((0, 1)) / (maps * disc).sum()
        torch.testing.assert_close(peaks[j], peak)
        torch.testing.assert_close(centres[j], expected.float(), atol=1e-5, rtol=0)
        remaining = remaining * ~disc
    second_disc = disc_mask(peaks[1], 16, 16, 5)
    assert (second_disc & disc_mask(peaks[0], 16, 16, 5)).any()  # the discs overlap here: the case that matters


def test_find_peaks_exhausted_map_repeats_the_first_peak():
    maps = torch.zeros(6, 6)
    maps[2, 4] = 1.0
    peaks, centres = find_peaks(maps, n_peaks=3, radius=1)
    torch.testing.assert_close(peaks, torch.tensor([[4.0, 2.0]] * 3))
    torch.testing.assert_close(centres, torch.tensor([[4.0, 2.0]] * 3))


def test_find_peaks_after_every_pixel_is_taken_repeats_the_first_peak():
    # A map smaller than the disc: disc 1 takes every pixel, so searches 2 and 3 have nothing left
    # (the authors' code would place a disc at pixel (0, 0); attnsynth repeats p_1 / g_1).
    torch.manual_seed(0)
    maps = torch.rand(4, 4) + 0.1
    peaks, centres = find_peaks(maps, n_peaks=3, radius=6)
    torch.testing.assert_close(peaks, peaks[:1].expand(3, 2))
    torch.testing.assert_close(centres, centres[:1].expand(3, 2))
    torch.testing.assert_close(centres[0], centroid(maps))


def test_find_peaks_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_peaks"):
        find_peaks(torch.rand(4, 4), n_peaks=0)
    with pytest.raises(ValueError, match="radius"):
        find_peaks(torch.rand(4, 4), radius=-1)


def test_disc_mask_counts_pixels_strictly_within_radius():
    mask = disc_mask(torch.tensor([5.0, 5.0]), 11, 11, radius=1.0)
    assert mask.sum() == 1 and mask[5, 5] and not mask[4, 5]  # open disc: distance 1 is outside
    mask = disc_mask(torch.tensor([5.0, 5.0]), 11, 11, radius=1.5)
    assert mask.sum() == 9 and mask[4, 4]
    centre = torch.tensor([8.0, 8.0])
    assert int(disc_mask(centre, 16, 16, 5.0).sum()) == 69  # AI-T2I's aggregation disc
    assert int(disc_mask(centre, 16, 16, 6.0).sum()) == 109  # its attribute disc


def test_box_coverage_full_half_and_subpixel_boxes():
    assert torch.equal(box_coverage(torch.tensor([0.0, 0.0, 1.0, 1.0]), 4, 4), torch.ones(4, 4))
    half = box_coverage(torch.tensor([0.0, 0.0, 0.5, 1.0]), 4, 4)
    assert torch.equal(half[:, :2], torch.ones(4, 2)) and torch.equal(half[:, 2:], torch.zeros(4, 2))
    small = box_coverage(torch.tensor([0.30, 0.30, 0.40, 0.45]), 4, 4)
    torch.testing.assert_close(small.sum(), torch.tensor(0.10 * 0.15 * 16))


def test_mass_in_box_fraction():
    uniform = torch.ones(2, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(mass_in_box(uniform, boxes), torch.tensor([0.5, 1.0]))
    inside = blob(8, 8, 1, 1, sigma=0.3)
    assert mass_in_box(inside, torch.tensor([0.0, 0.0, 0.5, 0.5])) > 0.99


def test_total_variation_constant_and_checkerboard():
    assert total_variation(torch.full((5, 5), 3.0)) == 0
    checker = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2
    torch.testing.assert_close(total_variation(checker.float()), torch.tensor(2.0))
    assert total_variation(torch.rand(3, 1, 4)).shape == (3,)


def host_sync_calls(module):
    """Names of attribute calls in a module's code (not its docstrings) that sync with the host."""
    tree = ast.parse(inspect.getsource(module))
    banned = {"item", "tolist", "nonzero", "cpu", "numpy", "argwhere"}
    return [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in banned
    ]


def test_geometry_source_has_no_host_syncs():
    assert host_sync_calls(geometry) == []
