"""Geometry on attention maps: centroids, peaks, smoothing, box mass, total variation.

Shared by the SIS and T2I halves and by the visualisations. Every function takes maps shaped
``[..., H, W]`` (any leading batch dimensions), computes in float32, is differentiable with
respect to the maps where that makes sense, and never syncs with the host (no ``.item()``,
no data-dependent Python branching), so it can run inside a guided diffusion step on any device.

Coordinates are pixel indices: ``x`` is the column, ``y`` the row; points are ``(x, y)``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "box_coverage",
    "centroid",
    "coordinate_grid",
    "diagonal",
    "disc_mask",
    "find_peaks",
    "gaussian_kernel",
    "gaussian_smooth",
    "mass_in_box",
    "normalise",
    "total_variation",
]

# A disc holding at most this fraction of its map's total mass counts as empty (see find_peaks):
# far below any disc of a softmax attention map, so only an all-zero disc falls back.
_EMPTY_DISC_FRACTION = 1e-12


def coordinate_grid(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Pixel coordinates ``[H, W, 2]`` holding ``(x, y)`` = (column, row) of every pixel."""
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
    return torch.stack([grid_x, grid_y], dim=-1)


def diagonal(height: int, width: int) -> float:
    """Largest distance between two pixel centres, ``sqrt((H-1)² + (W-1)²)``.

    AI-T2I normalises its aggregation and attribute distances by it (its isolation term uses
    the grid's extent ``sqrt(H² + W²)`` instead, see :func:`attnsynth.t2i.losses.isolation_loss`).
    """
    return math.hypot(height - 1, width - 1)


