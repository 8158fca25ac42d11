"""`SISModel`: style encoder + mask embedder + generator behind one interface, with save/load.

``forward(image, onehot) = decode(embed_shape(onehot), encode_style(image, onehot))`` — a
reconstruction. Edits work on the token tensors in between (index along dim 1 = class). The same
interface serves CA²-SIS (``config.arch == "ca2sis"``) and the SPADE-style baseline (``"spade"``,
whose "shape" is the one-hot mask itself and which returns no attention).

Checkpoints are directories: ``config.json`` + ``model.safetensors`` (+ any extra ``NAME.safetensors``
such as a discriminator or EMA weights), written atomically; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from attnsynth.sis.configs import SISConfig
from attnsynth.sis.discriminator import MultiscaleDiscriminator
from attnsynth.sis.generator import CA2SISGenerator
from attnsynth.sis.mapping import MappingNetwork
from attnsynth.sis.mask_embedder import MaskEmbedder
from attnsynth.sis.spade import SPADEGenerator
from attnsynth.sis.style_encoder import StyleEncoder
from attnsynth.utils.io import atomic_directory, atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def labels_to_onehot(labels: torch.Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Label maps [B, H, W] (integers in [0, C)) → one-hot float masks [B, C, H, W]."""
    if labels.ndim != 3 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer tensor [B, H, W]; got {labels.dtype} with shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels contain values in [{int(labels.min())}, {int(labels.max())}]; expected 0..{num_classes - 1}")
    onehot = torch.zeros(labels.shape[0], num_classes, *labels.shape[1:], dtype=dtype, device=labels.device)
    return onehot.scatter_(1, labels.unsqueeze(1).long(), 1.0)


def present_classes(onehot: torch.Tensor) -> torch.Tensor:
    """One-hot masks [B, C, H, W] → [B, C] bool: which classes occupy at least one pixel."""
    return onehot.flatten(2).amax(dim=-1) > 0


class SISModel(nn.Module):
    """Semantic image synthesis model: `encode_style`, `embed_shape`, `decode`, `forward` (reconstruction)."""

    def __init__(self, config: SISConfig) -> None:
        super().__init__()
        self.config = config
        c = config.num_classes
        self.style_encoder = StyleEncoder(num_classes=c, width=config.style_width, downsamples=config.style_downsamples,
                                          levels=config.style_levels, level_dim=config.style_level_dim)
        if config.arch == "ca2sis":
            self.mask_embedder: MaskEmbedder | None = MaskEmbedder(
                num_classes=c, grid=config.shape_grid, out_dim=config.shape_dim,
                drop_background=config.drop_background, background_class=config.background_class)
            self.generator: nn.Module = CA2SISGenerator(
                num_shape_tokens=config.num_shape_tokens, start_size=config.start_size, style_dim=config.style_dim,
                base_channels=config.base_channels, stage_channels=config.stage_channels, stage_heads=config.stage_heads,
                stage_head_dim=config.stage_head_dim, self_attention=config.self_attention, ff_mult=config.ff_mult,
                norm_groups=config.norm_groups, reference_kernels=config.kernels == "reference",
                gradient_checkpointing=config.gradient_checkpointing)
        else:
            self.mask_embedder = None
            self.generator = SPADEGenerator(
                num_classes=c, start_size=config.start_size, style_dim=config.style_dim,
                base_channels=config.base_channels, stage_channels=config.stage_channels,
                hidden=config.spade_hidden, style_channels=config.spade_style_channels)

    # ---- input checks (one-line errors naming the argument) --------------------------------------
    def _check_mask(self, onehot: torch.Tensor, name: str = "onehot") -> None:
        expected = (self.config.num_classes, *self.config.resolution)
        if onehot.ndim != 4 or tuple(onehot.shape[1:]) != expected:
            raise ValueError(f"{name} has shape {tuple(onehot.shape)}; expected [B, {', '.join(map(str, expected))}] "
                             "(use labels_to_onehot)")

    def _check_image(self, image: torch.Tensor) -> None:
        expected = (3, *self.config.resolution)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(f"image has shape {tuple(image.shape)}; expected [B, {', '.join(map(str, expected))}]")

    # ---- the interface ---------------------------------------------------------------------------
    def encode_style(self, image: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1], onehot [B, C, H, W] → style tokens [B, C, D_style] (absent: learned constant)."""
        self._check_image(image)
        self._check_mask(onehot)
        return self.style_encoder(image, onehot.to(image.dtype))

    def embed_shape(self, onehot: torch.Tensor) -> torch.Tensor:
        """onehot [B, C, H, W] → shape tokens [B, C', D_shape] (CA²-SIS) or the one-hot itself (SPADE)."""
        self._check_mask(onehot)
        onehot = onehot.to(self.dtype)
        return onehot if self.mask_embedder is None else self.mask_embedder(onehot)

    def decode(self, shape: torch.Tensor, style: torch.Tensor, *, return_attention: bool = False):
        """Shape + style tokens → image [B, 3, H, W] in [-1, 1]; with `return_attention` also a list of
        head-averaged pre-softmax cross-attention logits [B, C, h_l, w_l], one per layer (empty for SPADE)."""
        cfg = self.config
        if style.ndim != 3 or tuple(style.shape[1:]) != (cfg.num_classes, cfg.style_dim):
            raise ValueError(f"style has shape {tuple(style.shape)}; expected [B, {cfg.num_classes}, {cfg.style_dim}]")
        if self.mask_embedder is None:
            self._check_mask(shape, "shape")
        elif shape.ndim != 3 or tuple(shape.shape[1:]) != (cfg.num_shape_tokens, cfg.shape_dim):
            raise ValueError(f"shape has shape {tuple(shape.shape)}; expected [B, {cfg.num_shape_tokens}, {cfg.shape_dim}]")
        if shape.shape[0] != style.shape[0]:
            raise ValueError(f"shape batch {shape.shape[0]} != style batch {style.shape[0]}")
        image, logits = self.generator(shape, style)
        return (image, logits) if return_attention else image

    def forward(self, image: torch.Tensor, onehot: torch.Tensor, *, return_attention: bool = False):
        """Reconstruction: decode(embed_shape(onehot), encode_style(image, onehot))."""
        return self.decode(self.embed_shape(onehot), self.encode_style(image, onehot), return_attention=return_attention)

    # ---- utilities -------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def absent_tokens(self) -> torch.Tensor:
        """The learned token each class gets when absent from the reference image: [C, D_style]."""
        return self.style_encoder.absent_tokens()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Turn activation recomputation on/off (CA²-SIS generator); the config records the choice."""
        if isinstance(self.generator, CA2SISGenerator):
            self.generator.set_gradient_checkpointing(enabled)
            self.config = self.config.replace(gradient_checkpointing=bool(enabled))

    def save_pretrained(self, directory: str | os.PathLike, *, extra_state_dicts: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                        overwrite: bool = False) -> Path:
        """Write `config.json` + `model.safetensors` (+ `NAME.safetensors` per extra state dict) as one atomic directory."""
        extra = dict(extra_state_dicts or {})
        for name in extra:
            if not name.replace("_", "").replace("-", "").isalnum() or name == WEIGHTS_NAME.split(".")[0]:
                raise ValueError(f"extra_state_dicts key {name!r} must be a plain file stem other than 'model'")
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            data = {"_class_name": type(self).__name__, **self.config.to_dict()}
            (tmp / CONFIG_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            _save_state_dict(self.state_dict(), tmp / WEIGHTS_NAME)
            for name, state in extra.items():
                _save_state_dict(state, tmp / f"{name}.safetensors")
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, weights_name: str = WEIGHTS_NAME) -> "SISModel":
        """Load a directory written by `save_pretrained`; `weights_name` picks e.g. an EMA file in it."""
        directory = Path(directory)
        config = load_config(directory)
        with torch.device("meta"):
            model = cls(config)
        load_safetensors(model, directory / weights_name, assign=True)
        return model.to(device=device, dtype=dtype)


def load_config(directory: str | os.PathLike) -> SISConfig:
    """Read `config.json` of a checkpoint directory."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a checkpoint directory written by save_pretrained")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    return SISConfig.from_dict({k: v for k, v in data.items() if not k.startswith("_")})


