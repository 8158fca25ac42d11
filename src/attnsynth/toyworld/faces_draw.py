"""Rasterise a ``FaceRecord``: geometry → label map, styles → albedo, illumination → shading.

Every shape, texture and light is a closed-form function of continuous image coordinates
(x, y ∈ [-1, 1], y down) evaluated at pixel centres, so one record gives the same scene at any
resolution (pixel j of an R² image sits at (j + 0.5)/R·2 − 1). All work is vectorised numpy on
flat pixel arrays; the coordinate grids are cached per resolution.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from attnsynth.data.labelsets import CELEBAMASK_HQ
from attnsynth.toyworld.faces_record import ClassStyle, FaceGeometry, FaceRecord, Illumination

MIN_RESOLUTION = 32
MAX_RESOLUTION = 512

_ID = {name: i for i, name in enumerate(CELEBAMASK_HQ.class_names)}


def check_resolution(resolution: int) -> int:
    """Validate a square side length; ValueError unless an int in [32, 512]."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"resolution must be an integer in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}")
    if not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution}")
    return int(resolution)


def _clip(a: np.ndarray, low: float, high: float) -> np.ndarray:
    """``np.clip`` without its Python-level overhead (it dominates on 64² arrays)."""
    return np.minimum(np.maximum(a, low), high)


