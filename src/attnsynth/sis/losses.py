"""CA²-SIS training losses as pure functions (plus the VGG19 perceptual module), formulas in docstrings.

Notation: D_k is scale k of the K-scale discriminator, f_kl its l-th intermediate feature (the last
entry of each scale's list is the patch logits), x a real image, G the generated one, m the one-hot
mask. Official weights (`LossWeights`): L_G = 1·hinge_G + 10·L_FM + 10·L_VGG + 1·L_att (+ 0·L1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Outputs = Sequence[Sequence[torch.Tensor]]  # discriminator output: per scale, [features…, logits]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms (paper defaults: gan 1, fm 10, vgg 10, att 1, l1 0)."""

    gan: float = 1.0
    fm: float = 10.0
    vgg: float = 10.0
    att: float = 1.0
    l1: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gan", "fm", "vgg", "att", "l1"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"LossWeights.{name}={value!r} is invalid: expected a number >= 0")

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ weight_name · terms[name] over the given terms (names: gan, fm, vgg, att, l1)."""
        unknown = set(terms) - {"gan", "fm", "vgg", "att", "l1"}
        if unknown:
            raise ValueError(f"loss terms {sorted(unknown)} unknown; expected gan, fm, vgg, att, l1")
        return sum(getattr(self, name) * value for name, value in terms.items())


def hinge_d_loss(real_outputs: Outputs, fake_outputs: Outputs) -> torch.Tensor:
    """L_D = 1/K Σ_k [ mean(relu(1 − D_k(x))) + mean(relu(1 + D_k(G))) ]."""
    terms = [F.relu(1 - real[-1]).mean() + F.relu(1 + fake[-1]).mean() for real, fake in zip(real_outputs, fake_outputs)]
    return torch.stack(terms).mean()


def hinge_g_loss(fake_outputs: Outputs) -> torch.Tensor:
    """L_GAN(G) = −1/K Σ_k mean(D_k(G))."""
    return -torch.stack([fake[-1].mean() for fake in fake_outputs]).mean()


def feature_matching_loss(fake_outputs: Outputs, real_outputs: Outputs) -> torch.Tensor:
    """L_FM = 1/K Σ_k Σ_l mean|f_kl(G) − sg(f_kl(x))| over the intermediate features (logits excluded)."""
    per_scale = [
        sum(F.l1_loss(f, r.detach()) for f, r in zip(fake[:-1], real[:-1]))
        for fake, real in zip(fake_outputs, real_outputs)
    ]
    return torch.stack([torch.as_tensor(s) for s in per_scale]).mean()


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L_1 = mean|G − x| (pixel reconstruction; weight 0 in the paper)."""
    return F.l1_loss(fake, real)


def attention_loss(logits: Sequence[torch.Tensor], onehot: torch.Tensor) -> torch.Tensor:
    """L_att = 1/L Σ_l 1/C Σ_c BCEWithLogits(a_lc, nearest(m_c, size_l)), each BCE a mean over batch and pixels.

    `logits`: head-averaged pre-softmax cross-attention logits [B, C, h_l, w_l] per layer (any h_l, w_l,
    square or not); `onehot` [B, C, H, W]. The mask is nearest-resized to each layer's (h_l, w_l).
    """
    if not logits:
        raise ValueError("attention_loss got no logits: the model returned no cross-attention layers (SPADE?)")
    losses = []
    for layer in logits:
        if layer.ndim != 4 or layer.shape[:2] != onehot.shape[:2]:
            raise ValueError(f"attention logits have shape {tuple(layer.shape)}; expected [{onehot.shape[0]}, {onehot.shape[1]}, h, w]")
        target = F.interpolate(onehot.to(layer.dtype), size=layer.shape[-2:], mode="nearest")
        losses.append(F.binary_cross_entropy_with_logits(layer, target))  # equal class sizes ⇒ mean = mean over classes
    return torch.stack(losses).mean()


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, *, projections: int = 128, generator: torch.Generator | None = None) -> torch.Tensor:
    """SW₂² between two equal-size sample sets [N, D]: mean over random unit directions θ of mean (sort(aθ) − sort(bθ))².

    Used by the opt-in token term of the mapping stage (mapped tokens vs real style tokens, flattened per face).
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs two [N, D] sets of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    theta = torch.randn(a.shape[1], projections, generator=generator, device=a.device, dtype=a.dtype)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return ((a @ theta).sort(dim=0).values - (b @ theta).sort(dim=0).values).square().mean()


# ---- VGG19 perceptual loss --------------------------------------------------------------------------
_VGG19_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)  # up to conv5_1
_TAPS = (1, 6, 11, 20, 29)  # indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in torchvision's vgg19.features
_TAP_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """VGG19 `features[0:30]` (torchvision layout and key names) returning relu1_1 … relu5_1."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG19_CONVS:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                taps.append(x)
        return taps


def load_vgg19_weights(module: VGG19Features, path: str | os.PathLike) -> None:
    """Load `.safetensors` or a torchvision-format state dict (`torch.load(weights_only=True)`) into `module`.

    Keys may be torchvision's (`features.0.weight`, classifier keys ignored) or bare (`0.weight`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG19 weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling refusal is a bad file
            raise ValueError(f"VGG19 weights file {path} is not a weights-only torch state dict: {type(error).__name__}") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"VGG19 weights file {path} holds a {type(state).__name__}; expected a state dict")
    wanted = module.state_dict()
    picked = {}
    for key in wanted:
        for candidate in (key, key.removeprefix("features."), f"module.{key}"):
            if candidate in state:
                picked[key] = state[candidate]
                break
    missing = [k for k in wanted if k not in picked]
    if missing:
        raise ValueError(f"VGG19 weights file {path} lacks {len(missing)} tensors, e.g. {missing[0]!r}; expected torchvision vgg19 keys")
    for key, value in picked.items():
        if tuple(value.shape) != tuple(wanted[key].shape):
            raise ValueError(f"VGG19 weights file {path}: {key} has shape {tuple(value.shape)}; expected {tuple(wanted[key].shape)}")
    module.load_state_dict(picked)


class VGGPerceptualLoss(nn.Module):
    """L_VGG = Σ_i w_i · mean|φ_i(G) − sg(φ_i(x))|, φ_i = VGG19 relu{1..5}_1, w = (1/32, 1/16, 1/8, 1/4, 1).

    Images in [-1, 1] are mapped to ImageNet-normalised [0, 1] first. Needs local VGG19 weights:
    with `weights_path=None` it raises, unless `allow_random=True` (random weights — only for tests
    and timing, the loss is then meaningless).
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, *, allow_random: bool = False,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if weights_path is None and not allow_random:
            raise ValueError("weights_path is None: the VGG19 perceptual loss needs local VGG19 weights "
                             "(.safetensors or a torchvision state dict); pass a path or set the vgg weight to 0")
        self.vgg = VGG19Features()
        if weights_path is not None:
            load_vgg19_weights(self.vgg, weights_path)
        self.vgg.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.to(device=device, dtype=dtype)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        super().train(mode)
        self.vgg.eval()  # fixed feature extractor
        return self

    def _features(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.vgg(((image + 1) / 2 - self.mean) / self.std)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """fake, real [B, 3, H, W] in [-1, 1] → scalar loss (gradients flow into `fake` only)."""
        with torch.no_grad():
            real_features = self._features(real)
        fake_features = self._features(fake)
        return sum(w * F.l1_loss(f, r) for w, f, r in zip(_TAP_WEIGHTS, fake_features, real_features))