def _save_state_dict(state: Mapping[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))


def save_safetensors(module_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a module's (or a state dict's) tensors to one `.safetensors` file atomically."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    with atomic_path(path) as tmp:
        _save_state_dict(state, tmp)


def load_safetensors(module: nn.Module, path: str | os.PathLike, *, strict: bool = True, assign: bool = False) -> nn.Module:
    """Load a `.safetensors` file into `module` (e.g. a discriminator or EMA copy); key mismatch → ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    device = None if assign else next(iter(module.state_dict().values()), torch.empty(0)).device
    state = load_file(str(path), device=str(device) if device is not None and device.type != "meta" else "cpu")
    result = module.load_state_dict(state, strict=False, assign=assign)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise ValueError(f"{path} does not match {type(module).__name__}: missing {result.missing_keys[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]} (of {len(result.missing_keys)}/{len(result.unexpected_keys)})")
    return module


def build_model(config: SISConfig, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SISModel:
    """A freshly initialised `SISModel` (CA²-SIS or SPADE, by `config.arch`)."""
    return SISModel(config).to(device=device, dtype=dtype)


def build_discriminator(config: SISConfig, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> MultiscaleDiscriminator:
    """The multiscale PatchGAN discriminator for `config` (input: one-hot ⊕ image)."""
    return MultiscaleDiscriminator(num_classes=config.num_classes, scales=config.disc_scales,
                                   channels=config.disc_channels, layers=config.disc_layers).to(device=device, dtype=dtype)


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(config: SISConfig) -> dict[str, int]:
    """Parameters per module (built on the meta device, no memory): style_encoder, mask_embedder, decoder,
    discriminator, mapping_network (random styles), total."""
    with torch.device("meta"):
        model = SISModel(config)
        discriminator = build_discriminator(config)
        mapping = MappingNetwork(config)
    counts = {
        "style_encoder": _count(model.style_encoder),
        "mask_embedder": _count(model.mask_embedder),
        "decoder": _count(model.generator),
        "discriminator": _count(discriminator),
        "mapping_network": _count(mapping),
    }
    counts["total"] = sum(counts.values())
    return counts
