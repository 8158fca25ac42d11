"""Ground truth of one toy face: geometry, per-class styles and illumination, with JSON round-trip.

A ``FaceRecord`` fully determines a scene: ``faces_draw`` rasterises its geometry into a label map
and paints its styles under its illumination. ``sample_record`` draws one from a seed, with the
inter-class style correlations of real faces (brows follow the hair, lips and ears follow the
skin …). Coordinates are resolution independent: the image spans [-1, 1] on both axes, y down.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnsynth.data.labelsets import CELEBAMASK_HQ

CLASS_NAMES = CELEBAMASK_HQ.class_names
NUM_CLASSES = CELEBAMASK_HQ.num_classes
TEXTURES = ("flat", "stripes", "checker", "dots", "noise")
HAIR_STYLES = ("short", "long", "bun", "side_part", "bald", "curly")
EARRINGS = ("none", "left", "right", "both")
NECKLINES = ("none", "round", "v")
RECORD_VERSION = 1

RGB = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class ClassStyle:
    """Albedo of one class: ``color · (1 + contrast · t(x, y))`` with a texture pattern ``t`` ∈ [-1, 1].

    ``frequency`` is in cycles per image unit (the image is 2 units wide), ``angle`` in radians;
    ``noise_seed`` seeds the value-noise lattice of the ``noise`` texture.
    """

    color: RGB
    texture: str = "flat"
    frequency: float = 3.0
    angle: float = 0.0
    contrast: float = 0.0
    phase: float = 0.0
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.texture not in TEXTURES:
            raise ValueError(f"texture {self.texture!r} is not one of {', '.join(TEXTURES)}")
        if len(self.color) != 3 or any(not 0.0 <= c <= 1.0 for c in self.color):
            raise ValueError(f"style color {self.color} must be three floats in [0, 1]")
        if not 0.0 <= self.contrast < 1.0:
            raise ValueError(f"style contrast {self.contrast} must be in [0, 1)")
        if self.frequency <= 0:
            raise ValueError(f"style frequency {self.frequency} must be > 0")

    def scaled(self, factor: float) -> ClassStyle:
        """Same texture with the colour multiplied by ``factor`` (clipped to [0, 1])."""
        color = tuple(float(min(1.0, max(0.0, c * factor))) for c in self.color)
        return dataclasses.replace(self, color=color)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Illumination:
    """Global light: smooth grey shading times a per-channel colour cast, applied to every pixel.

    ``log shading(x, y) = strength · (cos(direction)·x + sin(direction)·y − 0.5)
    − falloff · ((x − cx)² + (y − cy)²)`` — a quadratic in log space; ``gain`` is the RGB cast.
    """

    direction: float = 0.0
    strength: float = 0.0
    falloff: float = 0.0
    center: tuple[float, float] = (0.0, 0.0)
    gain: RGB = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if any(g <= 0 for g in self.gain) or len(self.gain) != 3:
            raise ValueError(f"illumination gain {self.gain} must be three positive floats")
        if self.strength < 0 or self.falloff < 0:
            raise ValueError(f"illumination strength/falloff must be >= 0, got {self.strength}/{self.falloff}")

    def log_shading(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Log of the grey shading at image coordinates ``x``, ``y`` (any matching shapes)."""
        cx, cy = self.center
        linear = self.strength * (math.cos(self.direction) * x + math.sin(self.direction) * y - 0.5)
        return linear - self.falloff * ((x - cx) ** 2 + (y - cy) ** 2)


