"""Editing with a trained SIS model: every edit is a choice of shape tokens and style tokens.

The generator renders ``decode(shape, style)``: shape tokens come from a mask (``embed_shape``,
linear in the mask for CA²-SIS), style tokens from an image (``encode_style``: one token per
class) or from the mapping network. So:

* :func:`reconstruct` — own shape, own style;
* :func:`transfer` — own shape; style tokens of the chosen classes (all when none) from a reference;
* :func:`swap_shape` — shape tokens of the chosen classes from a donor mask (no redrawing), own style;
* :func:`interpolate` — shape or style tokens blended with another image's, for one α or many;
* :func:`sample` — own shape, random styles from the mapping network.

Every function takes tensors (image [B, 3, H, W] in [-1, 1] or [3, H, W]; labels [B, H, W] or
[H, W] long) and returns an :class:`EditResult`. Class selections accept names, ids or presets
(``"hair,skin"``, ``"4,5"``, ``"eyes"``) resolved by the model's :class:`LabelSet`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from attnsynth.data.labelsets import LabelSet
from attnsynth.sis.checkpoint import MAPPING_WEIGHTS, load_labelset, readable_weights

ClassSpec = str | int | Sequence[int] | Sequence[str] | None


@dataclasses.dataclass(frozen=True)
class EditResult:
    """Images [N, 3, H, W] in [-1, 1] with the tokens that made them and, if asked, the attention logits."""

    images: torch.Tensor
    shape: torch.Tensor  # [N, C', D_shape] (CA²-SIS) or the one-hot [N, C, H, W] (SPADE)
    style: torch.Tensor  # [N, C, D_style]
    attention: list[torch.Tensor] | None = None  # per cross-attention layer: pre-softmax logits [N, C, h, w]


# ---- loading a trained run ------------------------------------------------------------------------
def load_model(run: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, label set) of a trained run directory (``config.json`` + ``model.safetensors``), in eval mode.

    The weights are cast to the compute ``dtype`` (float32 unless asked): a checkpoint stored in
    fp16 (the shipped ones) otherwise meets float32 inputs in its first layer.
    """
    from attnsynth.sis.model import WEIGHTS_NAME, SISModel

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"--checkpoint {run} is not a directory")
    with readable_weights(run / WEIGHTS_NAME):
        model = SISModel.from_pretrained(run, device=device, dtype=dtype).eval()
    return model, load_labelset(run, model.config.num_classes)


def load_mapping(run: str | Path, model) -> torch.nn.Module:
    """The mapping network trained by ``train_mapping`` (``RUN/mapping.safetensors``) for ``model``."""
    from attnsynth.sis.mapping import MappingNetwork
    from attnsynth.sis.model import load_safetensors

    path = Path(run) / MAPPING_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train the mapping network first (attnsynth sis train-mapping --checkpoint {run})")
    mapping = MappingNetwork(model.config)
    with readable_weights(path):
        load_safetensors(mapping, path)
    return mapping.to(model.device, model.dtype).eval()