@functools.lru_cache(maxsize=8)
def pixel_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat x and y coordinates of the pixel centres of an R×R image (row-major), read-only."""
    c = (np.arange(resolution, dtype=np.float64) + 0.5) * (2.0 / resolution) - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    x, y = x.ravel(), y.ravel()  # [R*R]
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


# --------------------------------------------------------------------------------------------
# Geometry → labels
# --------------------------------------------------------------------------------------------


def rasterize(geometry: FaceGeometry, resolution: int) -> np.ndarray:
    """Label map (R×R uint8, CelebAMask-HQ ids) of ``geometry``, painted back to front."""
    g = geometry
    x, y = pixel_grid(resolution)
    labels = np.zeros(x.shape, dtype=np.uint8)

    # Face frame: u right, v down, unit = face half-width, rotated with the head.
    theta = math.radians(g.rotation)
    ct, st = math.cos(theta), math.sin(theta)
    dx, dy = x - g.cx, y - g.cy
    u = (ct * dx + st * dy) / g.scale
    v = (-st * dx + ct * dy) / g.scale
    au = np.abs(u)
    h = g.aspect

    def paint(mask: np.ndarray, name: str) -> None:
        labels[mask] = _ID[name]

    # Torso frame: unrotated, anchored below the neck base (image units).
    base_u, base_v = 0.0, h + 0.15
    tx = g.cx + g.scale * (ct * base_u - st * base_v)
    ty = g.cy + g.scale * (st * base_u + ct * base_v) + g.shoulder_drop * g.scale
    sx = (x - tx) / (g.shoulder_w * g.scale)
    shoulder_curve = ty + g.shoulder_h * g.scale * np.minimum(1.0, sx * sx)
    cloth = y >= shoulder_curve

    # 1. Hair behind the head (long/curly/bun and the back of short cuts).
    vol = g.hair_volume
    head_back = (u / (1.04 * vol)) ** 2 + ((v + 0.12) / (h * vol)) ** 2 <= 1.0
    if g.hair_style == "long":
        paint(head_back | ((au <= 1.05 * vol) & (v >= -0.12) & (v <= g.hair_length * h)), "hair")
    elif g.hair_style == "curly":
        paint(_curly(u, v, g), "hair")
    elif g.hair_style in ("short", "side_part", "bun"):
        paint(head_back & (v <= 0.15), "hair")
        if g.hair_style == "bun":
            paint(u * u + (v + h * vol + 0.1) ** 2 <= 0.42**2, "hair")

    # 2. Neck, clothes, neckline, necklace.
    paint((au <= g.neck_w) & (v >= 0.3), "neck")
    paint(cloth, "cloth")
    if g.hair_style == "long":  # strands falling over the shoulders
        paint((au >= 0.8) & (au <= 1.05 * vol) & (v >= 0.3) & (v <= g.hair_length * h), "hair")
    neck_half = g.neck_w * g.scale * 1.15
    depth = g.neckline_depth * g.scale
    ax = np.abs(x - tx)
    if g.neckline == "round":
        paint(cloth & ((ax / neck_half) ** 2 + ((y - ty) / depth) ** 2 <= 1.0), "neck")
    elif g.neckline == "v":
        paint(cloth & (y >= ty) & (ax <= neck_half * (1.0 - (y - ty) / (depth * 1.6))), "neck")
    if g.necklace:
        half = neck_half * 1.2
        curve = ty - 0.05 * g.scale + g.necklace_drop * g.scale * (1.0 - np.minimum(1.0, (ax / half) ** 2))
        paint((ax <= half) & (np.abs(y - curve) <= 0.5 * g.necklace_thick * g.scale), "neck_l")

    # 3. Ears and earrings, then the face.
    for sign, name in ((-1.0, "l_ear"), (1.0, "r_ear")):
        paint(((u - sign * 0.98) / g.ear_rx) ** 2 + ((v - g.ear_y) / g.ear_ry) ** 2 <= 1.0, name)
    width = 1.0 - g.jaw * _clip(v / h, 0.0, 1.0) ** 2
    face = (u / width) ** 2 + (v / h) ** 2 <= 1.0
    paint(face, "skin")

    # 4. Nose, eyes, brows, lips and mouth.
    top = g.nose_tip - g.nose_len
    ramp = _clip((v - top) / g.nose_len, 0.0, 1.0)
    paint(((v >= top) & (v <= g.nose_tip) & (au <= g.nose_w * ramp))
          | ((u / g.nose_w) ** 2 + ((v - g.nose_tip) / (0.45 * g.nose_w)) ** 2 <= 1.0), "nose")
    for sign, eye, brow in ((-1.0, "l_eye", "l_brow"), (1.0, "r_eye", "r_brow")):
        eu = u - sign * g.eye_dx
        paint((eu / g.eye_rx) ** 2 + ((v - g.eye_dy) / g.eye_ry) ** 2 <= 1.0, eye)
        t = eu / g.brow_len
        centre = g.eye_dy - g.eye_ry - g.brow_gap + g.brow_arch * g.brow_len * 0.5 * t * t - sign * g.brow_tilt * eu
        paint((np.abs(t) <= 1.0) & (v <= centre) & (v >= centre - g.brow_thick * (1.0 - 0.35 * np.abs(t))), brow)
    vv = v - g.mouth_y - g.smile * u * u
    lips = (u / g.mouth_w) ** 2
    half_open = 0.5 * g.mouth_open
    paint((vv < 0) & (lips + (vv / (half_open + g.upper_lip)) ** 2 <= 1.0), "u_lip")
    paint((vv >= 0) & (lips + (vv / (half_open + g.lower_lip)) ** 2 <= 1.0), "l_lip")
    if g.mouth_open > 0:
        paint((u / (0.85 * g.mouth_w)) ** 2 + (vv / half_open) ** 2 <= 1.0, "mouth")

    # 5. Hair in front of the face (the fringe/cap above the hairline).
    if g.hair_style == "bald":
        band = (u / 1.06) ** 2 + ((v + 0.1) / (1.03 * h)) ** 2 <= 1.0
        paint(band & (au >= 0.86) & (v >= -0.45) & (v <= 0.1), "hair")
    else:
        cap = _curly(u, v, g) if g.hair_style == "curly" else head_back
        if g.hair_style == "side_part":
            line = g.hairline + 0.2 + 0.35 * _clip(u * np.sign(g.hair_part) - g.hair_part, -1.0, 1.0)
        else:
            line = g.hairline + 0.35 * u * u
        paint(cap & (v <= line), "hair")

    # 6. Accessories in front: earrings, glasses, hat.
    for sign, side in ((-1.0, "left"), (1.0, "right")):
        if g.earrings in (side, "both"):
            ey = g.ear_y + g.ear_ry + 0.6 * g.earring_r
            paint((u - sign * 1.0) ** 2 + (v - ey) ** 2 <= g.earring_r**2, "ear_r")
    if g.glasses:
        rx, ry, t = g.eye_rx * g.glasses_size, g.eye_ry * g.glasses_size * 1.9, g.glasses_thick
        frame = np.zeros_like(face)
        for sign in (-1.0, 1.0):
            eu, ev = u - sign * g.eye_dx, v - g.eye_dy
            outer = (eu / (rx + t)) ** 2 + (ev / (ry + t)) ** 2 <= 1.0
            inner = (eu / rx) ** 2 + (ev / ry) ** 2 <= 1.0
            frame |= outer & ~inner
        bar = np.abs(v - g.eye_dy + 0.3 * ry) <= 0.5 * t
        frame |= bar & (au <= g.eye_dx - rx + 0.5 * t)
        frame |= (np.abs(v - g.eye_dy) <= 0.5 * t) & (au >= g.eye_dx + rx) & (au <= 1.02)
        paint(frame, "eye_g")
    if g.hat:
        crown = (v <= g.hat_line) & ((u / 1.12) ** 2 + ((v - g.hat_line) / g.hat_height) ** 2 <= 1.0)
        brim = (au <= g.hat_brim) & (np.abs(v - g.hat_line) <= 0.07)
        paint(crown | brim, "hat")
    return labels.reshape(resolution, resolution)


def _curly(u: np.ndarray, v: np.ndarray, g: FaceGeometry) -> np.ndarray:
    """Big curly hair: a disc around the head with a bumpy (cosine-modulated) outline."""
    cv = (v + 0.15) / 1.1
    radius = np.sqrt(u * u + cv * cv)
    bumps = 1.0 + 0.07 * np.cos(10.0 * np.arctan2(cv, u) + 3.0 * g.hair_part)
    return radius <= 1.4 * g.hair_volume * bumps


# --------------------------------------------------------------------------------------------
# Styles → albedo, illumination → image
# --------------------------------------------------------------------------------------------


def texture(style: ClassStyle, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Texture pattern ``t`` ∈ [-1, 1] of ``style`` at image coordinates ``x``, ``y`` (flat arrays)."""
    if style.texture == "flat" or style.contrast == 0.0:
        return np.zeros_like(x)
    f = style.frequency
    ca, sa = math.cos(style.angle), math.sin(style.angle)
    xr, yr = ca * x + sa * y, -sa * x + ca * y
    tau = 2.0 * math.pi
    if style.texture == "stripes":
        return np.sin(tau * f * xr + style.phase)
    if style.texture == "checker":
        return _clip(2.5 * np.sin(tau * f * xr + style.phase) * np.sin(tau * f * yr + 1.7 * style.phase), -1.0, 1.0)
    if style.texture == "dots":
        fx = (f * xr + style.phase / tau) % 1.0 - 0.5
        fy = (f * yr + 1.3 * style.phase / tau) % 1.0 - 0.5
        return 2.0 * np.exp(-(fx * fx + fy * fy) / (2 * 0.15**2)) - 1.0
    return _value_noise(style.noise_seed, f, x, y)


