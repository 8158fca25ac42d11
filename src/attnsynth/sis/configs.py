"""Frozen, validated configurations for the SIS models (CA²-SIS and the SPADE-style baseline).

`get_config(name, num_classes=C, resolution=(H, W))` returns one of the named presets:

* ``faithful`` — the function of the authors' CA²-SIS code (TFonta/CA2SIS, CelebA scripts: ``--exclude_bg``,
  so 18 shape tokens at 19 classes; 256²: style encoder 18.07 M, mask embedder 4.19 M, decoder 26,721,155,
  discriminator 1.36 M, mapping network 28,244,224 parameters). `tests/test_parity_ca2sis.py` checks it
  against numbers recorded from their code.
* ``small`` — the same function scaled down (same architecture choices; narrower and shallower,
  ≈ 1–3 M parameters, CPU-trainable at 64²).
* ``toy`` — ``small`` at about half its widths, for CPU training on a shared core.
* ``spade-faithful`` / ``spade-small`` / ``spade-toy`` — the baseline with per-pixel, mask-inside-the-generator
  conditioning (SPADE/SEAN-style), behind the same `SISModel` interface and the same style encoder.

Sizes that depend on the resolution (decoder start grid, shape-token width, mask-embedder grid) are
derived properties, so non-square resolutions (e.g. H×W = 256×512) work for every preset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

ARCHES = ("ca2sis", "spade")
KERNELS = ("efficient", "reference")
# Config keys that were removed; config.json files written while they existed load if they hold the value that is
# now the only behaviour. style_variant: the opt-in "class-aligned" style encoder (per-class skip concat, area
# pooling) lost an equal-budget toy-faces comparison to the authors' encoder and was removed.
_RETIRED_KEYS = {"style_variant": "official"}
PRESETS = ("small", "faithful", "spade-small", "spade-faithful", "toy", "spade-toy")


def _tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class SISConfig:
    """Every hyper-parameter of one SIS model (generator side + discriminator + mapping network)."""

    name: str = "custom"
    arch: str = "ca2sis"  # "ca2sis" (cross-attention) or "spade" (per-pixel modulation baseline)
    num_classes: int = 19  # C, background included
    resolution: tuple[int, int] = (256, 256)  # (H, W) of images and masks

    # Style encoder (multi-resolution grouped U-Net; all widths are per class, ×C channels in total).
    style_width: int = 4  # channels per class after the stem; doubled at each downsampling
    style_downsamples: int = 6  # stride-2 grouped convs (256² → 4²)
    style_levels: int = 5  # U-Net decoder levels pooled into tokens (8² … 128² at 256²)
    style_level_dim: int = 256  # token width contributed by each level; style_dim = levels × this

    # Mask embedder (CA²-SIS only).
    shape_grid_short: int = 128  # mask is nearest-resized to a grid whose shorter side is this
    drop_background: bool = True  # no shape token for `background_class` (the authors' --exclude_bg); False keeps it
    background_class: int = 0

    # Generator. Stage i works at start_size × 2^i; stage 0 does not upsample.
    base_channels: int = 512  # conv1×1 from the C' shape-token maps
    stage_channels: tuple[int, ...] = (256, 128, 64, 32, 32)
    stage_heads: tuple[int, ...] = (8, 8, 8, 8, 4)
    stage_head_dim: tuple[int, ...] = (64, 64, 64, 64, 32)
    self_attention: tuple[bool, ...] = (True, True, True, False, False)
    ff_mult: int = 4  # GEGLU feed-forward hidden width = ff_mult × inner width
    norm_groups: int = 32  # GroupNorm groups in the generator (min(this, channels))
    kernels: str = "efficient"  # "efficient", or "reference": the paper code's computation (explicit N×N attention
    #                              maps, plain-autograd feed-forward, no chunking) — same maths, for checks and benchmarks
    gradient_checkpointing: bool = False  # recompute block activations in backward (less memory, more time)

    # SPADE baseline generator.
    spade_hidden: int = 128  # hidden width of the mask branch of each modulation layer
    spade_style_channels: int = 128  # width of the per-pixel style map of each modulation layer

    # Discriminator (multiscale PatchGAN on one-hot ⊕ image).
    disc_scales: int = 2
    disc_channels: int = 64
    disc_layers: int = 3

    # Mapping network (random styles, StarGAN-v2 style).
    mapping_latent_dim: int = 16
    mapping_hidden: int = 512
    mapping_shared_layers: int = 4
    mapping_head_layers: int = 4  # Linear layers of each per-class head (ReLU between, no output squashing)

    def __post_init__(self) -> None:
        for key in ("resolution", "stage_channels", "stage_heads", "stage_head_dim", "self_attention"):
            object.__setattr__(self, key, _tuple(getattr(self, key)))
        object.__setattr__(self, "self_attention", tuple(bool(v) for v in self.self_attention))
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, value: Any, expected: str) -> None:
            raise ValueError(f"SISConfig.{name}={value!r} is invalid: expected {expected}")

        if self.arch not in ARCHES:
            fail("arch", self.arch, f"one of {ARCHES}")
        if self.kernels not in KERNELS:
            fail("kernels", self.kernels, f"one of {KERNELS}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            fail("num_classes", self.num_classes, "an integer >= 2")
        if len(self.resolution) != 2 or min(self.resolution) <= 0:
            fail("resolution", self.resolution, "(H, W) with positive integers")
        positive = ("style_width", "style_downsamples", "style_levels", "style_level_dim", "shape_grid_short",
                    "base_channels", "ff_mult", "norm_groups", "spade_hidden", "spade_style_channels",
                    "disc_scales", "disc_channels", "disc_layers", "mapping_latent_dim", "mapping_hidden",
                    "mapping_shared_layers", "mapping_head_layers")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                fail(key, value, "a positive integer")
        if self.style_levels > self.style_downsamples - 1:
            fail("style_levels", self.style_levels, f"<= style_downsamples - 1 = {self.style_downsamples - 1}")
        n = len(self.stage_channels)
        if n == 0:
            fail("stage_channels", self.stage_channels, "at least one stage")
        for key in ("stage_heads", "stage_head_dim", "self_attention"):
            if len(getattr(self, key)) != n:
                fail(key, getattr(self, key), f"{n} entries (one per stage, like stage_channels)")
        for key in ("stage_channels", "stage_heads", "stage_head_dim"):
            if min(getattr(self, key)) <= 0:
                fail(key, getattr(self, key), "positive integers")
        for channels in (self.base_channels, *self.stage_channels):
            if channels % min(self.norm_groups, channels):
                fail("norm_groups", self.norm_groups, f"a divisor of every generator width (got width {channels})")
        if not 0 <= self.background_class < self.num_classes:
            fail("background_class", self.background_class, f"a class index in [0, {self.num_classes})")
        height, width = self.resolution
        multiple = math.lcm(2 ** self.style_downsamples, 2 ** (n - 1))
        if height % multiple or width % multiple:
            fail("resolution", self.resolution, f"H and W divisible by {multiple} (style encoder downsamples "
                 f"{self.style_downsamples}×, generator upsamples {n - 1}×)")
        grid = self.shape_grid
        if grid[0] > height or grid[1] > width or grid[0] * min(height, width) != self.grid_short * height:
            fail("shape_grid_short", self.shape_grid_short, f"a grid with the aspect of {self.resolution} "
                 f"(got {grid}); make H and W multiples of H/gcd")

    # ---- derived sizes ---------------------------------------------------------------------------
    @property
    def style_dim(self) -> int:
        """Width D_style of one style token (levels × level width; 1280 for faithful)."""
        return self.style_levels * self.style_level_dim

    @property
    def start_size(self) -> tuple[int, int]:
        """(h0, w0): the generator's first grid (resolution / 2^(stages−1); 16×16 for faithful 256²)."""
        factor = 2 ** (len(self.stage_channels) - 1)
        return self.resolution[0] // factor, self.resolution[1] // factor

    @property
    def shape_dim(self) -> int:
        """Width D_shape of one shape token = h0·w0, so a token reshapes to the generator's first grid."""
        h0, w0 = self.start_size
        return h0 * w0

    @property
    def grid_short(self) -> int:
        return min(self.shape_grid_short, *self.resolution)

    @property
    def shape_grid(self) -> tuple[int, int]:
        """(gh, gw): mask grid of the embedder, same aspect as the image, shorter side `shape_grid_short`."""
        height, width = self.resolution
        short = min(height, width)
        return height * self.grid_short // short, width * self.grid_short // short

    @property
    def num_shape_tokens(self) -> int:
        """C' = C, or C − 1 when the background channel is dropped."""
        return self.num_classes - int(self.drop_background)

    @property
    def stage_sizes(self) -> list[tuple[int, int]]:
        """(h, w) of every generator stage = resolution of each cross-attention layer's logits."""
        h0, w0 = self.start_size
        return [(h0 * 2 ** i, w0 * 2 ** i) for i in range(len(self.stage_channels))]

    # ---- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SISConfig":
        """Inverse of `to_dict`; unknown keys are an error (a config from a newer version)."""
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        for key, only_value in _RETIRED_KEYS.items():
            if key in data:
                value = data.pop(key)
                if value != only_value:
                    raise ValueError(f"config has {key}={value!r}, a variant that was removed; only {only_value!r} exists now")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "SISConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {},
    "small": dict(
        style_width=2, style_downsamples=4, style_levels=3, style_level_dim=64, shape_grid_short=32,
        base_channels=128, stage_channels=(64, 64, 32, 32), stage_heads=(4, 4, 2, 2),
        stage_head_dim=(16, 16, 16, 16), self_attention=(True, True, False, False),
        spade_hidden=32, spade_style_channels=32, disc_channels=32, mapping_hidden=64,
    ),
}
# ``toy``: the small architecture at about half its widths (one self-attention stage), for CPU runs where a
# core is shared: a 64², batch-8 training step costs ≈ 0.43× small's (0.25 vs 0.57 CPU-s on this machine kind).
_PRESETS["toy"] = dict(
    _PRESETS["small"], style_width=1, style_level_dim=32, base_channels=64, stage_channels=(32, 32, 16, 16),
    stage_heads=(2, 2, 1, 1), self_attention=(True, False, False, False), spade_hidden=16, spade_style_channels=16,
    disc_channels=16,
)
_PRESETS["spade-faithful"] = dict(_PRESETS["faithful"], arch="spade")
_PRESETS["spade-small"] = dict(_PRESETS["small"], arch="spade")
_PRESETS["spade-toy"] = dict(_PRESETS["toy"], arch="spade")


def get_config(name: str, *, num_classes: int = 19, resolution: int | tuple[int, int] = 256, **overrides: Any) -> SISConfig:
    """Named preset at C classes and resolution R or (H, W); `overrides` replace any field."""
    if name not in _PRESETS:
        raise ValueError(f"config name {name!r} is unknown; expected one of {PRESETS}")
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    fields = dict(_PRESETS[name], name=name, num_classes=num_classes, resolution=tuple(resolution))
    fields.update(overrides)
    return SISConfig(**fields)
