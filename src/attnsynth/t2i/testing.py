"""Tiny, offline Stable Diffusion components with random weights, for tests, demos and benchmarks.

Built the way diffusers' own tests build theirs (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel from configs), plus a real CLIP BPE tokenizer whose ``vocab.json`` and
``merges.txt`` are generated here from a small word list, so ordinary prompts ("a cat and a
dog", "a red circle and a blue square") tokenise into whole-word tokens. A few words are
multi-token on purpose ("sunflower" → "sun" + "flower"); unknown words fall back to characters.

Nothing here touches the network; everything is deterministic for a given seed.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MULTI_TOKEN_WORDS",
    "VOCABULARY",
    "sd14_map_shaped_unet_config",
    "sd15_shaped_unet_config",
    "tiny_sd_components",
    "tiny_sd_pipeline",
    "tiny_sdxl_components",
    "tiny_sdxl_pipeline",
    "tiny_flux_components",
    "tiny_flux_pipeline",
    "tiny_sd3_components",
    "tiny_sd3_pipeline",
    "tiny_t5_tokenizer",
    "tiny_tokenizer",
]

# Whole words of the tiny vocabulary (each one token).
VOCABULARY = tuple(
    """
    a an the and with of on in at to next near under above behind beside is are one two three
    photo picture image painting drawing sitting standing playing running lying flying
    red orange yellow green blue purple pink brown gray grey black white golden silver
    circle square triangle star heart hexagon cross ring ball box cube
    cat dog bird bear lion horse elephant monkey frog turtle rabbit mouse kitten puppy
    backpack glasses crown suitcase chair balloon bow car bowl bench clock apple
    flower tree house boat cup table grass field beach street sky man woman child
    big small large tiny tall striped spotted wooden metal glass shiny round fluffy cute
    teddy bus train book lamp bottle vase hat shoe sock
    """.split()
)
# Words made of several tokens on purpose: prefix pieces (no end-of-word marker) + a final word.
MULTI_TOKEN_WORDS = {"sunflower": ("sun", "flower"), "cheeseburger": ("cheese", "burger"), "skateboard": ("skate", "board")}

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte → a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _learn_merges(pieces: list[list[str]]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn every piece into one symbol (most frequent pair first)."""
    pieces = [list(p) for p in pieces]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for p in pieces for pair in zip(p, p[1:]))
        if not counts:
            return merges
        best = max(counts, key=lambda pair: (counts[pair], pair))
        merges.append(best)
        for p in pieces:
            i = 0
            while i < len(p) - 1:
                if (p[i], p[i + 1]) == best:
                    p[i : i + 2] = [p[i] + p[i + 1]]
                i += 1


@functools.lru_cache(maxsize=1)
def _tokenizer_files() -> Path:
    """Write the tiny vocab.json + merges.txt once per process into a temporary directory."""
    finals = sorted(set(VOCABULARY) | {parts[-1] for parts in MULTI_TOKEN_WORDS.values()})
    prefixes = sorted({piece for parts in MULTI_TOKEN_WORDS.values() for piece in parts[:-1]})
    pieces = [list(word[:-1]) + [word[-1] + "</w>"] for word in finals] + [list(piece) for piece in prefixes]
    merges = _learn_merges(pieces)
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(pair) for pair in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    directory = Path(tempfile.mkdtemp(prefix="attnsynth-tiny-clip-"))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return directory


def tiny_tokenizer(*, model_max_length: int = 77):
    """A CLIPTokenizer built offline from a generated vocab.json + merges.txt (about 1,200 tokens)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(_tokenizer_files()), model_max_length=model_max_length)


def _tiny_text_encoder(tokenizer, *, hidden_size: int, seed: int, with_projection: bool = False, projection_dim: int | None = None):
    """A 2-layer CLIP text encoder of width ``hidden_size`` (projection ``projection_dim``, default the width), random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)
    return model.eval()