@dataclasses.dataclass(frozen=True)
class FaceGeometry:
    """Shape parameters of a face; lengths in face units (face half-width = 1) unless noted.

    ``cx, cy, scale`` place the face in image units; ``rotation`` is in degrees. ``l_*`` parts lie
    on the image's left (u < 0) of the upright face.
    """

    cx: float = 0.0
    cy: float = 0.0
    scale: float = 0.42
    rotation: float = 0.0
    aspect: float = 1.3
    jaw: float = 0.15
    eye_dx: float = 0.4
    eye_dy: float = -0.05
    eye_rx: float = 0.18
    eye_ry: float = 0.09
    brow_gap: float = 0.14
    brow_thick: float = 0.07
    brow_len: float = 0.24
    brow_arch: float = 0.3
    brow_tilt: float = 0.0
    nose_len: float = 0.32
    nose_w: float = 0.13
    nose_tip: float = 0.36
    mouth_y: float = 0.7
    mouth_w: float = 0.35
    mouth_open: float = 0.0
    smile: float = 0.1
    upper_lip: float = 0.07
    lower_lip: float = 0.08
    ear_y: float = 0.02
    ear_rx: float = 0.15
    ear_ry: float = 0.27
    neck_w: float = 0.52
    shoulder_drop: float = 0.2
    shoulder_w: float = 2.6
    shoulder_h: float = 0.45
    neckline: str = "none"
    neckline_depth: float = 0.3
    hair_style: str = "short"
    hair_volume: float = 1.12
    hairline: float = -0.6
    hair_part: float = 0.0
    hair_length: float = 2.0
    glasses: bool = False
    glasses_size: float = 1.35
    glasses_thick: float = 0.05
    hat: bool = False
    hat_line: float = -0.7
    hat_height: float = 0.8
    hat_brim: float = 1.4
    earrings: str = "none"
    earring_r: float = 0.07
    necklace: bool = False
    necklace_drop: float = 0.3
    necklace_thick: float = 0.06

    def __post_init__(self) -> None:
        if self.hair_style not in HAIR_STYLES:
            raise ValueError(f"hair_style {self.hair_style!r} is not one of {', '.join(HAIR_STYLES)}")
        if self.earrings not in EARRINGS:
            raise ValueError(f"earrings {self.earrings!r} is not one of {', '.join(EARRINGS)}")
        if self.neckline not in NECKLINES:
            raise ValueError(f"neckline {self.neckline!r} is not one of {', '.join(NECKLINES)}")
        if self.scale <= 0 or self.aspect <= 0:
            raise ValueError(f"geometry scale/aspect must be > 0, got {self.scale}/{self.aspect}")