def load_pair(image_path: str | Path | None, mask_path: str | Path, *, resolution: tuple[int, int],
              num_classes: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Read an image (optional) and its label map for editing: ([1, 3, H, W] in [-1, 1] | None, [1, H, W] long).

    Checks readability, value range and equal sizes (one-line errors naming the file), then resizes
    to the model's ``resolution`` (image bicubic, labels nearest).
    """
    from attnsynth.data.folders import read_image, read_labels
    from attnsynth.data.transforms import PairTransform

    mask_path = Path(mask_path)
    labels = read_labels(mask_path, num_classes)
    transform = PairTransform(resolution=tuple(resolution))
    if image_path is None:
        from PIL import Image

        image = Image.new("RGB", labels.size)
        return None, transform(image, labels)[1].unsqueeze(0)
    image_path = Path(image_path)
    image = read_image(image_path)
    if image.size != labels.size:
        raise ValueError(f"mask {mask_path} is {labels.size[1]}×{labels.size[0]} but image {image_path} is "
                         f"{image.size[1]}×{image.size[0]} (H×W); they must match")
    image_t, labels_t = transform(image, labels)
    return image_t.unsqueeze(0), labels_t.unsqueeze(0)


# ---- helpers ----------------------------------------------------------------------------------------
def _batch(model, image: torch.Tensor | None, labels: torch.Tensor, name: str = "labels") -> tuple[torch.Tensor | None, torch.Tensor]:
    """Add a batch dim if missing; move to the model; labels → one-hot [B, C, H, W]."""
    from attnsynth.sis.model import labels_to_onehot

    if labels.ndim == 2:
        labels = labels.unsqueeze(0)
    if labels.ndim != 3 or labels.dtype.is_floating_point:
        raise ValueError(f"{name} must be an integer label map [H, W] or [B, H, W], got {labels.dtype} {tuple(labels.shape)}")
    onehot = labels_to_onehot(labels.to(model.device), model.config.num_classes, dtype=model.dtype)
    if image is not None:
        if image.ndim == 3:
            image = image.unsqueeze(0)
        image = image.to(model.device, model.dtype)
        if image.shape[0] != onehot.shape[0] or image.shape[-2:] != onehot.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and {name} {tuple(labels.shape)} differ in batch or size")
    return image, onehot


def resolve_classes(classes: ClassSpec, label_set: LabelSet | None, num_classes: int) -> tuple[int, ...]:
    """Class selection → sorted ids, via ``label_set.resolve`` (names, ids, presets)."""
    if label_set is None:
        label_set = LabelSet(name="generic", class_names=tuple(f"class_{i}" for i in range(num_classes)))
    if label_set.num_classes != num_classes:
        raise ValueError(f"label set {label_set.name!r} has {label_set.num_classes} classes but the model has {num_classes}")
    if isinstance(classes, (list, tuple)) and classes and isinstance(classes[0], str):
        classes = ",".join(classes)
    return label_set.resolve(classes)


def shape_token_index(model, class_id: int) -> int:
    """Index along dim 1 of the shape tokens that belongs to ``class_id`` (the background may have none)."""
    cfg = model.config
    if cfg.arch == "ca2sis" and cfg.drop_background:
        if class_id == cfg.background_class:
            raise ValueError(f"class {class_id} is the background, which has no shape token in this model (drop_background)")
        return class_id - int(class_id > cfg.background_class)
    return class_id


def _alphas(alpha: float | Sequence[float]) -> list[float]:
    values = [float(alpha)] if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if not values:
        raise ValueError("alpha list is empty; expected e.g. 0.5 or [0, 0.25, 0.5, 0.75, 1]")
    return values


def _render(model, shape: torch.Tensor, style: torch.Tensor, return_attention: bool) -> EditResult:
    if return_attention:
        images, attention = model.decode(shape, style, return_attention=True)
        return EditResult(images=images, shape=shape, style=style, attention=list(attention))
    return EditResult(images=model.decode(shape, style), shape=shape, style=style)


# ---- the edits --------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct(model, image: torch.Tensor, labels: torch.Tensor, *, return_attention: bool = False) -> EditResult:
    """Own shape + own style: the model's reconstruction of ``image`` from its mask."""
    image, onehot = _batch(model, image, labels)
    return _render(model, model.embed_shape(onehot), model.encode_style(image, onehot), return_attention)


@torch.no_grad()
def transfer(model, image: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, reference_labels: torch.Tensor, *,
             classes: ClassSpec = None, label_set: LabelSet | None = None, return_attention: bool = False) -> EditResult:
    """Own shape; style tokens of ``classes`` from ``reference`` (every class when ``classes`` is None: global transfer)."""
    image, onehot = _batch(model, image, labels)
    reference, reference_onehot = _batch(model, reference, reference_labels, "reference_labels")
    if reference.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"reference batch {reference.shape[0]} must be 1 or equal the image batch {image.shape[0]}")
    reference_style = model.encode_style(reference, reference_onehot).expand(image.shape[0], -1, -1)
    if classes is None:
        style = reference_style.clone()
    else:
        ids = list(resolve_classes(classes, label_set, model.config.num_classes))
        style = model.encode_style(image, onehot).clone()
        style[:, ids] = reference_style[:, ids]
    return _render(model, model.embed_shape(onehot), style, return_attention)


