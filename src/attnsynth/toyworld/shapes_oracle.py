"""Oracle for the shapes world: find coloured shapes in any image and check a :class:`Spec` against them.

Built to read a text-to-image model's imperfect outputs, not only clean renders:

Detection (:func:`detect`)
    1. Light Gaussian smoothing (σ = ``smooth`` px) against pixel noise.
    2. Foreground gate: chroma ``max(R,G,B) − min(R,G,B) ≥ gate``. Backgrounds are light and
       barely saturated (chroma ≤ ~0.1), every palette colour has chroma ≥ 0.55, and blending
       an object with a grey-ish background keeps its HSV hue, so blurred rims do not change hue.
    3. Connected components (8-connected). A component whose well-saturated pixels fall into two
       hue groups at least ``HUE_SPLIT_DEG`` apart (two touching objects of different colours)
       is split between them.
    4. Colour: mean RGB of the part's most saturated pixels (≥ 0.75 × its 90th-percentile
       chroma, so texture stripes/dots in a darker or lighter tone are left out) → OKLab (a
       perceptual space) → the palette entry with the nearest hue angle; lightness and chroma
       are ignored, which tolerates shading, washed-out tones and slightly wrong colours.
    5. Coverage by unmixing: ``alpha = ((p − bg) · (c − bg)) / |c − bg|²`` with ``c`` that colour
       and ``bg`` the median of the unclaimed pixels around the component; it uses luminance as
       well as chroma, so outlines survive chroma blur (e.g. JPEG). ``alpha ≥ 0.45`` cuts the
       part into blobs (blobs under ``min_area`` of the image are ignored); each blob keeps its
       soft rim (2 px).
    6. Shape, by analysis through synthesis: for every shape, the box that gives the blob's
       centroid and x/y variances is computed from the shape's known moments, the shape is drawn
       anti-aliased in that box on the blob's pixel grid (and smoothed like the image), and its
       soft IoU with ``alpha`` is taken. The best shape wins and its fitted box is the
       detection's box; the confidence is its IoU times min(r, 1/r), r being the box's stretch
       against the shape's own proportions (two merged blobs do not pass for one wide square).
       Blobs larger than ``FIT_SIZE`` px are block-averaged down first. Everything is in the
       blob's own units, so it works at any scale, and tolerates stretched or tilted shapes.
       The candidates are the training shapes (``SHAPES``) unless ``shapes`` says otherwise;
       :func:`score` adds the novel shapes (``NOVEL_SHAPES``, e.g. the heart) its spec names,
       so results on specs without them are exactly those of the training shapes alone.

Scoring (:func:`score`)
    Each subject with count c gives c slots. Detections with ``confidence ≥ min_confidence``
    are assigned to slots twice with the Hungarian algorithm (``linear_sum_assignment``), each
    detection used at most once, ties broken towards confident detections:

    * strict: a slot accepts a detection of its shape and colour (any colour if the subject has
      none) → ``satisfied``, ``colour_binding``, ``all_present`` and the boxes for relations;
    * loose: shape and colour cost 0, shape alone 0.5 → ``present`` (shape found c times in any
      colour) and ``extra_objects`` (detections no slot took).

    Relations use the centres of the strictly matched boxes (False when a side is missing):
    "left of"/"right of"/"above"/"below" need the offset to point the right way along the
    dominant axis (|dx| > |dy| for left/right, as in T2I-CompBench); "next to" needs the boxes
    within ``NEXT_TO_GAP`` of each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from attnsynth.toyworld.shapes_draw import ASPECT, box_coverage, shape_coverage
from attnsynth.toyworld.shapes_grammar import ALL_SHAPES, COLOURS, SHAPES, Box, Spec

FIT_SIZE = 40  # blobs are compared with drawn shapes at most this many pixels across
HUE_SPLIT_DEG = 15.0  # two hue groups this far apart in one component are two objects
NEXT_TO_GAP = 0.2  # "next to": boxes at most this far apart (fraction of the image side)
_BIG = 1e6

_PALETTE_RGB = np.array(list(COLOURS.values()), dtype=np.float64) / 255.0  # [K, 3]
_NAMES = list(COLOURS)


def srgb_to_oklab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (last axis 3) → OKLab (L, a, b), a perceptual space whose hue angle stays put
    when a colour is darkened, washed out or blended with white (unlike CIELAB's blues)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_lms = np.array([[0.4122214708, 0.5363325363, 0.0514459929], [0.2119034982, 0.6806995451, 0.1073969566], [0.0883024619, 0.2817188376, 0.6299787005]])
    to_lab = np.array([[0.2104542553, 0.7936177850, -0.0040720468], [1.9779984951, -2.4285922050, 0.4505937099], [0.0259040371, 0.7827717662, -0.8086757660]])
    return np.cbrt(linear @ to_lms.T) @ to_lab.T


def oklab_hue(rgb: np.ndarray) -> np.ndarray:
    """OKLCh hue angle in degrees [0, 360) of sRGB colours in [0, 1]."""
    lab = srgb_to_oklab(rgb)
    return np.rad2deg(np.arctan2(lab[..., 2], lab[..., 1])) % 360.0


def _hue_deg(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of [..., 3] RGB (0 where the pixel is grey)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = np.maximum(mx - mn, 1e-9)
    h = np.where(mx == r, ((g - b) / c) % 6.0, np.where(mx == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    return (h * 60.0) % 360.0


_PALETTE_OKHUE = oklab_hue(_PALETTE_RGB)  # [K]
_PALETTE_HUE = _hue_deg(_PALETTE_RGB)  # [K], HSV hue (for splitting components)


def _hue_diff(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    d = np.abs(np.asarray(a) - np.asarray(b)) % 360.0
    return np.minimum(d, 360.0 - d)


def _circular_mean(deg: np.ndarray) -> float:
    rad = np.deg2rad(deg)
    return float(np.rad2deg(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean())) % 360.0)


@dataclass(frozen=True)
class Detection:
    """One found object: ``box`` (x0, y0, x1, y1) and ``area`` as fractions of the image."""

    shape: str
    colour: str
    box: Box
    area: float
    confidence: float  # shape fit in [0, 1]: soft IoU with the drawn shape × proportion penalty
    colour_distance: float  # OKLCh hue gap (degrees) to the named colour

    @property
    def centre(self) -> tuple[float, float]:
        """Box centre (x, y) in [0, 1]."""
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "box": list(self.box)}


def as_float_image(image: Any) -> np.ndarray:
    """[H, W, 3] uint8 (0–255) or float (0–1) array, or a PIL image → float64 [H, W, 3] in [0, 1]."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 8:
        raise ValueError(f"image must be an H×W×3 RGB array with H, W >= 8, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"image must be uint8 (0-255) or float (0-1), got dtype {array.dtype}")
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def classify_colour(rgb: Sequence[float]) -> tuple[str, float]:
    """Palette colour whose OKLCh hue is nearest to that of an RGB triple in [0, 1], and the hue gap (°).

    Hue alone decides: the gate already ensured the colour is saturated, and shading, washing
    out and blending with the background change lightness and chroma, not perceived hue.
    """
    gap = _hue_diff(oklab_hue(np.asarray(rgb, dtype=np.float64)), _PALETTE_OKHUE)
    k = int(np.argmin(gap))
    return _NAMES[k], float(gap[k])


def _shape_moments(shape: str, size: int = 128) -> tuple[float, float, float, float]:
    """Centroid offset from the box centre and variance along x and y, in units of the box side."""
    cover = shape_coverage(shape, size)
    grid = (np.arange(size) + 0.5) / size
    mass = cover.sum()
    mx, my = (cover.sum(0) * grid).sum() / mass, (cover.sum(1) * grid).sum() / mass
    vx = (cover.sum(0) * (grid - mx) ** 2).sum() / mass
    vy = (cover.sum(1) * (grid - my) ** 2).sum() / mass
    return mx - 0.5, my - 0.5, vx, vy


_MOMENTS = {s: _shape_moments(s) for s in ALL_SHAPES}


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] matrix applying a 1-D Gaussian blur (zero outside) along one axis; identity for σ = 0."""
    if sigma <= 0:
        return np.eye(n)
    radius = int(np.ceil(4 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.subtract.outer(np.arange(n), np.arange(n))  # [n, n]
    return np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0)


def _check_shapes(shapes: Sequence[str] | None) -> tuple[str, ...]:
    """The candidate shapes for detection: ``SHAPES`` for None, else known names in the given order."""
    if shapes is None:
        return SHAPES
    shapes = tuple(shapes)
    unknown = [s for s in shapes if s not in ALL_SHAPES]
    if not shapes or unknown:
        raise ValueError(f"shapes must be a non-empty list from {', '.join(ALL_SHAPES)}, got {list(shapes)!r}")
    return shapes


def fit_shape(alpha: np.ndarray, *, smooth: float = 0.0, shapes: Sequence[str] | None = None) -> tuple[str, float, Box]:
    """Best shape for a soft coverage map holding one object: ``(shape, confidence, box in pixels)``.

    The shape with the best soft IoU wins; confidence = that IoU × min(r, 1/r), r being how much
    its fitted box is stretched against the shape's own proportions (so two merged blobs do not
    pass for one wide square).
    ``alpha`` [h, w] in [0, 1] should leave a margin of ≥ 2 px around the object; ``smooth`` is
    the Gaussian σ (px) already applied to it, which the drawn candidates receive too.
    ``shapes`` are the candidates (None: the training shapes ``SHAPES``).
    """
    candidates = _check_shapes(shapes)
    factor = max(1, int(np.ceil(max(alpha.shape) / FIT_SIZE)))
    if factor > 1:  # block-average big blobs down to at most FIT_SIZE px
        ph, pw = -alpha.shape[0] % factor, -alpha.shape[1] % factor
        padded = np.pad(alpha, ((0, ph), (0, pw)))
        alpha = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    h, w = alpha.shape
    mass = alpha.sum()
    if mass <= 0:
        raise ValueError("alpha must hold a non-empty blob")
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    cx, cy = (alpha.sum(0) * xs).sum() / mass, (alpha.sum(1) * ys).sum() / mass
    # Pixel-centre sums miss 1/12 px² of variance per axis; the smoothing added sigma² (removed below).
    vx = (alpha.sum(0) * (xs - cx) ** 2).sum() / mass + 1 / 12
    vy = (alpha.sum(1) * (ys - cy) ** 2).sum() / mass + 1 / 12
    sigma = smooth / factor
    blur_rows, blur_cols = _blur_matrix(h, sigma), _blur_matrix(w, sigma)  # [h, h], [w, w]
    best: tuple[float, str, Box] = (-1.0, candidates[0], (0.0, 0.0, 1.0, 1.0))
    for shape in candidates:
        ox, oy, kx, ky = _MOMENTS[shape]
        bw, bh = np.sqrt(max(vx - sigma**2, 0.05) / kx), np.sqrt(max(vy - sigma**2, 0.05) / ky)
        x0, y0 = cx - ox * bw - bw / 2, cy - oy * bh - bh / 2
        box = (float(x0), float(y0), float(x0 + bw), float(y0 + bh))
        model = blur_rows @ box_coverage(shape, box, h, w) @ blur_cols.T  # smoothed like the image
        iou = float(np.minimum(model, alpha).sum() / max(np.maximum(model, alpha).sum(), 1e-9))
        if iou > best[0]:
            best = (iou, shape, box)
    iou, shape, box = best
    stretch = ((box[2] - box[0]) / (box[3] - box[1])) / ASPECT[shape]
    confidence = iou * min(stretch, 1.0 / stretch)  # shapes are drawn with fixed proportions
    return shape, confidence, tuple(float(c * factor) for c in box)  # type: ignore[return-value]


def _split_by_hue(comp: np.ndarray, hue: np.ndarray, chroma: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    """Split one component into per-colour parts when it holds two clearly different hues."""
    core = comp & (chroma >= 0.5 * np.percentile(chroma[comp], 90))
    hues = hue[core]
    classes = np.argmin(_hue_diff(hues[:, None], _PALETTE_HUE[None, :]), axis=1)
    counts = np.bincount(classes, minlength=len(_PALETTE_HUE))
    first, second = np.argsort(-counts, kind="stable")[:2]
    if counts[second] < max(min_pixels, 0.2 * len(hues)):
        return [comp]
    mean_a, mean_b = _circular_mean(hues[classes == first]), _circular_mean(hues[classes == second])
    if _hue_diff(mean_a, mean_b) < HUE_SPLIT_DEG:
        return [comp]
    nearer_a = _hue_diff(hue, mean_a) <= _hue_diff(hue, mean_b)
    return [comp & nearer_a, comp & ~nearer_a]


def detect(
    image: Any, *, min_area: float = 0.003, gate: float = 0.2, smooth: float = 0.6, shapes: Sequence[str] | None = None
) -> list[Detection]:
    """Find coloured shapes in ``image`` (steps in the module docstring); sorted by box (top, left).

    ``shapes``: the shapes a blob may be read as (None: the training shapes ``SHAPES``; pass
    ``ALL_SHAPES`` to include the novel ones).
    """
    candidates = _check_shapes(shapes)
    rgb = as_float_image(image)  # [H, W, 3]
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"min_area must be in [0, 1), got {min_area}")
    if not 0.0 < gate < 1.0:
        raise ValueError(f"gate must be in (0, 1), got {gate}")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    height, width = rgb.shape[:2]
    if smooth > 0:
        rgb = ndimage.gaussian_filter(rgb, sigma=(smooth, smooth, 0), mode="nearest")
    chroma = rgb.max(-1) - rgb.min(-1)  # [H, W]
    hue = _hue_deg(rgb)  # [H, W]
    foreground = chroma >= gate
    background = np.median(rgb[~foreground], axis=0) if (~foreground).any() else np.ones(3)  # [3]
    min_pixels = max(4, int(np.ceil(min_area * height * width)))
    eight = np.ones((3, 3), dtype=bool)
    labels, _ = ndimage.label(foreground, structure=eight)
    found: list[Detection] = []
    for index, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        if (labels[ys, xs] == index).sum() < min_pixels:
            continue
        # Window with a margin for the soft rims; its unclaimed pixels give the local background.
        ys = slice(max(ys.start - 4, 0), min(ys.stop + 4, height))
        xs = slice(max(xs.start - 4, 0), min(xs.stop + 4, width))
        lab, c_win, h_win, rgb_win = labels[ys, xs], chroma[ys, xs], hue[ys, xs], rgb[ys, xs]
        comp = lab == index
        local_bg = np.median(rgb_win[lab == 0], axis=0) if (lab == 0).sum() >= 8 else background
        parts = [p for p in _split_by_hue(comp, h_win, c_win, min_pixels) if p.sum() >= min_pixels]
        for k, part in enumerate(parts):
            pix_chroma = c_win[part]
            core = part & (c_win >= 0.75 * np.percentile(pix_chroma, 90))
            colour_rgb = rgb_win[core].mean(axis=0)  # [3]
            colour, distance = classify_colour(colour_rgb)
            # Coverage by unmixing: each pixel = alpha * object colour + (1 - alpha) * background.
            direction = colour_rgb - local_bg
            alpha = np.clip((rgb_win - local_bg) @ direction / max(float(direction @ direction), 1e-6), 0.0, 1.0)  # [h, w]
            others = np.zeros_like(part)
            for j, other in enumerate(parts):
                if j != k:
                    others |= other
            region = ndimage.binary_dilation(part, iterations=2) & ((lab == 0) | comp) & ~others
            alpha = np.where(region, alpha, 0.0)
            blobs, n_blobs = ndimage.label(alpha >= 0.45, structure=eight)
            for b in range(1, n_blobs + 1):
                blob = blobs == b
                if blob.sum() < min_pixels:
                    continue
                rim = ndimage.binary_dilation(blob, iterations=2) & ((blobs == 0) | blob)
                soft = np.where(rim, alpha, 0.0)
                shape, confidence, (bx0, by0, bx1, by1) = fit_shape(soft, smooth=smooth, shapes=candidates)
                box = (
                    float(np.clip((xs.start + bx0) / width, 0, 1)),
                    float(np.clip((ys.start + by0) / height, 0, 1)),
                    float(np.clip((xs.start + bx1) / width, 0, 1)),
                    float(np.clip((ys.start + by1) / height, 0, 1)),
                )
                found.append(Detection(shape, colour, box, float(soft.sum()) / (height * width), confidence, distance))
    return sorted(found, key=lambda d: (round(d.box[1], 6), round(d.box[0], 6), d.shape, d.colour))


def relation_satisfied(a: Box, b: Box, relation: str) -> bool:
    """Whether box ``a`` stands in ``relation`` to box ``b`` (rules in the module docstring)."""
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if relation == "left of":
        return dx > 0 and abs(dx) > abs(dy)
    if relation == "right of":
        return dx < 0 and abs(dx) > abs(dy)
    if relation == "above":
        return dy > 0 and abs(dy) > abs(dx)
    if relation == "below":
        return dy < 0 and abs(dy) > abs(dx)
    if relation == "next to":
        gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3], 0.0)
        return gap <= NEXT_TO_GAP
    raise ValueError(f"unknown relation {relation!r}")


def _assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost matching of rows (slots) to columns (detections); pairs costing _BIG are no match."""
    if cost.size == 0:
        return []
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] < _BIG / 2]