def normalise(maps: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Scale each ``[H, W]`` map so that it sums to one (a spatial distribution); float32 out."""
    maps = maps.float()
    return maps / maps.sum(dim=(-2, -1), keepdim=True).clamp_min(eps)


def centroid(maps: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Differentiable centre of mass ``c(A) = Σ (x, y)·A / Σ A`` of maps ``[..., H, W]`` → ``[..., 2]``.

    An all-zero map has centroid ``(0, 0)`` (the denominator is clamped at ``eps``).
    """
    maps = maps.float()
    height, width = maps.shape[-2:]
    grid = coordinate_grid(height, width, device=maps.device)  # [H, W, 2]
    mass = maps.sum(dim=(-2, -1)).clamp_min(eps)  # [...]
    weighted = torch.einsum("...hw,hwc->...c", maps, grid)  # [..., 2]
    return weighted / mass.unsqueeze(-1)


def gaussian_kernel(
    kernel_size: int = 3,
    sigma: float = 0.5,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """2-D smoothing kernel ``[k, k]`` of Attend-and-Excite, normalised to sum to one.

    Matches diffusers' ``GaussianSmoothing``: each axis uses ``exp(-((u - μ) / (2σ))²)`` — note
    the ``2σ`` (not ``√2·σ``), so the effective standard deviation is ``√2·σ``.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size!r} is invalid; expected an odd integer >= 1")
    if sigma <= 0:
        raise ValueError(f"sigma={sigma!r} is invalid; expected a positive number")
    coords = torch.arange(kernel_size, dtype=torch.float32)
    mean = (kernel_size - 1) / 2
    # The same expression, in the same order, as diffusers (so results agree to the last bit).
    axis = 1 / (sigma * math.sqrt(2 * math.pi)) * torch.exp(-(((coords - mean) / (2 * sigma)) ** 2))  # [k]
    kernel = axis[:, None] * axis[None, :]
    kernel = kernel / torch.sum(kernel)
    return kernel.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _device_kernel(kernel_size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """The smoothing kernel as a conv weight ``[1, 1, k, k]`` on ``device``, copied there once.

    A blocking host→device copy waits for the device's queue, so it must not run every step.
    """
    return gaussian_kernel(kernel_size, sigma)[None, None].to(device)


def gaussian_smooth(maps: torch.Tensor, kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Smooth maps ``[..., H, W]`` exactly as Attend-and-Excite does; same size out, float32.

    diffusers pads each map by one pixel with ``mode="reflect"`` and convolves with
    :func:`gaussian_kernel`; we pad by ``kernel_size // 2`` (1 for the default 3×3) the same way.
    Reflection needs a side longer than the pad; thinner maps fall back to ``replicate`` padding.
    """
    maps = maps.float()
    *lead, height, width = maps.shape
    pad = kernel_size // 2
    flat = maps.reshape(-1, 1, height, width)  # [N, 1, H, W]
    if pad > 0:
        mode = "reflect" if pad < height and pad < width else "replicate"
        flat = F.pad(flat, (pad, pad, pad, pad), mode=mode)
    out = F.conv2d(flat, _device_kernel(kernel_size, sigma, maps.device))  # [N, 1, H, W]
    return out.reshape(*lead, height, width)


def disc_mask(points: torch.Tensor, height: int, width: int, radius: float) -> torch.Tensor:
    """Boolean open discs ``[..., H, W]``: pixels strictly closer than ``radius`` to ``points [..., 2]`` (x, y).

    Strict ``‖q − p‖² < radius²``, as AI-T2I's ball mask (69 pixels at radius 5, 109 at 6).
    """
    grid = coordinate_grid(height, width, device=points.device)  # [H, W, 2]
    offsets = grid - points.float()[..., None, None, :]  # [..., H, W, 2]
    return (offsets**2).sum(dim=-1) < radius**2


def find_peaks(
    maps: torch.Tensor, n_peaks: int = 3, radius: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Find ``n_peaks`` blobs in maps ``[..., H, W]`` by AI-T2I's non-maximum suppression.

    Exactly the authors' ``find_top_regions``: R ← A; for j = 1..n: ``p_j`` = argmax R (first
    index on ties), disc j = ``{q : ‖q − p_j‖² < radius²}`` (strict, :func:`disc_mask`),
    ``g_j`` = centroid of the **original** map A over the **whole** disc j (pixels that earlier
    discs took count again), then R ← R·(1 − disc j). Returns ``(peak_xy, disc_centroids)``, both
    ``[..., n_peaks, 2]`` as ``(x, y)``; ``peak_xy`` carries no gradient, ``g_j`` is differentiable.

    One generalisation, for degenerate maps only: a search after every pixel is already
    suppressed (possible on maps smaller than the discs) or a disc with no mass (its centroid
    would be 0/0) reports ``p_1`` and ``g_1``, so it adds no spurious distance to a loss. Neither
    can happen for three discs of radius 5–6 on SD's positive 16×16 maps, where this is the
    authors' function. No host syncs: argmax and masks only.
    """
    if n_peaks < 1:
        raise ValueError(f"n_peaks={n_peaks!r} is invalid; expected an integer >= 1")
    if radius < 0:
        raise ValueError(f"radius={radius!r} is invalid; expected a number >= 0")
    maps = maps.float()
    *lead, height, width = maps.shape
    flat = maps.reshape(-1, height, width)  # [N, H, W]
    grid = coordinate_grid(height, width, device=maps.device)  # [H, W, 2]
    empty_below = (_EMPTY_DISC_FRACTION * flat.detach().sum(dim=(-2, -1))).clamp_min(1e-30)  # [N]
    alive = torch.ones_like(flat, dtype=torch.bool)  # pixels no disc has taken yet
    detached = flat.detach()

    peaks, centroids = [], []
    for _ in range(n_peaks):
        # masked_fill(-inf) = the authors' R·(1 − disc) for positive maps (argmax never lands on a taken pixel)
        remaining = detached.masked_fill(~alive, float("-inf"))  # [N, H, W]
        index = remaining.flatten(1).argmax(dim=1)  # [N]
        peak = torch.stack([index % width, index // width], dim=-1).float()  # [N, 2] (x, y)
        disc = disc_mask(peak, height, width, radius)  # [N, H, W], the whole disc
        inside = flat * disc  # [N, H, W]
        mass = inside.sum(dim=(-2, -1))  # [N]
        g = torch.einsum("nhw,hwc->nc", inside, grid) / mass.clamp_min(1e-30).unsqueeze(-1)  # [N, 2]
        if peaks:  # a degenerate search repeats the first peak (a Python check on the loop index only)
            exhausted = ~alive.flatten(1).any(dim=1)  # [N]
            empty = ((mass.detach() <= empty_below) | exhausted).unsqueeze(-1)  # [N, 1]
            peak = torch.where(empty, peaks[0], peak)
            g = torch.where(empty, centroids[0], g)
        peaks.append(peak)
        centroids.append(g)
        alive = alive & ~disc

    peak_xy = torch.stack(peaks, dim=-2).reshape(*lead, n_peaks, 2)
    disc_centroids = torch.stack(centroids, dim=-2).reshape(*lead, n_peaks, 2)
    return peak_xy, disc_centroids


def box_coverage(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fraction of each pixel cell covered by ``boxes [..., 4]`` → ``[..., H, W]`` in [0, 1].

    Boxes are ``(x0, y0, x1, y1)`` in [0, 1] image coordinates; pixel (row i, column j) is the
    cell ``[j/W, (j+1)/W] × [i/H, (i+1)/H]``. Soft coverage keeps boxes that are smaller than a
    map pixel (or not aligned with the grid) meaningful and differentiable.
    """
    boxes = boxes.float()
    x0, y0, x1, y1 = boxes.unbind(dim=-1)  # [...] each
    xs = torch.arange(width + 1, device=boxes.device, dtype=torch.float32) / width  # cell edges
    ys = torch.arange(height + 1, device=boxes.device, dtype=torch.float32) / height
    cover_x = (torch.minimum(x1[..., None], xs[1:]) - torch.maximum(x0[..., None], xs[:-1])).clamp_min(0) * width
    cover_y = (torch.minimum(y1[..., None], ys[1:]) - torch.maximum(y0[..., None], ys[:-1])).clamp_min(0) * height
    return cover_y[..., :, None] * cover_x[..., None, :]  # [..., H, W]


def mass_in_box(maps: torch.Tensor, boxes: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Fraction of each map's mass inside its box: ``Σ A·cover(box) / Σ A`` → ``[...]`` in [0, 1].

    ``maps [..., H, W]`` and ``boxes [..., 4]`` broadcast over the leading dimensions.
    """
    maps = maps.float()
    height, width = maps.shape[-2:]
    cover = box_coverage(boxes, height, width)  # [..., H, W]
    inside = (maps * cover).sum(dim=(-2, -1))
    return inside / maps.sum(dim=(-2, -1)).clamp_min(eps)


def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation ``mean|A[i+1,j] − A[i,j]| + mean|A[i,j+1] − A[i,j]|`` → ``[...]``."""
    maps = maps.float()
    total = maps.new_zeros(maps.shape[:-2])
    if maps.shape[-2] > 1:  # a shape check, not a value check
        total = total + (maps[..., 1:, :] - maps[..., :-1, :]).abs().mean(dim=(-2, -1))
    if maps.shape[-1] > 1:
        total = total + (maps[..., :, 1:] - maps[..., :, :-1]).abs().mean(dim=(-2, -1))
    return total