@torch.no_grad()
def swap_shape(model, image: torch.Tensor, labels: torch.Tensor, donor_labels: torch.Tensor, *, classes: ClassSpec,
               label_set: LabelSet | None = None, return_attention: bool = False) -> EditResult:
    """Own style; shape tokens of ``classes`` taken from ``donor_labels`` (the mask is not redrawn)."""
    if classes is None:
        raise ValueError("swap_shape needs classes (e.g. 'hair'); to use the donor's whole mask, reconstruct with it")
    image, onehot = _batch(model, image, labels)
    _, donor_onehot = _batch(model, None, donor_labels, "donor_labels")
    ids = [shape_token_index(model, c) for c in resolve_classes(classes, label_set, model.config.num_classes)]
    shape = model.embed_shape(onehot).clone()
    donor_shape = model.embed_shape(donor_onehot).expand_as(shape)
    shape[:, ids] = donor_shape[:, ids]
    return _render(model, shape, model.encode_style(image, onehot), return_attention)


@torch.no_grad()
def interpolate(model, image: torch.Tensor, labels: torch.Tensor, other_image: torch.Tensor | None, other_labels: torch.Tensor, *,
                what: str = "shape", alpha: float | Sequence[float] = 0.5, classes: ClassSpec = None,
                label_set: LabelSet | None = None, return_attention: bool = False) -> EditResult:
    """Blend shape or style tokens (of ``classes``, default all) towards another image's: (1 − α)·own + α·other.

    ``what="shape"``: shape tokens from ``other_labels`` (``other_image`` unused, may be None), own style.
    ``what="style"``: style tokens from ``other_image``/``other_labels``, own shape. A list of α
    gives one output per α (α-major: all images of α₀, then α₁ …). α = 0 / 1 equal the pure edits.
    """
    if what not in ("shape", "style"):
        raise ValueError(f"what={what!r} is invalid; expected 'shape' or 'style'")
    alphas = _alphas(alpha)
    image, onehot = _batch(model, image, labels)
    shape = model.embed_shape(onehot)
    style = model.encode_style(image, onehot)
    ids = list(range(model.config.num_classes)) if classes is None else list(resolve_classes(classes, label_set, model.config.num_classes))
    if what == "shape":
        _, other_onehot = _batch(model, None, other_labels, "other_labels")
        own, other = shape, model.embed_shape(other_onehot).expand_as(shape)
        cfg = model.config
        tokenless = cfg.background_class if cfg.arch == "ca2sis" and cfg.drop_background else None  # no shape token
        index = [shape_token_index(model, c) for c in ids if c != tokenless]
    else:
        if other_image is None:
            raise ValueError("interpolate(what='style') needs other_image (the style source)")
        other_image, other_onehot = _batch(model, other_image, other_labels, "other_labels")
        own, other = style, model.encode_style(other_image, other_onehot).expand_as(style)
        index = ids
    shapes, styles = [], []
    for a in alphas:
        blended = own.clone()
        blended[:, index] = torch.lerp(own[:, index], other[:, index], a)
        shapes.append(blended if what == "shape" else shape)
        styles.append(blended if what == "style" else style)
    return _render(model, torch.cat(shapes), torch.cat(styles), return_attention)


@torch.no_grad()
def sample(model, mapping: torch.nn.Module, labels: torch.Tensor, *, n: int = 4, seed: int = 0, return_attention: bool = False) -> EditResult:
    """``n`` images of one mask with random styles z ~ N(0, I) through the mapping network (seeded)."""
    from attnsynth.sis.model import present_classes

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _, onehot = _batch(model, None, labels)
    if onehot.shape[0] != 1:
        raise ValueError(f"sample takes one mask, got a batch of {onehot.shape[0]}")
    generator = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, model.config.mapping_latent_dim, generator=generator).to(model.device, model.dtype)
    style = mapping(z, present_classes(onehot).expand(n, -1))
    shape = model.embed_shape(onehot)
    return _render(model, shape.expand(n, *shape.shape[1:]), style, return_attention)
