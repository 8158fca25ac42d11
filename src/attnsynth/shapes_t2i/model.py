"""The shapes-world text-to-image model: tokenizer, component configs, and the shipped pipeline.

A small latent diffusion model in the standard diffusers layout (CLIPTokenizer, CLIPTextModel,
AutoencoderKL, UNet2DConditionModel, a scheduler) trained from scratch on shapes-world captions
by :mod:`attnsynth.shapes_t2i.train`. Everything here builds offline from configs; the trained
weights ship in ``attnsynth/assets/toy_t2i`` and load with :func:`load_t2i_pipeline`.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from attnsynth.t2i import RECOMMENDED_SETTINGS_FILE, recommended_settings

#: Where the trained pipeline ships inside the package.
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_t2i"
#: File in a pipeline directory holding the recommended generation settings.
DEFAULTS_FILE = RECOMMENDED_SETTINGS_FILE

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

#: Recommended generation settings for the shipped model. ``attention_res`` is the latent-space
#: cross-attention grid the guided pipeline reads: the 16² grid (the VAE downsamples 64² by 4),
#: since SD's image/32 rule would give a useless 2×2 grid at 64². ``guidance_scale`` 3 was chosen on
#: validation prompts for the previous model (UNet step 9327) and kept. The per-method ``step_size``
#: was chosen on validation prompts (seeds from 10 000 000; the benchmark reports on 20 000 000+) for
#: the token-grounded model (warm start from step 9327 + 2400 grounded steps) with
#: ``benchmarks/toy_t2i_choose.py`` (12 prompts × 2, 3, 4 subjects; all-present, unguided 0.61):
#: AI-T2I 0.67 / 0.69 / 0.58 / 0.42 / 0.42 / 0.28 at α = 0.1 / 0.25 / 0.5 / 1 / 2 / 5 (the same for
#: the prompt-softmax variant but 0.44 at α = 2); Attend-and-Excite 0.61 at every α in 1 / 5 / 20 (its loss is saturated
#: on this model, so the step size does not matter: 1); layout (2–3 subjects, all-present + box IoU)
#: 0.78 / 0.76 / 0.65 / 0.40 at α = 0.5 / 1 / 2 / 10, layout + AI-T2I 0.72 / 0.73 / 0.55 / 0.50 at
#: α = 0.25 / 0.5 / 1 / 2; guided steps (AI-T2I, α = 0.25) 0.64 / 0.69 / 0.67 at 6 / 12 / 18. Divide & Bind keeps the authors' α = 20 (not re-chosen after it became
#: the authors' function: its refinement makes a sweep too slow for this CPU session).
TOY_T2I_DEFAULTS: dict[str, Any] = {
    "height": 64,
    "width": 64,
    "num_inference_steps": 25,
    "guidance_scale": 3.0,
    "attention_res": [16, 16],
    "guided_steps": 12,
    "step_size": {"ait2i": 0.25, "ait2i-prompt-softmax": 0.25, "attend-excite": 1.0, "divide-bind": 20.0, "layout": 0.5, "layout+ait2i": 0.5},
}


@dataclass(frozen=True)
class ToyT2IConfig:
    """Sizes of the four trained components; saved beside every checkpoint as ``model_config.json``."""

    resolution: int = 64  # image side in pixels; latents are resolution / 4
    max_length: int = 32  # tokens per prompt, BOS and EOS included
    text_hidden: int = 96  # CLIPTextModel width
    text_layers: int = 3
    text_heads: int = 4
    vae_channels: tuple[int, ...] = (8, 16, 32)  # two downsamplings: 64² → 16²
    vae_norm_groups: int = 2  # few groups: 1-channel groups normalise colour away
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)  # grids 16², 8², 4²
    unet_layers_per_block: int = 1
    unet_head_dim: int = 32
    unet_norm_groups: int = 8
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        factor = 2 ** (len(self.vae_channels) - 1)
        if self.resolution <= 0 or self.resolution % (factor * 2 ** (len(self.unet_channels) - 1)) != 0:
            raise ValueError(
                f"resolution must be a positive multiple of {factor * 2 ** (len(self.unet_channels) - 1)} "
                f"for these VAE/UNet depths, got {self.resolution}"
            )
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4 tokens, got {self.max_length}")
        if self.text_hidden % self.text_heads != 0:
            raise ValueError(f"text_hidden ({self.text_hidden}) must be divisible by text_heads ({self.text_heads})")
        if any(c % self.vae_norm_groups for c in self.vae_channels):
            raise ValueError(f"every vae channel count must be divisible by vae_norm_groups={self.vae_norm_groups}, got {self.vae_channels}")
        if len(self.unet_channels) < 2:
            raise ValueError(f"unet_channels needs >= 2 levels, got {self.unet_channels}")
        if any(c % self.unet_norm_groups for c in self.unet_channels):
            raise ValueError(f"every unet channel count must be divisible by unet_norm_groups={self.unet_norm_groups}, got {self.unet_channels}")
        if any(c % self.unet_head_dim for c in self.unet_channels):
            raise ValueError(f"every unet channel count must be divisible by unet_head_dim={self.unet_head_dim}, got {self.unet_channels}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")

    @property
    def latent_size(self) -> int:
        """Side of the latent grid (the UNet's input)."""
        return self.resolution // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ToyT2IConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ToyT2IConfig keys {unknown}; expected a subset of {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


#: A config small enough for unit tests (a training step in well under a second).
TINY_CONFIG = ToyT2IConfig(
    resolution=32,
    max_length=16,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    vae_channels=(8, 16),
    unet_channels=(16, 32),
    unet_head_dim=8,
)


# ----------------------------------------------------------------------------- tokenizer


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges under which every word (plus ``</w>``) becomes exactly one token.

    Classic BPE training on the word list, each word counted once, until no word has more than
    one symbol left; ties break on the pair's text so the result is deterministic.
    """
    pieces = {w: tuple(w[:-1]) + (w[-1] + END_OF_WORD,) for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for symbols in pieces.values():
            for pair in zip(symbols, symbols[1:]):
                counts[pair] += 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for word, symbols in pieces.items():
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = tuple(merged)


def build_tokenizer(words: Iterable[str], *, max_length: int = 32):
    """A CLIPTokenizer in which every grammar word is a single token (with and without ``</w>``).

    The vocabulary also holds a-z, 0-9 and common punctuation (with and without ``</w>``), so the
    captions' commas are tokens and unseen words still tokenize character by character instead
    of collapsing to the unknown token.
    """
    from transformers import CLIPTokenizer

    words = sorted({w.strip().lower() for w in words})
    bad = [w for w in words if not w.isalnum() or not w.isascii()]
    if bad or not words:
        raise ValueError(f"vocabulary words must be non-empty lowercase ASCII letters/digits, got {bad or words}")
    merges = learn_merges(words)
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for token in (BOS_TOKEN, EOS_TOKEN):
        add(token)
    for char in "abcdefghijklmnopqrstuvwxyz0123456789,.;:!?'-":
        add(char)
        add(char + END_OF_WORD)
    for left, right in merges:
        add(left + right)
    for word in words:
        add(word)
        add(word + END_OF_WORD)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=max_length)
    broken = [w for w in words if tokenizer.tokenize(w) != [w + END_OF_WORD]]
    if broken:  # cannot happen for BPE-trained merges; guards against tokenizer-library changes
        raise RuntimeError(f"tokenizer splits grammar words {broken}")
    return tokenizer


# ----------------------------------------------------------------------------- components


def build_text_encoder(config: ToyT2IConfig, tokenizer):
    """A randomly initialised CLIPTextModel sized by ``config`` for ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=4 * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=config.text_hidden,
    )
    return CLIPTextModel(text_config)