def _tiny_vae(*, seed: int, down_levels: int = 2, latent_channels: int = 4, **extra: Any):
    """A small AutoencoderKL that downsamples ``2**(down_levels-1)``× into ``latent_channels`` (``extra``: more config)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * down_levels,
        up_block_types=("UpDecoderBlock2D",) * down_levels,
        block_out_channels=(8,) * down_levels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=32,
        **extra,
    ).eval()


def _scheduler(name: str):
    """SD's PNDM (``"pndm"``), DDIM (``"ddim"``) or SDXL's Euler (``"euler"``), SD's beta schedule."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
    if name == "pndm":
        return PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **common)
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common)
    if name == "euler":
        return EulerDiscreteScheduler(**common)
    raise ValueError(f"scheduler {name!r} is not one of 'pndm', 'ddim', 'euler'")


def _tiny_unet_config(sample_size: int, block_out_channels: tuple[int, ...], cross_attention_dim: int, **extra: Any) -> dict[str, Any]:
    """UNet2DConditionModel kwargs of the tiny SD-shaped UNets: plain top level, cross-attention below, one layer per block."""
    levels = len(block_out_channels)
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        block_out_channels=block_out_channels,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=4,
        **extra,
    )


def tiny_sd_components(
    *,
    seed: int = 0,
    sample_size: int = 32,
    cross_attention_dim: int = 32,
    block_out_channels: tuple[int, ...] = (8, 16, 16),
    attention_heads: int = 2,
    scheduler: str = "pndm",
    vae_levels: int = 2,
    unet_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Components of a tiny SD-1.x pipeline: a 3-level UNet with cross-attention at the two lower levels.

    The latent is ``sample_size``²; the default map grid (latent/4, the SD ``H/32`` grid) is the
    lowest level (8×8 for 32²), read by down_blocks.2, the mid block and up_blocks.0. The VAE
    downsamples ``2**(vae_levels-1)``× (2× by default, 8× as SD with ``vae_levels=4``).
    ``unet_config`` replaces the UNet (e.g. :func:`sd15_shaped_unet_config`); the text encoder
    then takes its ``cross_attention_dim``.
    """
    from diffusers import UNet2DConditionModel

    if unet_config is None:
        unet_config = _tiny_unet_config(sample_size, block_out_channels, cross_attention_dim,
                                        attention_head_dim=attention_heads)  # diffusers' legacy name: the number of heads
    cross_attention_dim = unet_config["cross_attention_dim"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config).eval()
    tokenizer = tiny_tokenizer()
    return {
        "unet": unet,
        "vae": _tiny_vae(seed=seed + 1, down_levels=vae_levels),
        "text_encoder": _tiny_text_encoder(tokenizer, hidden_size=cross_attention_dim, seed=seed + 2),
        "tokenizer": tokenizer,
        "scheduler": _scheduler(scheduler),
        "safety_checker": None,
        "feature_extractor": None,
    }


def tiny_sd_pipeline(*, pipeline_class: type | None = None, device: str | torch.device = "cpu", **component_kwargs):
    """A tiny SD-1.x pipeline (``StableDiffusionPipeline`` unless ``pipeline_class`` is given), progress bar off."""
    from diffusers import StableDiffusionPipeline

    pipeline_class = pipeline_class or StableDiffusionPipeline
    pipe = pipeline_class(**tiny_sd_components(**component_kwargs), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def tiny_sdxl_components(
    *,
    seed: int = 0,
    sample_size: int = 32,
    text_dim: int = 32,
    block_out_channels: tuple[int, ...] = (8, 16, 16),
    scheduler: str = "euler",
) -> dict[str, Any]:
    """Components of a tiny SDXL pipeline: two text encoders (the second with projection), text-time UNet."""
    from diffusers import UNet2DConditionModel

    levels = len(block_out_channels)
    time_embed_dim = 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_tiny_unet_config(
        sample_size,
        block_out_channels,
        2 * text_dim,  # the two encoders' hidden states, concatenated
        attention_head_dim=(2,) * levels,
        transformer_layers_per_block=(1,) * (levels - 1) + (2,),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_dim,
    )).eval()
    tokenizer = tiny_tokenizer()
    return {
        "unet": unet,
        "vae": _tiny_vae(seed=seed + 1),
        "text_encoder": _tiny_text_encoder(tokenizer, hidden_size=text_dim, seed=seed + 2),
        "text_encoder_2": _tiny_text_encoder(tokenizer, hidden_size=text_dim, seed=seed + 3, with_projection=True),
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
        "scheduler": _scheduler(scheduler),
    }


def tiny_sdxl_pipeline(*, pipeline_class: type | None = None, device: str | torch.device = "cpu", **component_kwargs):
    """A tiny SDXL pipeline (``StableDiffusionXLPipeline`` unless ``pipeline_class`` is given), no watermark."""
    from diffusers import StableDiffusionXLPipeline

    pipeline_class = pipeline_class or StableDiffusionXLPipeline
    pipe = pipeline_class(**tiny_sdxl_components(**component_kwargs), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sd15_shaped_unet_config(scale: float = 0.1) -> dict[str, Any]:
    """UNet2DConditionModel config shaped like SD 1.5's (4 levels, cross-attention at 3), widths × ``scale``.

    ``scale=0.1`` gives channels (32, 64, 128, 128), an 80-dim text width and about 8.6 M
    parameters: the real network's layout and layer count at a CPU-friendly size.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale {scale} must be in (0, 1]")
    groups = 32 if scale >= 0.1 else 8
    channels = tuple(max(groups, round(c * scale / groups) * groups) for c in (320, 640, 1280, 1280))
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": channels,
        "layers_per_block": 2,
        "attention_head_dim": 8,  # diffusers' legacy name: 8 heads, as SD 1.5
        "cross_attention_dim": max(8, round(768 * scale / 8) * 8),
        "norm_num_groups": groups,
    }


