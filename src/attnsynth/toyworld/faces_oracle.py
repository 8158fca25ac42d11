"""Oracles for toy faces: read per-class styles and the global illumination back from an image.

* ``per_class_style_error`` / ``style_error`` — how far each class in an image is from the styles
  of a record, after removing an illumination fitted to the image itself.
* ``global_consistency`` — whether one illumination explains all classes (no record needed).
* ``per_class_transfer`` / ``transfer_accuracy`` — after a per-class style transfer, whether each
  class shows the style it should (reference for transferred classes, original for the rest).

All work on uint8 RGB images [H, W, 3] and label maps [H, W] in CelebAMask-HQ ids; they accept
any image of matching size (e.g. a generator's output), not only rendered scenes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from attnsynth.data.labelsets import CELEBAMASK_HQ
from attnsynth.toyworld.faces_draw import albedo, pixel_grid, quantize
from attnsynth.toyworld.faces_record import ClassStyle, FaceRecord

NUM_CLASSES = CELEBAMASK_HQ.num_classes
MIN_INTERIOR = 8  # a class's statistics use its interior pixels when it has at least this many
CONSISTENCY_MIN_PIXELS = 24  # classes smaller than this are left out of global_consistency
CONSISTENCY_NOISE = 0.02  # log-intensity noise floor σ of global_consistency (τ_c = σ² · pixels)
DISTINCT_STYLES = 0.02  # transfer_accuracy skips classes whose two candidate styles are closer than this
_DARK, _BRIGHT = 2, 253  # pixels with a channel outside (2, 253) are treated as clipped


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate an (image, labels) pair → (linear image [N, 3] float, labels [H, W] intp)."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an H×W×3 uint8 array, got shape {image.shape} dtype {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image size {image.shape[:2]}")
    if labels.shape[0] != labels.shape[1]:
        raise ValueError(f"toy-face oracles need square images, got {labels.shape}")
    if labels.size == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"label values must be in [0, {NUM_CLASSES - 1}], got {labels.min()}..{labels.max()}")
    return image.reshape(-1, 3).astype(np.float64) / 255.0, labels.astype(np.intp)


def _resolve_classes(classes: Iterable[int] | str | None) -> set[int] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        return set(CELEBAMASK_HQ.resolve(classes))
    chosen = {int(c) for c in classes}
    bad = sorted(c for c in chosen if not 0 <= c < NUM_CLASSES)
    if bad:
        raise ValueError(f"classes {bad} are out of range; expected ids in [0, {NUM_CLASSES - 1}]")
    return chosen


def _interior(labels: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels whose 4 neighbours (inside the image) share their label."""
    same = np.ones(labels.shape, dtype=bool)
    same[1:, :] &= labels[1:, :] == labels[:-1, :]
    same[:-1, :] &= labels[:-1, :] == labels[1:, :]
    same[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    same[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    return same


def _unclipped(linear: np.ndarray) -> np.ndarray:
    """[N] bool: no channel at the 8-bit floor or ceiling."""
    return ((linear > _DARK / 255.0) & (linear < _BRIGHT / 255.0)).all(axis=1)


def _basis(resolution: int) -> np.ndarray:
    """[N, 6] polynomial basis 1, x, y, x², xy, y² of the log shading at pixel centres."""
    x, y = pixel_grid(resolution)
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _light_basis(resolution: int) -> np.ndarray:
    """[N, 4] basis 1, x, y, x² + y² of the renderer's light family (linear + isotropic fall-off)."""
    x, y = pixel_grid(resolution)
    return np.stack([np.ones_like(x), x, y, x * x + y * y], axis=1)


def _fit_mask(linear: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pixels used to fit the light: class interiors that are not clipped (fallbacks if too few)."""
    mask = _interior(labels).ravel() & _unclipped(linear)
    if mask.sum() < 12:
        mask = _unclipped(linear)
    if mask.sum() < 12:
        mask = np.ones(len(linear), dtype=bool)
    return mask


# --------------------------------------------------------------------------------------------
# Illumination fit
# --------------------------------------------------------------------------------------------


def fit_light(
    image: np.ndarray, labels: np.ndarray, styles: tuple[ClassStyle, ...], *, leave_out: bool = False, iterations: int = 6,
) -> np.ndarray:
    """Estimate the light field [H, W, 3] that turns ``styles`` painted on ``labels`` into ``image``.

    Model (the renderer's light family): ``log image = log albedo + β_k + α·(x, y, x² + y²)`` — a
    grey shading (direction + isotropic fall-off) shared by all channels plus a per-channel cast
    β_k — fitted by iteratively reweighted least squares on unclipped class-interior pixels. Every
    class weighs the same (classes under 16 pixels less) times a Cauchy weight of its mean
    residual, and each pixel a Cauchy weight of its own residual, so a big background does not
    outvote the face and classes whose style differs from ``styles`` hardly bend the light. The
    renderer's illumination is recovered exactly.
    ``leave_out=True``: each pixel gets the light refitted without its own class (same weights), so
    a class that is wrong cannot bend the light to hide its own error — what the oracles use.
    """
    linear, lab = _check(image, labels)
    resolution = lab.shape[0]
    ratio = np.log(np.maximum(linear, 0.5 / 255.0)) - np.log(np.maximum(albedo(styles, lab).reshape(-1, 3), 1e-4))
    grey = ratio.mean(axis=1)  # [N]
    deviation = ratio - grey[:, None]  # [N, 3]: per-channel cast, up to its mean
    mask = _fit_mask(linear, lab)
    basis = _light_basis(resolution)
    b, g, d = basis[mask], grey[mask], deviation[mask]
    cls = lab.ravel()[mask]
    count = np.bincount(cls, minlength=NUM_CLASSES).astype(np.float64)
    size_weight = 1.0 / np.maximum(count, 16.0)  # per pixel → every class (≥ 16 px) totals 1
    class_weight = np.ones(NUM_CLASSES)
    pixel_weight = np.ones(len(g))
    for _ in range(iterations):
        weights = size_weight[cls] * class_weight[cls] * pixel_weight
        wb = b * weights[:, None]
        coef = _ridge_solve(wb.T @ b, wb.T @ g)  # weighted normal equations [6]
        cast = (weights[:, None] * d).sum(axis=0) / weights.sum()
        residual = np.sqrt((g - b @ coef) ** 2 + ((d - cast) ** 2).sum(axis=1))
        pixel_scale = max(2.5 * 1.4826 * float(np.median(residual)), 0.02)
        pixel_weight = 1.0 / (1.0 + (residual / pixel_scale) ** 2)
        class_residual = np.bincount(cls, residual, NUM_CLASSES) / np.maximum(count, 1.0)
        class_scale = max(2.0 * float(np.median(class_residual[count > 0])), 0.03)
        class_weight = 1.0 / (1.0 + (class_residual / class_scale) ** 2)
    coefs = np.tile(coef, (NUM_CLASSES, 1))  # [C, 4] light used for each class's pixels
    casts = np.tile(cast, (NUM_CLASSES, 1))  # [C, 3]
    if leave_out:
        weights = size_weight[cls] * class_weight[cls] * pixel_weight
        wb = b * weights[:, None]
        gram = wb.T @ b
        moment, wsum, dsum = wb.T @ g, weights.sum(), weights @ d
        for c in np.flatnonzero(count):
            idx = cls == c
            rest = wsum - weights[idx].sum()
            if rest <= 1e-9 * wsum:
                continue  # a single class: nothing to leave out
            coefs[c] = _ridge_solve(gram - wb[idx].T @ b[idx], moment - wb[idx].T @ g[idx])
            casts[c] = (dsum - weights[idx] @ d[idx]) / rest
    flat = lab.ravel()
    log_light = (basis * coefs[flat]).sum(axis=1)[:, None] + casts[flat]  # [N, 3]
    return np.exp(log_light).reshape(resolution, resolution, 3)


# --------------------------------------------------------------------------------------------
# Per-class statistics
# --------------------------------------------------------------------------------------------


def _stat_pixels(labels: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels each class's statistics use — its interior if large enough, else all."""
    interior = _interior(labels)
    counts = np.bincount(labels[interior], minlength=NUM_CLASSES)
    return interior | (counts[labels] < MIN_INTERIOR)


def _class_stats(linear: np.ndarray, labels: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Per-class style statistics [C, 5]: mean R, G, B, relative contrast, relative roughness.

    Contrast = std/mean of the luminance (channel mean) over the class's pixels; roughness = mean
    absolute luminance step between 4-adjacent pixels of the class, over its mean — a frequency
    proxy. Both are phase-free, so a texture drawn at another offset matches.
    """
    h, w = labels.shape
    flat = labels.ravel()[use.ravel()]
    pix = linear[use.ravel()]
    count = np.maximum(np.bincount(flat, minlength=NUM_CLASSES), 1).astype(np.float64)
    mean = np.stack([np.bincount(flat, pix[:, k], NUM_CLASSES) for k in range(3)], axis=1) / count[:, None]
    lum = pix.mean(axis=1)
    m = np.maximum(mean.mean(axis=1), 1e-6)
    second = np.bincount(flat, lum * lum, NUM_CLASSES) / count
    contrast = np.sqrt(np.maximum(second - m * m, 0.0)) / m
    lum2d = linear.mean(axis=1).reshape(h, w)
    steps = np.zeros(NUM_CLASSES)
    pairs = np.zeros(NUM_CLASSES)
    for a, b, la, lb, ua, ub in (
        (lum2d[:, :-1], lum2d[:, 1:], labels[:, :-1], labels[:, 1:], use[:, :-1], use[:, 1:]),
        (lum2d[:-1, :], lum2d[1:, :], labels[:-1, :], labels[1:, :], use[:-1, :], use[1:, :]),
    ):
        keep = (la == lb) & ua & ub
        steps += np.bincount(la[keep], np.abs(a - b)[keep], NUM_CLASSES)
        pairs += np.bincount(la[keep], minlength=NUM_CLASSES)
    rough = steps / np.maximum(pairs, 1) / m
    return np.concatenate([mean, contrast[:, None], rough[:, None]], axis=1)


def _stat_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[C] style distance: Euclidean RGB mean distance + |Δ contrast| + |Δ roughness|."""
    return np.linalg.norm(a[:, :3] - b[:, :3], axis=1) + np.abs(a[:, 3] - b[:, 3]) + np.abs(a[:, 4] - b[:, 4])


def _expected(styles: tuple[ClassStyle, ...], labels: np.ndarray, light: np.ndarray) -> np.ndarray:
    """[N, 3] what ``styles`` look like on ``labels`` under ``light`` after 8-bit rounding, light removed."""
    lit = quantize(albedo(styles, labels) * light).astype(np.float64) / 255.0
    return (lit / light).reshape(-1, 3)


def _present(labels: np.ndarray, classes: set[int] | None, min_pixels: int) -> list[int]:
    counts = np.bincount(labels.ravel(), minlength=NUM_CLASSES)
    return [c for c in range(NUM_CLASSES) if counts[c] >= min_pixels and (classes is None or c in classes)]


# --------------------------------------------------------------------------------------------
# Public oracles
# --------------------------------------------------------------------------------------------


def per_class_style_error(
    image: np.ndarray, labels: np.ndarray, record: FaceRecord, classes: Iterable[int] | str | None = None,
    *, min_pixels: int = 4,
) -> dict[int, float]:
    """Style error of each class present in ``labels`` (≥ ``min_pixels``) against ``record``.

    1. Fit the light field of ``image`` given ``record``'s styles on ``labels`` (``fit_light``).
    2. Divide it out of the image (observed albedo D) and out of the record's styles rendered
       under that same light and 8-bit rounding (expected albedo E).
    3. Per class: ‖mean_rgb(D) − mean_rgb(E)‖₂ + |contrast(D) − contrast(E)| + |roughness(D) − roughness(E)|
       (see ``_class_stats``; colours in linear [0, 1] units). ``classes`` (ids or a label-set
       spec such as ``"eyes"``) restricts the classes reported.
    """
    linear, lab = _check(image, labels)
    chosen = _resolve_classes(classes)
    light = fit_light(image, lab, record.styles, leave_out=True)
    use = _stat_pixels(lab)
    observed = _class_stats(linear / light.reshape(-1, 3), lab, use)
    expected = _class_stats(_expected(record.styles, lab, light), lab, use)
    distance = _stat_distance(observed, expected)
    return {c: float(distance[c]) for c in _present(lab, chosen, min_pixels)}


def style_error(
    image: np.ndarray, labels: np.ndarray, record: FaceRecord, classes: Iterable[int] | str | None = None,
    *, min_pixels: int = 4,
) -> float:
    """Mean of ``per_class_style_error`` over the classes present (each class weighs the same).

    ≈ 0 for a scene scored against its own record, also after relighting it; lower = better.
    """
    errors = per_class_style_error(image, labels, record, classes, min_pixels=min_pixels)
    if not errors:
        raise ValueError(f"none of the classes {classes!r} covers >= {min_pixels} pixels of the label map")
    return float(np.mean(list(errors.values())))


def global_consistency(image: np.ndarray, labels: np.ndarray) -> float:
    """How well one smooth illumination explains every class, in [0, 1]; higher = more consistent.

    Works on y = channel-mean log intensity of the unclipped interior pixels of each class with at
    least ``CONSISTENCY_MIN_PIXELS`` of them; no record needed. Per class c, with its own constant:
    R0_c = residual of the constant alone; R_joint_c = residual under ONE log-quadratic shading
    (x, y, x², xy, y²) fitted jointly to all classes; R_sep_c = residual under the class's own
    linear shading (x, y), capped at R_joint_c. Then
    ``κ_c = clip((R0_c − R_joint_c + τ_c) / (R0_c − R_sep_c + τ_c), 0, 1)``, τ_c = σ²·n_c with
    σ = ``CONSISTENCY_NOISE``: the share of the class's own shading that the shared light accounts
    for (a class lit against the shared light gets 0, a flat class 1). The score is the mean of κ_c
    weighted by √n_c. It sees the spatial part of light only: a class relit with another light
    direction scores low; another colour cast alone cannot be told from another albedo, and a
    texture that looks like a gradient over a small class lowers κ_c a little.
    """
    linear, lab = _check(image, labels)
    resolution = lab.shape[0]
    grey = np.log(np.maximum(linear, 0.5 / 255.0)).mean(axis=1)  # [N]
    mask = _fit_mask(linear, lab)
    flat = lab.ravel()[mask]
    counts = np.bincount(flat, minlength=NUM_CLASSES)
    keep = counts[flat] >= CONSISTENCY_MIN_PIXELS
    flat, g, phi = flat[keep], grey[mask][keep], _basis(resolution)[mask][keep][:, 1:]  # [M], [M], [M, 5]
    if flat.size == 0:
        return 1.0
    classes, flat = np.unique(flat, return_inverse=True)
    onehot = np.zeros((flat.size, len(classes)))  # [M, C]
    onehot[np.arange(flat.size), flat] = 1.0
    n = onehot.sum(axis=0)  # [C]
    s_phi = onehot.T @ phi  # [C, 5]
    s_y = onehot.T @ g  # [C]
    # Within-class centred second moments (Frisch–Waugh: per-class constants projected out).
    s_phiphi = np.einsum("mc,mi,mj->cij", onehot, phi, phi) - np.einsum("ci,cj->cij", s_phi, s_phi) / n[:, None, None]
    s_phiy = onehot.T @ (phi * g[:, None]) - s_phi * (s_y / n)[:, None]  # [C, 5]
    r0 = onehot.T @ (g * g) - s_y * s_y / n  # [C]
    joint = _ridge_solve(s_phiphi.sum(axis=0), s_phiy.sum(axis=0))  # [5] shared light
    r_joint = r0 - 2.0 * s_phiy @ joint + np.einsum("i,cij,j->c", joint, s_phiphi, joint)
    own = np.stack([_ridge_solve(s_phiphi[c, :2, :2], s_phiy[c, :2]) for c in range(len(classes))])  # [C, 2]
    r_sep = np.minimum(r0 - (s_phiy[:, :2] * own).sum(axis=1), r_joint)
    tau = CONSISTENCY_NOISE**2 * n
    kappa = np.clip((r0 - r_joint + tau) / (np.maximum(r0 - r_sep, 0.0) + tau), 0.0, 1.0)
    weight = np.sqrt(n)
    return float((kappa * weight).sum() / weight.sum())


def _ridge_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve a·x = b for a small symmetric PSD ``a`` with a tiny ridge (thin classes are rank-poor)."""
    ridge = 1e-9 * (np.trace(a) + 1e-12)
    return np.linalg.solve(a + ridge * np.eye(len(b)), b)


def per_class_transfer(
    image: np.ndarray, labels: np.ndarray, original: FaceRecord, reference: FaceRecord,
    transferred: Iterable[int] | str, *, min_pixels: int = 4,
) -> dict[int, bool]:
    """For each class present: does it show the style it should after a per-class style transfer?

    Expected style = ``reference``'s for ``transferred`` classes, ``original``'s for the others; the
    alternative is the other record's. The light is fitted once with the expected styles; a class
    is correct when its ``per_class_style_error`` distance to the expected style is smaller than to
    the alternative. Classes whose two candidate styles are closer than ``DISTINCT_STYLES`` (or
    with fewer than ``min_pixels`` pixels) are left out.
    """
    linear, lab = _check(image, labels)
    chosen = _resolve_classes(transferred) or set()
    expected_record = original.with_styles_from(reference, sorted(chosen))
    other_record = reference.with_styles_from(original, sorted(chosen))
    light = fit_light(image, lab, expected_record.styles, leave_out=True)
    use = _stat_pixels(lab)
    observed = _class_stats(linear / light.reshape(-1, 3), lab, use)
    want = _class_stats(_expected(expected_record.styles, lab, light), lab, use)
    other = _class_stats(_expected(other_record.styles, lab, light), lab, use)
    to_want, to_other, apart = _stat_distance(observed, want), _stat_distance(observed, other), _stat_distance(want, other)
    return {c: bool(to_want[c] < to_other[c]) for c in _present(lab, None, min_pixels) if apart[c] >= DISTINCT_STYLES}


def transfer_accuracy(
    image: np.ndarray, labels: np.ndarray, original: FaceRecord, reference: FaceRecord,
    transferred: Iterable[int] | str, *, min_pixels: int = 4,
) -> float:
    """Fraction of classes showing the right style after transferring ``transferred`` from ``reference``.

    1.0 = every scored class is closer to its expected style (reference for transferred classes,
    original for the rest) than to the alternative; see ``per_class_transfer``.
    """
    verdicts = per_class_transfer(image, labels, original, reference, transferred, min_pixels=min_pixels)
    if not verdicts:
        raise ValueError("no class of the label map has distinguishable original/reference styles to score")
    return float(np.mean(list(verdicts.values())))
