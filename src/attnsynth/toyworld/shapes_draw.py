"""Drawing for the shapes toy world: outlines, layouts, appearance and anti-aliased compositing.

Geometry lives in [0, 1] image coordinates (x right, y down) and is drawn at any resolution by
supersampling, so one seed gives the same layout at 32² and at 512². Each shape is defined in
its own tight box mapped to [-1, 1]², so a drawn object's box is exactly its spec box.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from attnsynth.toyworld.shapes_grammar import ALL_SHAPES, COLOURS, RELATIONS, Box, ObjectSpec

MIN_SIZE = 0.2  # smallest object side (the longer side of its box), as a fraction of the image
MAX_SIZE = {1: 0.6, 2: 0.45, 3: 0.38, 4: 0.34}  # largest side, by number of instances in the scene
BORDER = 0.03  # free margin along the image border
GAP = 0.05  # minimum free space between two objects' boxes (along x or along y)
NEXT_TO_MAX_GAP = 0.12  # "next to" pairs are drawn at most this far apart
LAYOUT_TRIES = 256  # candidate positions drawn per object before the sizes shrink
TEXTURE_PROB = 0.35  # share of objects drawn with two-tone stripes or dots

STAR_INNER = 0.48  # inner / outer radius of the five-pointed star
CROSS_ARM = 0.36  # half-width of the cross's arms, in its [-1, 1] box
HEART_VERTICES = 48  # polygon vertices of the (novel) heart outline


def _star_polygon() -> np.ndarray:
    angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # [10, 2]
    lo, hi = pts.min(0), pts.max(0)
    return 2.0 * (pts - lo) / (hi - lo) - 1.0


def _cross_polygon() -> np.ndarray:
    a = CROSS_ARM
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)], float)


def _heart_outline() -> np.ndarray:
    """The classic heart curve x = 16 sin³t, y = −(13 cos t − 5 cos 2t − 2 cos 3t − cos 4t), y down: [V, 2]."""
    t = np.linspace(0.0, 2.0 * np.pi, HEART_VERTICES, endpoint=False)
    return np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], axis=1)


def _heart_polygon() -> np.ndarray:
    pts = _heart_outline()
    lo, hi = pts.min(0), pts.max(0)
    return 2.0 * (pts - lo) / (hi - lo) - 1.0


#: Outline of each shape in its tight box [-1, 1]² (y down); the circle is the unit disc.
POLYGONS: dict[str, np.ndarray | None] = {
    "circle": None,
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float),
    "triangle": np.array([(0, -1), (1, 1), (-1, 1)], float),
    "star": _star_polygon(),
    "cross": _cross_polygon(),
    "diamond": np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], float),
    "heart": _heart_polygon(),  # novel: never in training captions (shapes_grammar.NOVEL_SHAPES)
}

#: Width / height of each shape's box (upright equilateral triangle, regular star, tall diamond, the heart curve's own).
ASPECT: dict[str, float] = {
    "circle": 1.0,
    "square": 1.0,
    "triangle": 2.0 / math.sqrt(3.0),
    "star": (2 * math.sin(math.radians(72))) / (1 + math.cos(math.radians(36))),
    "cross": 1.0,
    "diamond": 0.75,
    "heart": float(np.ptp(_heart_outline()[:, 0]) / np.ptp(_heart_outline()[:, 1])),
}
assert set(POLYGONS) == set(ASPECT) == set(ALL_SHAPES)

# Non-horizontal polygon edges (xa, ya, xb, yb), the only ones the crossing rule needs.
_EDGES = {
    s: [(float(a[0]), float(a[1]), float(b[0]), float(b[1])) for a, b in zip(p, np.roll(p, -1, axis=0)) if a[1] != b[1]]
    for s, p in POLYGONS.items()
    if p is not None
}


def inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of points (u, v) in the shape's box coordinates [-1, 1]² that lie inside it."""
    poly = POLYGONS[shape]
    if poly is None:
        return u * u + v * v <= 1.0
    result = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    for xa, ya, xb, yb in _EDGES[shape]:  # even-odd crossing rule
        crosses = (ya > v) != (yb > v)
        x_cross = xa + (v - ya) * ((xb - xa) / (yb - ya))
        result ^= crosses & (u < x_cross)  # [H, 1] & ([1, W] < [H, 1]) when given a window
    return result