# -- MMDiT families (SD3 / SD3.5, FLUX) ------------------------------------------------------
# T5's SentencePiece vocabulary as (piece, log-probability) pairs: "▁word" for every whole word,
# the multi-token words split as for CLIP ("▁sun" + "flower"), a plural "s", punctuation, and
# single characters as the fall-back. Whole pieces score higher than any split into characters.
_T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def _t5_vocabulary() -> list[tuple[str, float]]:
    words = sorted(set(VOCABULARY) | {parts[-1] for parts in MULTI_TOKEN_WORDS.values()})
    pieces = [(token, 0.0) for token in _T5_SPECIALS]
    pieces += [("▁" + word, -5.0) for word in words]
    pieces += [("▁" + parts[0], -6.0) for parts in MULTI_TOKEN_WORDS.values()]
    pieces += [(part, -6.0) for parts in MULTI_TOKEN_WORDS.values() for part in parts[1:]]
    pieces += [("s", -7.0), (",", -7.0), (".", -7.0), ("▁", -8.0)]
    pieces += [(c, -12.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789-'"]
    return list(dict(pieces).items())


def tiny_t5_tokenizer():
    """A T5 (Unigram) tokenizer built offline from an in-memory vocabulary (no sentencepiece file)."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=_t5_vocabulary(), extra_ids=0)


def _tiny_t5_encoder(tokenizer, *, d_model: int, seed: int):
    """A 2-layer T5 encoder of width ``d_model`` with random weights."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def _tiny_flow_vae(*, seed: int, latent_channels: int):
    """A small AutoencoderKL as SD3/FLUX use it (shift factor, no quant convs)."""
    return _tiny_vae(
        seed=seed, latent_channels=latent_channels, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )


def tiny_sd3_components(
    *,
    seed: int = 0,
    sample_size: int = 16,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 8,
    qk_norm: str | None = None,
    dual_attention_layers: tuple[int, ...] = (),
    clip_dim: int = 16,
    patch_size: int = 1,
) -> dict[str, Any]:
    """Components of a tiny SD3 pipeline (``qk_norm="rms_norm"`` + ``dual_attention_layers`` = SD3.5-shaped).

    The two CLIP encoders are ``clip_dim`` wide with 2·clip_dim projections: their concatenated
    hidden states (2·clip_dim) must equal T5's width (``joint_attention_dim``), or diffusers
    silently crops the CLIP-G features when it pads the CLIP rows to the T5 width.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    joint_dim = 2 * clip_dim
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=patch_size,
        in_channels=4,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_dim,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=4 * clip_dim,  # the two CLIP projections (2·clip_dim each), concatenated
        pos_embed_max_size=2 * sample_size,
        qk_norm=qk_norm,
        dual_attention_layers=dual_attention_layers,
    ).eval()
    tokenizer, t5_tokenizer = tiny_tokenizer(), tiny_t5_tokenizer()

    def clip(seed_offset: int):
        return _tiny_text_encoder(
            tokenizer, hidden_size=clip_dim, seed=seed + seed_offset, with_projection=True, projection_dim=2 * clip_dim
        )

    return {
        "transformer": transformer,
        "vae": _tiny_flow_vae(seed=seed + 1, latent_channels=4),
        "text_encoder": clip(2),
        "text_encoder_2": clip(3),
        "text_encoder_3": _tiny_t5_encoder(t5_tokenizer, d_model=joint_dim, seed=seed + 4),
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
        "tokenizer_3": t5_tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "image_encoder": None,
        "feature_extractor": None,
    }


def _assembled(default_class: str, pipeline_class: type | None, components: dict[str, Any], device) -> Any:
    """``pipeline_class`` (default: diffusers' ``default_class``) built from ``components``, progress bar off."""
    import diffusers

    pipe = (pipeline_class or getattr(diffusers, default_class))(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def tiny_sd3_pipeline(*, pipeline_class: type | None = None, device: str | torch.device = "cpu", **component_kwargs):
    """A tiny SD3 pipeline (``StableDiffusion3Pipeline`` unless ``pipeline_class`` is given), progress bar off."""
    return _assembled("StableDiffusion3Pipeline", pipeline_class, tiny_sd3_components(**component_kwargs), device)


def tiny_flux_components(
    *,
    seed: int = 0,
    num_layers: int = 2,
    num_single_layers: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
) -> dict[str, Any]:
    """Components of a tiny FLUX.1 pipeline (guidance-distilled, as FLUX.1-dev).

    The VAE has ``in_channels // 4`` latent channels: FLUX packs 2×2 latent patches into one
    token. Give the pipeline an explicit ``height``/``width`` (its default is 1024²).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    in_channels = 4
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, head_dim - 8),
    ).eval()
    tokenizer, t5_tokenizer = tiny_tokenizer(), tiny_t5_tokenizer()
    return {
        "transformer": transformer,
        "vae": _tiny_flow_vae(seed=seed + 1, latent_channels=in_channels // 4),
        "text_encoder": _tiny_text_encoder(tokenizer, hidden_size=text_dim, seed=seed + 2),
        "text_encoder_2": _tiny_t5_encoder(t5_tokenizer, d_model=text_dim, seed=seed + 3),
        "tokenizer": tokenizer,
        "tokenizer_2": t5_tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_flux_pipeline(*, pipeline_class: type | None = None, device: str | torch.device = "cpu", **component_kwargs):
    """A tiny FLUX pipeline (``FluxPipeline`` unless ``pipeline_class`` is given), progress bar off."""
    return _assembled("FluxPipeline", pipeline_class, tiny_flux_components(**component_kwargs), device)


def sd14_map_shaped_unet_config(cross_attention_dim: int = 32) -> dict[str, Any]:
    """A tiny UNet whose 16×16 maps come from the layers SD 1.4 reads at 512²: 2 down + 3 up.

    Blocks Down / CrossAttnDown / CrossAttnDown (channels 32, 64, 64), 2 layers per block,
    8 heads, latent 32²: the 16² level has 2 down-block and 3 up-block cross-attention layers,
    as SD 1.4's down_blocks.2 / up_blocks.1. Used by the AI-T2I parity test (with
    ``tiny_sd_components(unet_config=..., seed=0)``, the weights the authors' pipeline ran on).
    """
    return {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 2,
        "attention_head_dim": 8,  # diffusers' legacy name: 8 heads, as SD 1.4
        "cross_attention_dim": cross_attention_dim,
        "norm_num_groups": 8,
    }