def build_vae(config: ToyT2IConfig):
    """A randomly initialised AutoencoderKL: resolution² × 3 → latent_size² × latent_channels."""
    from diffusers import AutoencoderKL

    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_groups,
        sample_size=config.resolution,
        scaling_factor=1.0,
    )


def build_unet(config: ToyT2IConfig):
    """A randomly initialised UNet2DConditionModel with cross-attention on all but the coarsest grid."""
    from diffusers import UNet2DConditionModel

    n = len(config.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_hidden,
        attention_head_dim=tuple(c // config.unet_head_dim for c in config.unet_channels),  # diffusers: = head count
        norm_num_groups=config.unet_norm_groups,
    )


def build_noise_scheduler(config: ToyT2IConfig):
    """The DDPM training schedule (SD's scaled-linear betas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=config.prediction_type,
        clip_sample=False,
    )


def build_sampling_scheduler(config: ToyT2IConfig):
    """The DDIM sampler shipped with the pipeline (same betas as training)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(build_noise_scheduler(config).config, set_alpha_to_one=False, steps_offset=1)


def assemble_pipeline(*, tokenizer, text_encoder, vae, unet, scheduler):
    """A plain diffusers StableDiffusionPipeline with no safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, directory: str | Path, *, defaults: dict[str, Any] | None = None, fp16: bool = True) -> Path:
    """Save ``pipe`` atomically as a diffusers directory (fp16 safetensors by default) plus defaults JSON."""
    from attnsynth.utils.io import atomic_directory, atomic_write_json

    directory = Path(directory)
    with atomic_directory(directory, overwrite=True) as tmp:
        if fp16:
            pipe = copy.deepcopy(pipe).to(dtype=torch.float16)  # leave the caller's modules in their dtype
        pipe.save_pretrained(tmp, safe_serialization=True)
        atomic_write_json(tmp / DEFAULTS_FILE, dict(defaults or TOY_T2I_DEFAULTS))
    return directory


def load_t2i_pipeline(path: str | Path | None = None, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load the shapes-world StableDiffusionPipeline (the shipped one by default), offline.

    ``dtype`` defaults to float32 (the weights ship in fp16 to stay small; fp16 on CPU is slow).
    The recommended call settings are in ``pipe.attnsynth_defaults`` (see :data:`TOY_T2I_DEFAULTS`).
    """
    from diffusers import StableDiffusionPipeline

    path = Path(path) if path is not None else ASSET_DIR
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(
        path, dtype=dtype or torch.float32, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe = pipe.to(device)
    pipe.attnsynth_defaults = recommended_settings(path) or dict(TOY_T2I_DEFAULTS)
    return pipe


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters in ``module``."""
    return sum(p.numel() for p in module.parameters())