def window_uv(box: Box, height: int, width: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Shape-box coordinates of ``supersample``² points per pixel of a height×width window.

    ``box`` is given in the window's pixel units (pixel (r, c) covers [c, c+1) × [r, r+1)).
    Returns u [1, width*supersample] and v [height*supersample, 1], which broadcast to the grid.
    """
    x0, y0, x1, y1 = box
    offs = (np.arange(supersample) + 0.5) / supersample
    u = ((np.arange(width)[:, None] + offs[None, :]).reshape(1, -1) - x0) * (2.0 / (x1 - x0)) - 1.0
    v = ((np.arange(height)[:, None] + offs[None, :]).reshape(-1, 1) - y0) * (2.0 / (y1 - y0)) - 1.0
    return u, v


def box_coverage(shape: str, box: Box, height: int, width: int, supersample: int = 4) -> np.ndarray:
    """[height, width] fraction of each pixel covered by ``shape`` drawn in ``box`` (window pixel units)."""
    u, v = window_uv(box, height, width, supersample)
    hits = inside(shape, u, v).reshape(height, supersample, width, supersample).sum(axis=(1, 3))
    return hits * (1.0 / supersample**2)


def shape_coverage(shape: str, size: int, supersample: int = 4) -> np.ndarray:
    """[size, size] coverage of the shape filling the whole grid (its tight box)."""
    return box_coverage(shape, (0.0, 0.0, float(size), float(size)), size, size, supersample)


# ----------------------------------------------------------------------------- layout


def _apart(a: np.ndarray, b: np.ndarray, gap: float) -> np.ndarray:
    """Whether boxes ``a`` and ``b`` ([..., 4] x0 y0 x1 y1) are at least ``gap`` apart along x or y."""
    return (a[..., 2] + gap <= b[..., 0]) | (b[..., 2] + gap <= a[..., 0]) | (a[..., 3] + gap <= b[..., 1]) | (b[..., 3] + gap <= a[..., 1])


def relation_drawn(a: np.ndarray, b: np.ndarray, relation: str) -> np.ndarray:
    """The strict form of ``a relation b`` used when drawing ([..., 4] boxes): the centres are
    ≥ 0.2 apart along the relation's axis and at most half that across it; "next to" boxes sit
    side by side, ``GAP``–``NEXT_TO_MAX_GAP`` apart."""
    dx = (b[..., 0] + b[..., 2] - a[..., 0] - a[..., 2]) / 2
    dy = (b[..., 1] + b[..., 3] - a[..., 1] - a[..., 3]) / 2
    if relation == "left of":
        return (dx >= 0.2) & (np.abs(dy) <= 0.5 * dx)
    if relation == "right of":
        return (-dx >= 0.2) & (np.abs(dy) <= -0.5 * dx)
    if relation == "above":
        return (dy >= 0.2) & (np.abs(dx) <= 0.5 * dy)
    if relation == "below":
        return (-dy >= 0.2) & (np.abs(dx) <= -0.5 * dy)
    if relation == "next to":
        x_gap = np.maximum(b[..., 0] - a[..., 2], a[..., 0] - b[..., 2])
        return (x_gap >= GAP) & (x_gap <= NEXT_TO_MAX_GAP) & (np.abs(dy) <= 0.3 * np.abs(dx))
    raise ValueError(f"relation must be one of {', '.join(RELATIONS)}, got {relation!r}")


def sample_layout(rng: np.random.Generator, objects: list[ObjectSpec], relations: list[tuple[int, str, int]]) -> list[tuple[Box, ...]]:
    """Boxes for every instance of every object: inside the border, pairwise ``GAP`` apart, relations drawn.

    Objects are placed one by one, each at the first of ``LAYOUT_TRIES`` uniform candidate positions
    that fits; if one does not fit, all sizes shrink by 7 % (never below ``MIN_SIZE``) and the
    layout starts over. Deterministic for a given ``rng`` state.
    """
    shapes = [o.shape for o in objects for _ in range(o.count)]
    owner = [k for k, o in enumerate(objects) for _ in range(o.count)]
    first = {k: owner.index(k) for k in range(len(objects))}  # relations join count-1 objects
    n = len(shapes)
    sizes = rng.uniform(MIN_SIZE, MAX_SIZE[min(max(n, 1), 4)], size=n)
    while True:
        boxes = np.zeros((0, 4))
        for k, (size, shape) in enumerate(zip(sizes, shapes)):
            w, h = (size, size / ASPECT[shape]) if ASPECT[shape] >= 1 else (size * ASPECT[shape], size)
            cx = rng.uniform(BORDER + w / 2, 1 - BORDER - w / 2, size=LAYOUT_TRIES)
            cy = rng.uniform(BORDER + h / 2, 1 - BORDER - h / 2, size=LAYOUT_TRIES)
            cand = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)  # [LAYOUT_TRIES, 4]
            ok = _apart(cand[:, None, :], boxes[None, :, :], GAP).all(axis=1)
            for i, rel, j in relations:
                if first[j] == k and first[i] < k:
                    ok &= relation_drawn(boxes[first[i]], cand, rel)
                elif first[i] == k and first[j] < k:
                    ok &= relation_drawn(cand, boxes[first[j]], rel)
            if not ok.any():
                break
            boxes = np.concatenate([boxes, cand[int(np.argmax(ok))][None]], axis=0)
        if len(boxes) == n:
            grouped: list[list[Box]] = [[] for _ in objects]
            for k, box in zip(owner, np.clip(boxes, 0.0, 1.0)):
                grouped[k].append(tuple(float(c) for c in box))  # type: ignore[arg-type]
            return [tuple(g) for g in grouped]
        sizes = np.maximum(sizes * 0.93, MIN_SIZE)


# ----------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class Instance:
    """One drawn object: shape, box, colour (RGB in [0, 1]) and an optional two-tone texture."""

    shape: str
    box: Box
    rgb: tuple[float, float, float]
    texture: str = "plain"  # plain | stripes | dots
    shade: tuple[float, float, float] | None = None  # second tone of the texture
    angle: float = 0.0  # stripe direction, degrees
    frequency: float = 3.0  # stripes or dots across the shape


@dataclass(frozen=True)
class Background:
    """A light, low-saturation colour with a linear brightness gradient and mild noise."""

    rgb: tuple[float, float, float]
    angle: float = 0.0  # gradient direction, degrees
    amplitude: float = 0.0  # brightness difference across the image
    noise: float = 0.0  # std of per-pixel noise, in [0, 1] units


def jitter_colour(rng: np.random.Generator, name: str) -> tuple[float, float, float]:
    """The named palette colour with a small random hue/saturation/brightness change."""
    r, g, b = (c / 255.0 for c in COLOURS[name])
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + rng.uniform(-4.0, 4.0) / 360.0) % 1.0
    s = s * rng.uniform(0.85, 1.0)
    v = v * rng.uniform(0.9, 1.0)
    return colorsys.hsv_to_rgb(h, s, v)


def sample_instances(rng: np.random.Generator, objects: list[ObjectSpec], boxes: list[tuple[Box, ...]]) -> list[Instance]:
    """Colour and texture for every instance; a colourless subject gets one random palette colour."""
    names = list(COLOURS)
    out: list[Instance] = []
    for obj, obj_boxes in zip(objects, boxes):
        colour = obj.colour if obj.colour is not None else names[int(rng.integers(len(names)))]
        for box in obj_boxes:
            rgb = jitter_colour(rng, colour)
            texture, shade, angle, frequency = "plain", None, 0.0, 3.0
            if rng.random() < TEXTURE_PROB:
                texture = "stripes" if rng.random() < 0.6 else "dots"
                if rng.random() < 0.5:
                    shade = tuple(c * 0.65 for c in rgb)  # darker tone
                else:
                    shade = tuple(c + 0.4 * (1.0 - c) for c in rgb)  # lighter tone
                angle = float(rng.choice([0.0, 45.0, 90.0, 135.0]))
                frequency = float(rng.uniform(2.5, 4.0))
            out.append(Instance(obj.shape, box, rgb, texture, shade, angle, frequency))  # type: ignore[arg-type]
    return out


def object_masks(objects: Sequence[ObjectSpec], size: int) -> np.ndarray:
    """Visible coverage of every object on a ``size``² grid → ``[len(objects), size, size]`` float32 in [0, 1].

    Instances are laid down in drawing order (objects in order, their instances in order), each
    hiding what it covers of the earlier ones, so the masks say which object a cell shows; an
    object's mask is the union of its instances. Used to ground caption tokens in training.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    masks = np.zeros((len(objects), size, size), np.float32)
    for k, obj in enumerate(objects):
        if not obj.boxes:
            raise ValueError(f"object {k} ({obj.shape}) has no boxes; masks need a placed scene's spec")
        for x0, y0, x1, y1 in obj.boxes:
            cover = box_coverage(obj.shape, (x0 * size, y0 * size, x1 * size, y1 * size), size, size).astype(np.float32)
            masks *= 1.0 - cover
            masks[k] += cover
    return masks


def sample_background(rng: np.random.Generator) -> Background:
    """A light (value 0.88–0.97), barely saturated (≤ 0.08) colour with a mild gradient and noise."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.08), rng.uniform(0.88, 0.97))
    angle, amplitude = float(rng.uniform(0.0, 360.0)), float(rng.uniform(0.0, 0.06))
    return Background(rgb=rgb, angle=angle, amplitude=amplitude, noise=float(rng.uniform(0.0, 2.0)) / 255.0)


# ----------------------------------------------------------------------------- pixels


def _supersample(resolution: int) -> int:
    return 4 if resolution <= 128 else 3 if resolution <= 256 else 2


def _texture_mask(inst: Instance, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if inst.texture == "stripes":
        t = math.radians(inst.angle)
        phase = (u * math.cos(t) + v * math.sin(t)) * inst.frequency / 2.0
        return (phase - np.floor(phase)) < 0.5
    if inst.texture == "dots":
        cell_u = (u + 1.0) * inst.frequency / 2.0
        cell_v = (v + 1.0) * inst.frequency / 2.0
        du, dv = cell_u - np.floor(cell_u) - 0.5, cell_v - np.floor(cell_v) - 0.5
        return du * du + dv * dv <= 0.3**2
    return np.zeros(np.broadcast(u, v).shape, dtype=bool)


def draw(instances: list[Instance], background: Background, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """Composite the instances over the background at ``resolution``²: [H, W, 3] uint8 (noise from ``rng``)."""
    res = resolution
    ss = _supersample(res)
    centres = ((np.arange(res) + 0.5) / res - 0.5).astype(np.float32)
    t = math.radians(background.angle)
    ramp = np.float32(background.amplitude) * (centres[None, :] * np.float32(math.cos(t)) + centres[:, None] * np.float32(math.sin(t)))  # [H, W]
    image = np.asarray(background.rgb, np.float32)[None, None, :] + ramp[..., None]  # [H, W, 3]
    norm = np.float32(1.0 / (ss * ss))
    for inst in instances:
        x0, y0, x1, y1 = inst.box
        px0, px1 = max(0, math.floor(x0 * res)), min(res, math.ceil(x1 * res))
        py0, py1 = max(0, math.floor(y0 * res)), min(res, math.ceil(y1 * res))
        h, w = py1 - py0, px1 - px0
        u, v = window_uv((x0 * res - px0, y0 * res - py0, x1 * res - px0, y1 * res - py0), h, w, ss)  # [h*ss, w*ss]
        mask = inside(inst.shape, u, v)
        cover = mask.reshape(h, ss, w, ss).sum(axis=(1, 3), dtype=np.float32) * norm  # [h, w]
        premult = cover[..., None] * np.asarray(inst.rgb, np.float32)  # [h, w, 3]
        if inst.texture != "plain" and inst.shade is not None:
            second = (mask & _texture_mask(inst, u, v)).reshape(h, ss, w, ss).sum(axis=(1, 3), dtype=np.float32) * norm  # [h, w]
            premult += second[..., None] * (np.asarray(inst.shade, np.float32) - np.asarray(inst.rgb, np.float32))
        window = image[py0:py1, px0:px1]
        image[py0:py1, px0:px1] = window * (1.0 - cover[..., None]) + premult
    if background.noise > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(background.noise)
    return np.clip(np.round(image * np.float32(255.0)), 0, 255).astype(np.uint8)
