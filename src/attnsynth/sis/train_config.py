"""Frozen, validated options of the two SIS training stages (saved as ``RUN/train_config.json``).

:class:`TrainConfig` — the main GAN stage (generator + discriminator, paper defaults);
:class:`MappingTrainConfig` — the optional random-style stage (mapping network, generator frozen).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from attnsynth.utils.images import parse_resolution

MODEL_PRESETS = ("small", "faithful", "spade-small", "spade-faithful", "toy", "spade-toy")
PRECISIONS = ("no", "fp16", "bf16")
# Fields that may change when a run is resumed; every other field must equal the saved value.
# (A new ``steps`` also moves the lr decay, so such a run no longer retraces an uninterrupted one;
# ``out`` may differ when a run directory was moved or copied.)
RESUMABLE_CHANGES = ("out", "steps", "sample_every", "checkpoint_every", "log_every", "num_workers", "mixed_precision", "eval_every",
                     "eval_data", "eval_n")


def _positive(owner: str, name: str, value: Any, *, zero_ok: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if zero_ok else value > 0)
    if not ok:
        raise ValueError(f"{owner}.{name}={value!r} is invalid: expected an integer {'>= 0' if zero_ok else '> 0'}")


def _non_negative_float(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{owner}.{name}={value!r} is invalid: expected a number >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of ``attnsynth sis train`` (defaults = the CA²-SIS paper's, batch per process)."""

    data: str  # dataset directory or "toy-faces"
    out: str  # run directory: checkpoint/, samples/, log.jsonl, final model
    config: str = "small"  # model preset: small | faithful | spade-small | spade-faithful
    resolution: tuple[int, int] = (64, 64)  # (H, W) of training crops
    steps: int = 1000  # total optimisation steps (one G and one D update each)
    batch_size: int = 8  # per process; the global batch is batch_size × processes
    lr_g: float = 1e-4  # TTUR: generator learning rate
    lr_d: float = 4e-4  # TTUR: discriminator learning rate
    betas: tuple[float, float] = (0.0, 0.9)  # Adam betas of both optimisers
    decay_start: float = 0.5  # lr is constant for this fraction of the steps, then decays linearly to 0
    ema_decay: float = 0.999  # EMA of the generator (warm-up: min(decay, (1+t)/(10+t)))
    lambda_fm: float = 10.0  # discriminator feature matching
    lambda_vgg: float = 10.0  # VGG19 perceptual loss (only with vgg_weights)
    lambda_att: float = 1.0  # attention loss L_att (ca2sis arch only)
    lambda_l1: float = 0.0  # pixel L1 |G − x| (0 in the paper; a reconstruction loss that needs no downloaded weights)
    vgg_weights: str | None = None  # local VGG19 weights; None → perceptual loss OFF
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU)
    sample_every: int = 500  # sample grid PNG period (0 = only at the end)
    checkpoint_every: int = 500  # resumable checkpoint period (0 = only at the end)
    log_every: int = 10  # JSONL log period
    eval_every: int = 0  # learning curve: evaluate the EMA generator every this many steps into eval.jsonl (0 = never)
    eval_data: str | None = None  # held-out data of the learning curve (its test split); None = the test split of `data`
    eval_n: int = 50  # held-out images per learning-curve evaluation
    seed: int = 0  # model init, data order, augmentation, per-step RNG
    layout: str = "auto"  # dataset layout: auto | celebamask | ade20k | folder
    toy_n: int = 512  # number of scenes for data="toy-faces"
    augment: bool = True  # resize ×286/256, random crop, class-aware flip
    num_workers: int = 0  # DataLoader workers per process

    def __post_init__(self) -> None:
        owner = "TrainConfig"
        object.__setattr__(self, "resolution", parse_resolution(self.resolution) if not isinstance(self.resolution, (tuple, list)) else tuple(int(v) for v in self.resolution))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.config not in MODEL_PRESETS:
            raise ValueError(f"{owner}.config={self.config!r} is invalid: expected one of {', '.join(MODEL_PRESETS)}")
        if len(self.resolution) != 2 or min(self.resolution) <= 0:
            raise ValueError(f"{owner}.resolution={self.resolution!r} is invalid: expected (H, W) with positive integers")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"{owner}.mixed_precision={self.mixed_precision!r} is invalid: expected one of {', '.join(PRECISIONS)}")
        for name in ("steps", "batch_size", "log_every", "toy_n", "eval_n"):
            _positive(owner, name, getattr(self, name))
        for name in ("sample_every", "checkpoint_every", "num_workers", "seed", "eval_every"):
            _positive(owner, name, getattr(self, name), zero_ok=True)
        for name in ("lr_g", "lr_d", "lambda_fm", "lambda_vgg", "lambda_att", "lambda_l1"):
            _non_negative_float(owner, name, getattr(self, name))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"{owner}.betas={self.betas!r} is invalid: expected two numbers in [0, 1)")
        if not 0.0 <= self.decay_start <= 1.0:
            raise ValueError(f"{owner}.decay_start={self.decay_start!r} is invalid: expected a fraction in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"{owner}.ema_decay={self.ema_decay!r} is invalid: expected a number in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config has unknown keys {unknown}")
        return cls(**dict(data))

    def check_resume(self, saved: "TrainConfig") -> None:
        """Raise if ``self`` differs from the run's saved config in a field that must not change."""
        for field in dataclasses.fields(self):
            if field.name in RESUMABLE_CHANGES:
                continue
            if getattr(self, field.name) != getattr(saved, field.name):
                raise ValueError(f"cannot resume: {field.name}={getattr(self, field.name)!r} differs from the run's {getattr(saved, field.name)!r} (only {', '.join(RESUMABLE_CHANGES)} may change)")


@dataclasses.dataclass(frozen=True)
class MappingTrainConfig:
    """Options of the random-style stage: train the mapping network with the generator frozen."""

    run: str  # a finished `sis train` run (final model + discriminator.safetensors)
    data: str | None = None  # masks and real images for the discriminator; None = the run's dataset
    steps: int = 1000  # GAN steps (0 allowed with token_steps: the token fit alone)
    batch_size: int = 8  # per process
    lr: float = 1e-4  # mapping network (StarGAN-v2 uses 1e-6 for mapping, 1e-4 for G; G is frozen here)
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    lambda_att: float = 1.0  # attention loss on the generated image's attention
    lambda_div: float = 0.0  # diversity term −|G(z1) − G(z2)|₁ (0 = off)
    lambda_token: float = 0.0  # opt-in (not the authors'): sliced-Wasserstein match of mapped tokens to real style tokens (0 = off)
    token_bank: int = 512  # real training faces whose style tokens the token term matches
    token_batch: int = 64  # mapped / real token sets per step of the token term
    token_steps: int = 0  # opt-in: token-only steps (SW₂² alone, no generator) before the GAN steps, from step 0
    token_lr: float = 1e-3  # learning rate of those token-only steps
    mixed_precision: str = "no"
    log_every: int = 10
    checkpoint_every: int = 500
    seed: int = 0
    layout: str | None = None  # None = the run's
    toy_n: int | None = None  # None = the run's
    num_workers: int = 0

    def __post_init__(self) -> None:
        owner = "MappingTrainConfig"
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.toy_n is not None:
            _positive(owner, "toy_n", self.toy_n)
        for name in ("batch_size", "log_every"):
            _positive(owner, name, getattr(self, name))
        _positive(owner, "token_steps", self.token_steps, zero_ok=True)
        _positive(owner, "steps", self.steps, zero_ok=self.token_steps > 0)  # 0 GAN steps: the token fit alone
        for name in ("checkpoint_every", "num_workers", "seed"):
            _positive(owner, name, getattr(self, name), zero_ok=True)
        for name in ("token_bank", "token_batch"):
            _positive(owner, name, getattr(self, name))
        for name in ("lr", "lr_d", "lambda_att", "lambda_div", "lambda_token", "token_lr"):
            _non_negative_float(owner, name, getattr(self, name))
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"{owner}.mixed_precision={self.mixed_precision!r} is invalid: expected one of {', '.join(PRECISIONS)}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"{owner}.betas={self.betas!r} is invalid: expected two numbers in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