@dataclasses.dataclass(frozen=True)
class FaceRecord:
    """Everything that defines a toy face: seed, geometry, one style per class, illumination."""

    seed: int
    geometry: FaceGeometry
    styles: tuple[ClassStyle, ...]
    illumination: Illumination

    def __post_init__(self) -> None:
        if len(self.styles) != NUM_CLASSES:
            raise ValueError(f"record needs {NUM_CLASSES} class styles, got {len(self.styles)}")

    def with_illumination(self, illumination: Illumination) -> FaceRecord:
        """Same face and styles under another illumination (for relighting tests and oracles)."""
        return dataclasses.replace(self, illumination=illumination)

    def with_styles_from(self, other: FaceRecord, classes: tuple[int, ...] | list[int]) -> FaceRecord:
        """Copy of this record whose styles for ``classes`` come from ``other`` (per-class transfer)."""
        chosen = set(int(c) for c in classes)
        if any(not 0 <= c < NUM_CLASSES for c in chosen):
            raise ValueError(f"classes {sorted(chosen)} must be ids in [0, {NUM_CLASSES})")
        styles = tuple(other.styles[c] if c in chosen else s for c, s in enumerate(self.styles))
        return dataclasses.replace(self, styles=styles)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; styles are keyed by class name. Inverse of ``from_dict``."""
        return {
            "version": RECORD_VERSION,
            "labelset": CELEBAMASK_HQ.name,
            "seed": self.seed,
            "geometry": dataclasses.asdict(self.geometry),
            "styles": {name: _style_to_dict(s) for name, s in zip(CLASS_NAMES, self.styles)},
            "illumination": {
                "direction": self.illumination.direction,
                "strength": self.illumination.strength,
                "falloff": self.illumination.falloff,
                "center": list(self.illumination.center),
                "gain": list(self.illumination.gain),
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaceRecord:
        """Rebuild a record from ``to_dict`` output; ValueError naming the first bad field."""
        try:
            if data.get("version") != RECORD_VERSION:
                raise ValueError(f"record version {data.get('version')!r} is not {RECORD_VERSION}")
            geometry = FaceGeometry(**data["geometry"])
            styles_in = data["styles"]
            missing = [n for n in CLASS_NAMES if n not in styles_in]
            if missing:
                raise ValueError(f"record styles miss classes {missing}")
            styles = tuple(_style_from_dict(styles_in[n]) for n in CLASS_NAMES)
            light = dict(data["illumination"])
            light["center"] = tuple(float(v) for v in light["center"])
            light["gain"] = tuple(float(v) for v in light["gain"])
            return cls(seed=int(data["seed"]), geometry=geometry, styles=styles, illumination=Illumination(**light))
        except (KeyError, TypeError) as error:
            raise ValueError(f"face record is malformed ({type(error).__name__}: {error})") from None


def _style_to_dict(style: ClassStyle) -> dict[str, Any]:
    out = dataclasses.asdict(style)
    out["color"] = list(style.color)
    return out


def _style_from_dict(data: dict[str, Any]) -> ClassStyle:
    data = dict(data)
    data["color"] = tuple(float(c) for c in data["color"])
    return ClassStyle(**data)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------

_SKIN_LIGHT = np.array([0.80, 0.62, 0.52])
_SKIN_DARK = np.array([0.30, 0.19, 0.14])
_HAIR_PALETTE = np.array(
    [
        [0.07, 0.06, 0.05],  # black
        [0.20, 0.13, 0.08],  # dark brown
        [0.38, 0.25, 0.14],  # brown
        [0.72, 0.58, 0.34],  # blonde
        [0.52, 0.21, 0.09],  # red
        [0.58, 0.57, 0.55],  # grey
    ]
)
_HAIR_P = (0.24, 0.24, 0.22, 0.14, 0.09, 0.07)
_IRIS_PALETTE = np.array([[0.30, 0.18, 0.10], [0.25, 0.40, 0.60], [0.30, 0.45, 0.28], [0.45, 0.47, 0.50], [0.12, 0.09, 0.07]])
_METALS = np.array([[0.80, 0.64, 0.24], [0.74, 0.74, 0.78], [0.86, 0.83, 0.76]])  # gold, silver, pearl


def _rgb(values: np.ndarray) -> RGB:
    """Colour triple clipped to the albedo range [0.03, 0.78] (leaves head-room for light)."""
    r, g, b = (min(0.78, max(0.03, float(c))) for c in values)
    return (r, g, b)


def _pick(rng: np.random.Generator, options: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    """One item of ``options`` with probabilities ``p`` (uniform if None); one uniform draw."""
    r = float(rng.random())
    if p is None:
        return options[min(int(r * len(options)), len(options) - 1)]
    acc = 0.0
    for option, weight in zip(options, p):
        acc += weight
        if r < acc:
            return option
    return options[len(options) - 1]


def _random_texture(rng: np.random.Generator, color: np.ndarray, *, kinds: tuple[str, ...], p: Sequence[float] | None,
                    contrast: tuple[float, float], frequency: tuple[float, float] = (2.5, 6.0),
                    angle: float | None = None) -> ClassStyle:
    """A style of colour ``color`` with a texture kind drawn from ``kinds`` (probabilities ``p``)."""
    kind = _pick(rng, kinds, p)
    octave = 2.0 if kind == "noise" else 1.0  # value noise is blobbier than periodic patterns
    return ClassStyle(
        color=_rgb(color),
        texture=kind,
        frequency=octave * float(rng.uniform(*frequency)),
        angle=float(rng.uniform(0, math.pi)) if angle is None else angle,
        contrast=0.0 if kind == "flat" else float(rng.uniform(*contrast)),
        phase=float(rng.uniform(0, 2 * math.pi)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _vivid(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    """Random colour from hue/saturation/value ranges (a tiny HSV → RGB)."""
    h, s, v = rng.random(3).tolist()
    s = saturation[0] + s * (saturation[1] - saturation[0])
    v = value[0] + v * (value[1] - value[0])
    k = [(n + h * 6.0) % 6.0 for n in (5.0, 3.0, 1.0)]
    return np.array([v - v * s * min(1.0, max(0.0, min(kk, 4.0 - kk))) for kk in k])


# Uniform ranges of the continuous geometry parameters (face units, see FaceGeometry).
_GEOMETRY_RANGES: dict[str, tuple[float, float]] = {
    "cx": (-0.1, 0.1), "cy": (-0.1, 0.06), "scale": (0.36, 0.46), "aspect": (1.2, 1.4), "jaw": (0.05, 0.3),
    "eye_dx": (0.36, 0.46), "eye_dy": (-0.12, 0.0), "eye_rx": (0.15, 0.21), "eye_ry": (0.07, 0.12),
    "brow_gap": (0.1, 0.18), "brow_thick": (0.06, 0.1), "brow_len": (0.2, 0.28), "brow_arch": (0.0, 0.6),
    "brow_tilt": (-0.12, 0.12), "nose_len": (0.25, 0.4), "nose_w": (0.1, 0.17), "nose_tip": (0.32, 0.42),
    "mouth_y": (0.66, 0.8), "mouth_w": (0.28, 0.42), "smile": (-0.15, 0.35), "upper_lip": (0.05, 0.09),
    "lower_lip": (0.06, 0.11), "ear_y": (-0.05, 0.1), "ear_rx": (0.13, 0.18), "ear_ry": (0.22, 0.32),
    "neck_w": (0.45, 0.6), "shoulder_drop": (0.1, 0.35), "shoulder_w": (2.2, 3.0), "shoulder_h": (0.3, 0.6),
    "neckline_depth": (0.2, 0.5), "hair_volume": (1.08, 1.25), "hairline": (-0.75, -0.5), "hair_length": (1.6, 2.6),
    "glasses_size": (1.25, 1.5), "glasses_thick": (0.04, 0.07), "hat_line": (-0.85, -0.6), "hat_height": (0.6, 1.0),
    "hat_brim": (1.25, 1.6), "earring_r": (0.06, 0.09), "necklace_drop": (0.2, 0.45), "necklace_thick": (0.05, 0.08),
}
_GEOMETRY_LOW = np.array([lo for lo, _ in _GEOMETRY_RANGES.values()])
_GEOMETRY_SPAN = np.array([hi - lo for lo, hi in _GEOMETRY_RANGES.values()])


def sample_geometry(rng: np.random.Generator) -> FaceGeometry:
    """Draw a face shape: pose, proportions, hair style and optional accessories."""
    values = (_GEOMETRY_LOW + _GEOMETRY_SPAN * rng.random(len(_GEOMETRY_LOW))).tolist()  # one vector draw
    shape = dict(zip(_GEOMETRY_RANGES, values))
    flags = rng.random(5).tolist()  # mouth open?, opening, glasses, hat, necklace
    return FaceGeometry(
        **shape,
        rotation=min(20.0, max(-20.0, 8.0 * float(rng.standard_normal()))),
        mouth_open=0.0 if flags[0] < 0.4 else 0.03 + 0.09 * flags[1],
        neckline=_pick(rng, NECKLINES, (0.4, 0.35, 0.25)),
        hair_style=_pick(rng, HAIR_STYLES, (0.25, 0.24, 0.12, 0.18, 0.09, 0.12)),
        hair_part=_pick(rng, (-1.0, 1.0)) * float(rng.uniform(0.2, 0.6)),
        glasses=flags[2] < 0.25,
        hat=flags[3] < 0.15,
        earrings=_pick(rng, EARRINGS, (0.72, 0.07, 0.07, 0.14)),
        necklace=flags[4] < 0.2,
    )


def sample_styles(rng: np.random.Generator) -> tuple[ClassStyle, ...]:
    """Draw one style per class with the correlations of faces (brows ← hair, lips/ears/neck ← skin …)."""
    u = rng.uniform
    tone = u(0, 1)
    skin_rgb = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK + rng.normal(0, 0.02, 3)
    skin = _random_texture(rng, skin_rgb, kinds=("flat", "noise", "dots"), p=[0.5, 0.35, 0.15], contrast=(0.04, 0.12),
                           frequency=(3.0, 6.0))
    if u() < 0.06:  # dyed hair
        hair_rgb = _vivid(rng, (0.5, 0.9), (0.35, 0.75))
    else:
        hair_rgb = _pick(rng, _HAIR_PALETTE, _HAIR_P) * u(0.85, 1.15) + rng.normal(0, 0.015, 3)
    hair = _random_texture(rng, hair_rgb, kinds=("stripes", "noise", "flat"), p=[0.6, 0.25, 0.15], contrast=(0.1, 0.3),
                           frequency=(3.0, 6.0), angle=float(u(1.2, 1.95)))
    brow = dataclasses.replace(hair.scaled(float(u(0.7, 0.9))), angle=0.0)
    lip_tint = np.array([0.66, 0.24, 0.27]) * u(0.8, 1.1)
    lip_mix = u(0.3, 0.7)
    lips_rgb = (1 - lip_mix) * skin_rgb + lip_mix * lip_tint
    lower_lip = ClassStyle(color=_rgb(lips_rgb), texture="flat")
    upper_lip = lower_lip.scaled(float(u(0.82, 0.95)))
    mouth = ClassStyle(color=_rgb(np.array([0.24, 0.07, 0.08]) * u(0.7, 1.3)), texture="flat")
    iris = _pick(rng, _IRIS_PALETTE) * u(0.85, 1.15)
    eye = _random_texture(rng, 0.55 * iris + 0.45 * np.array([0.75, 0.73, 0.70]), kinds=("flat", "dots"), p=[0.7, 0.3],
                          contrast=(0.1, 0.25), frequency=(8.0, 12.0))
    glasses = _random_texture(rng, _vivid(rng, (0.0, 0.8), (0.05, 0.6)), kinds=("flat",), p=None, contrast=(0, 0))
    cloth_rgb = _vivid(rng, (0.2, 0.9), (0.15, 0.75))
    cloth = _random_texture(rng, cloth_rgb, kinds=TEXTURES, p=[0.3, 0.25, 0.15, 0.15, 0.15], contrast=(0.1, 0.3))
    if u() < 0.5:  # hat matches the clothes
        hat = dataclasses.replace(cloth, phase=float(u(0, 2 * math.pi)))
    else:
        hat = _random_texture(rng, _vivid(rng, (0.2, 0.9), (0.15, 0.75)), kinds=TEXTURES, p=None, contrast=(0.1, 0.3))
    metal = _pick(rng, _METALS) * u(0.9, 1.05)
    earring = ClassStyle(color=_rgb(metal), texture="flat")
    necklace = ClassStyle(color=_rgb(metal * u(0.9, 1.0)), texture="flat") if u() < 0.7 else ClassStyle(
        color=_rgb(_pick(rng, _METALS)), texture="flat")
    background = _random_texture(rng, _vivid(rng, (0.0, 0.6), (0.2, 0.75)), kinds=TEXTURES, p=[0.3, 0.2, 0.15, 0.1, 0.25],
                                 contrast=(0.08, 0.3), frequency=(2.5, 5.0))
    by_name = {
        "background": background,
        "skin": skin,
        "nose": skin.scaled(float(u(0.9, 0.97))),
        "eye_g": glasses,
        "l_eye": eye,
        "r_eye": eye,
        "l_brow": brow,
        "r_brow": brow,
        "l_ear": skin.scaled(float(u(0.93, 0.99))),
        "r_ear": skin.scaled(float(u(0.93, 0.99))),
        "mouth": mouth,
        "u_lip": upper_lip,
        "l_lip": lower_lip,
        "hair": hair,
        "hat": hat,
        "ear_r": earring,
        "neck_l": necklace,
        "neck": skin.scaled(float(u(0.8, 0.9))),
        "cloth": cloth,
    }
    return tuple(by_name[name] for name in CLASS_NAMES)


def sample_illumination(rng: np.random.Generator) -> Illumination:
    """Draw a global light: direction, strength, fall-off around a centre, and a warm/cool colour cast."""
    u = rng.uniform
    exposure = u(0.9, 1.1)
    temperature = u(-1.0, 1.0)
    gain = exposure * (1.0 + temperature * np.array([0.1, 0.0, -0.1]) + rng.normal(0, 0.03, 3))
    return Illumination(
        direction=float(u(-math.pi, math.pi)),
        strength=float(u(0.15, 0.45)),
        falloff=float(u(0.0, 0.3)),
        center=(float(u(-0.5, 0.5)), float(u(-0.5, 0.5))),
        gain=(float(gain[0]), float(gain[1]), float(gain[2])),
    )


def sample_record(seed: int) -> FaceRecord:
    """Draw the full ground truth of scene ``seed`` from ``Generator(PCG64(seed))`` (never global RNG)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    geometry = sample_geometry(rng)
    styles = sample_styles(rng)
    illumination = sample_illumination(rng)
    return FaceRecord(seed=seed, geometry=geometry, styles=styles, illumination=illumination)