def shapes_for(spec: Spec) -> tuple[str, ...]:
    """Candidate shapes for checking ``spec``: the training shapes, plus the novel shapes it names."""
    named = {o.shape for o in spec.objects}
    return SHAPES + tuple(s for s in ALL_SHAPES if s not in SHAPES and s in named)


def score(image: Any, spec: Spec, *, detections: Sequence[Detection] | None = None, min_confidence: float = 0.5) -> dict[str, Any]:
    """Check ``spec`` against what :func:`detect` finds in ``image`` (matching rules in the module docstring).

    Returns ``all_present``, per subject ``present`` / ``satisfied`` / ``colour_binding`` (None
    for colourless subjects) / ``found_counts`` / ``count_correct``, per relation
    ``relations_correct``, the rates ``present_rate``, ``colour_binding_rate`` (over coloured
    subjects whose shape is present; None if there are none) and ``relations_rate``,
    ``extra_objects``, ``accuracy`` (satisfied subjects + correct relations over their number),
    per object the ``matched_boxes`` of its strict matches, and the ``detections`` used (as dicts).
    Pass ``detections`` to skip detection. Detection reads blobs as the training shapes plus any
    novel shape the spec names (:func:`shapes_for`).
    """
    if not isinstance(spec, Spec):
        raise ValueError(f"spec must be a shapes Spec (e.g. from spec_from_prompt), got {type(spec).__name__}")
    dets = list(detect(image, shapes=shapes_for(spec)) if detections is None else detections)
    cands = [d for d in dets if d.confidence >= min_confidence]
    slots = [k for k, obj in enumerate(spec.objects) for _ in range(obj.count)]
    conf = np.array([d.confidence for d in cands])[None, :] if cands else np.zeros((1, 0))
    shape_ok = np.array([[d.shape == spec.objects[k].shape for d in cands] for k in slots], dtype=bool).reshape(len(slots), len(cands))
    colour_ok = np.array(
        [[spec.objects[k].colour is None or d.colour == spec.objects[k].colour for d in cands] for k in slots], dtype=bool
    ).reshape(len(slots), len(cands))
    strict = _assign(np.where(shape_ok & colour_ok, -1e-3 * conf, _BIG))
    loose = _assign(np.where(shape_ok, np.where(colour_ok, 0.0, 0.5) - 1e-3 * conf, _BIG))

    n = len(spec.objects)
    strict_hits: list[list[int]] = [[] for _ in range(n)]
    for r, c in strict:
        strict_hits[slots[r]].append(c)
    loose_hits = [0] * n
    for r, _ in loose:
        loose_hits[slots[r]] += 1
    satisfied = [len(strict_hits[k]) == o.count for k, o in enumerate(spec.objects)]
    present = [loose_hits[k] == o.count for k, o in enumerate(spec.objects)]
    binding = [None if o.colour is None else satisfied[k] for k, o in enumerate(spec.objects)]
    found_counts = [int((shape_ok[slots.index(k)] & colour_ok[slots.index(k)]).sum()) for k in range(n)]
    relations_correct = []
    for i, rel, j in spec.relations:
        ok = bool(strict_hits[i] and strict_hits[j]) and relation_satisfied(cands[strict_hits[i][0]].box, cands[strict_hits[j][0]].box, rel)
        relations_correct.append(bool(ok))
    bound = [satisfied[k] for k, o in enumerate(spec.objects) if o.colour is not None and present[k]]
    used = {c for _, c in loose} | {c for _, c in strict}
    return {
        "all_present": all(satisfied),
        "satisfied": satisfied,
        "present": present,
        "present_rate": float(np.mean(present)),
        "colour_binding": binding,
        "colour_binding_rate": float(np.mean(bound)) if bound else None,
        "found_counts": found_counts,
        "count_correct": [found_counts[k] == o.count for k, o in enumerate(spec.objects)],
        "relations_correct": relations_correct,
        "relations_rate": float(np.mean(relations_correct)) if relations_correct else None,
        "extra_objects": len(cands) - len(used),
        "matched_boxes": [[list(cands[c].box) for c in strict_hits[k]] for k in range(n)],
        "accuracy": float((sum(satisfied) + sum(relations_correct)) / (n + len(relations_correct))),
        "detections": [d.to_dict() for d in cands],
    }