def _value_noise(seed: int, frequency: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth value noise: random lattice values (spacing 1/frequency) with smoothstep interpolation."""
    n = int(math.ceil(2.0 * frequency)) + 3  # x, y ∈ (-1, 1) ⇒ lattice indices 0 … n − 2, no clipping needed
    lattice = np.random.Generator(np.random.PCG64(seed)).uniform(-1.0, 1.0, (n, n))
    gx, gy = (x + 1.0) * frequency, (y + 1.0) * frequency
    ix, iy = np.floor(gx).astype(np.intp), np.floor(gy).astype(np.intp)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = lattice[iy, ix] * (1 - fx) + lattice[iy, ix + 1] * fx
    bottom = lattice[iy + 1, ix] * (1 - fx) + lattice[iy + 1, ix + 1] * fx
    return _clip(1.8 * (top * (1 - fy) + bottom * fy), -1.0, 1.0)


def albedo(styles: tuple[ClassStyle, ...], labels: np.ndarray) -> np.ndarray:
    """Per-pixel reflectance (H×W×3 float) of ``styles`` painted on ``labels`` (no illumination)."""
    h, w = labels.shape
    if h != w:
        raise ValueError(f"labels must be square, got {h}×{w}")
    x, y = pixel_grid(h)
    flat = labels.ravel()
    out = np.empty((flat.size, 3), dtype=np.float64)  # [N, 3]
    order = np.argsort(flat, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=len(styles)))])
    for c in range(len(styles)):
        idx = order[bounds[c]:bounds[c + 1]]
        if idx.size == 0:
            continue
        style = styles[c]
        color = np.asarray(style.color)
        if style.texture == "flat" or style.contrast == 0.0:
            out[idx] = color
        else:
            out[idx] = (1.0 + style.contrast * texture(style, x[idx], y[idx]))[:, None] * color
    return out.reshape(h, w, 3)


def shading(illumination: Illumination, resolution: int) -> np.ndarray:
    """Multiplicative light field (R×R×3): grey shading times the per-channel cast."""
    x, y = pixel_grid(resolution)
    grey = np.exp(illumination.log_shading(x, y))  # [N]
    return (grey[:, None] * np.asarray(illumination.gain)).reshape(resolution, resolution, 3)


def quantize(linear: np.ndarray) -> np.ndarray:
    """Linear [0, 1] float image → uint8 (clip, ×255, round half to even)."""
    return np.rint(np.clip(linear, 0.0, 1.0) * 255.0).astype(np.uint8)


def paint(record: FaceRecord, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 image of ``record``'s styles on ``labels`` under ``record``'s illumination."""
    return quantize(albedo(record.styles, labels) * shading(record.illumination, labels.shape[0]))
