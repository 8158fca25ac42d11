"""Capture of cross-attention probabilities from a diffusers ``UNet2DConditionModel``.

Diffusers' default attention processor (SDPA) never materialises the attention probabilities.
:class:`AttentionCapture` swaps a capturing processor onto the few cross-attention (``attn2``)
layers whose query grid is the requested resolution, leaves every other layer on its original
processor, and puts the original processors back when it is closed. It works in three modes:

* off (default): the capturing processors call the layer's original processor, so outputs are
  bit-identical to an uncaptured UNet;
* ``guiding()``: probabilities computed explicitly (softmax of ``QKᵀ/√d``) and used for the
  layer's output, kept *with* their autograd graph; optionally the forward pass is stopped right
  after the last captured layer (``forward_until_captured``), so a loss on the maps
  backpropagates only through the part of the UNet that produced them;
* ``observing(cond)``: the original processor computes the output (bit-identical images) and
  the probabilities of the conditional batch rows are computed on the side, detached.

``maps()`` returns the captured probabilities averaged over heads and layers, ``[B, h, w, T]``.
This module imports nothing from ``attnsynth.sis`` or ``attnsynth.t2i``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

__all__ = [
    "AttentionCapture",
    "CrossAttentionLayer",
    "cross_attention_layers",
    "default_attention_res",
]

# Latent downsamplings between the latent and the default map grid: SD's VAE downsamples 8×, so
# this is the (H/32, W/32) grid of the image that Attend-and-Excite reads (16×16 at 512²).
DEFAULT_DOWNSAMPLINGS = 2
_SEGMENT_RANK = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


class _StopForward(Exception):
    """Raised by the last capturing processor to end a guided forward pass early (internal)."""


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer of a UNet: its module name and where it sits."""

    name: str  # module path, e.g. "down_blocks.2.attentions.0.transformer_blocks.0.attn2"
    downsamplings: int  # number of 2× downsamplings between the latent and its query grid
    order: tuple[int, ...]  # sorts layers in forward order

    def grid(self, latent_size: tuple[int, int]) -> tuple[int, int]:
        """Query grid ``(h, w)`` of this layer for a latent of ``latent_size`` (stride-2 convs round up)."""
        height, width = latent_size
        for _ in range(self.downsamplings):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        return height, width


def default_attention_res(latent_size: tuple[int, int]) -> tuple[int, int]:
    """Default map grid: two downsamplings below the latent, i.e. (H/32, W/32) of an SD image."""
    return CrossAttentionLayer("", DEFAULT_DOWNSAMPLINGS, ()).grid(latent_size)


def cross_attention_layers(unet: torch.nn.Module) -> list[CrossAttentionLayer]:
    """Every ``attn2`` layer of a ``UNet2DConditionModel``-shaped UNet, in forward order."""
    if not all(hasattr(unet, attr) for attr in ("down_blocks", "up_blocks", "attn_processors")):
        raise ValueError(f"unet: expected a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    down_flags = [getattr(block, "downsamplers", None) is not None for block in unet.down_blocks]
    up_flags = [getattr(block, "upsamplers", None) is not None for block in unet.up_blocks]
    total = sum(down_flags)
    layers = []
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        if not name.endswith(".attn2"):
            continue
        segment = name.split(".", 1)[0]
        if segment not in _SEGMENT_RANK:
            continue
        numbers = tuple(int(n) for n in re.findall(r"\.(\d+)(?=\.|$)", name))
        if segment == "down_blocks":
            downsamplings = sum(down_flags[: numbers[0]])
        elif segment == "mid_block":
            downsamplings = total
        else:
            downsamplings = total - sum(up_flags[: numbers[0]])
        layers.append(CrossAttentionLayer(name, downsamplings, (_SEGMENT_RANK[segment], *numbers)))
    return sorted(layers, key=lambda layer: layer.order)


def _filtered_kwargs(processor: Any, kwargs: dict) -> dict:
    """Keep only the keyword arguments ``processor`` accepts (as diffusers' ``Attention.forward`` does)."""
    parameters = inspect.signature(processor.__call__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in parameters}


def _explicit_attention(
    attn: torch.nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    temb: torch.Tensor | None,
    *,
    with_output: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-attention with materialised probabilities ``[B, heads, N, T]`` (and its output if asked).

    Mirrors diffusers' ``AttnProcessor`` (norms, mask, residual, rescale) with an explicit softmax.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channels, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    batch, tokens = encoder_hidden_states.shape[:2]
    attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

    query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # [B*heads, N, d]
    key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # [B*heads, T, d]
    probs = attn.get_attention_scores(query, key, attention_mask)  # [B*heads, N, T]
    probs_4d = probs.unflatten(0, (batch, attn.heads))  # [B, heads, N, T]
    if not with_output:
        return probs_4d, None

    value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))  # [B*heads, T, d]
    out = attn.batch_to_head_dim(torch.bmm(probs, value))  # [B, N, heads*d]
    out = attn.to_out[1](attn.to_out[0](out))
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(batch, channels, height, width)
    if attn.residual_connection:
        out = out + residual
    return probs_4d, out / attn.rescale_output_factor


class _CaptureProcessor:
    """Attention processor installed on one captured layer; behaviour set by its capture's mode."""

    def __init__(self, capture: "AttentionCapture", name: str, original: Any, *, is_last: bool):
        self.capture = capture
        self.name = name
        self.original = original
        self.is_last = is_last

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        capture = self.capture
        if capture._mode is None or encoder_hidden_states is None:
            return self._original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        self._check_grid(hidden_states)
        if capture._mode == "guiding":
            probs, out = _explicit_attention(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, with_output=True
            )
            capture._record(self.name, probs)
            if self.is_last and capture._stop_early:
                raise _StopForward
            return out
        # observing: the original processor makes the output; the maps come from the cond rows.
        out = self._original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        rows = capture._cond_rows
        mask = attention_mask
        if mask is not None and mask.shape[0] == hidden_states.shape[0]:
            mask = mask[rows]
        with torch.no_grad():
            probs, _ = _explicit_attention(
                attn,
                hidden_states[rows],
                encoder_hidden_states[rows],
                mask,
                None if temb is None else temb[rows],
                with_output=False,
            )
        capture._record(self.name, probs)
        return out

    def _original(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
        if temb is not None:
            kwargs = {**kwargs, "temb": temb}
        return self.original(
            attn,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **_filtered_kwargs(self.original, kwargs),
        )

    def _check_grid(self, hidden_states: torch.Tensor) -> None:
        height, width = self.capture.resolution
        tokens = hidden_states.shape[1] if hidden_states.ndim == 3 else math.prod(hidden_states.shape[-2:])
        if tokens != height * width:
            raise RuntimeError(
                f"layer {self.name} has {tokens} queries, expected a {height}x{width} grid; "
                "was the capture built for another latent size?"
            )


class AttentionCapture:
    """Capture cross-attention maps at one grid resolution of a diffusers UNet.

    Use as a context manager (``with AttentionCapture(unet, ...) as capture:``) or call
    ``install()`` / ``restore()``; restoring puts the UNet's original processors back.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        latent_size: tuple[int, int],
        resolution: tuple[int, int] | None = None,
    ):
        self.unet = unet
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.resolution = tuple(resolution) if resolution is not None else default_attention_res(self.latent_size)
        all_layers = cross_attention_layers(unet)
        self.layers = tuple(layer.name for layer in all_layers if layer.grid(self.latent_size) == self.resolution)
        if not self.layers:
            grids = sorted({layer.grid(self.latent_size) for layer in all_layers})
            raise ValueError(
                f"attention_res: no cross-attention layer has a {self.resolution[0]}x{self.resolution[1]} query "
                f"grid for a {self.latent_size[0]}x{self.latent_size[1]} latent; available: {grids}"
            )
        for name in self.layers:
            attn = unet.get_submodule(name)
            if getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None:
                raise ValueError(f"unet: layer {name} uses q/k normalisation, which capture does not support")
        self._originals: dict[str, Any] = {}
        self._mode: str | None = None
        self._stop_early = False
        self._cond_rows: slice = slice(None)
        self._records: dict[str, torch.Tensor] = {}

    # -- installation --------------------------------------------------------------------
    def install(self) -> "AttentionCapture":
        """Put the capturing processor on the selected layers (idempotent)."""
        if self._originals:
            return self
        for name in self.layers:
            attn = self.unet.get_submodule(name)
            self._originals[name] = attn.processor
            attn.set_processor(_CaptureProcessor(self, name, attn.processor, is_last=name == self.layers[-1]))
        return self

    def restore(self) -> None:
        """Give every captured layer its original processor back."""
        for name, processor in self._originals.items():
            self.unet.get_submodule(name).set_processor(processor)
        self._originals = {}
        self._mode = None
        self._records = {}

    def __enter__(self) -> "AttentionCapture":
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.restore()

    # -- modes ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def guiding(self, *, stop_early: bool = False) -> Iterator["AttentionCapture"]:
        """Within: the captured layers use explicit attention and keep maps with their graph.

        The whole UNet batch is taken as conditional. With ``stop_early`` the last captured
        layer raises an internal exception; prefer :meth:`forward_until_captured`.
        """
        with self._mode_set("guiding", stop_early=stop_early):
            yield self

    @contextlib.contextmanager
    def observing(self, cond: slice = slice(None)) -> Iterator["AttentionCapture"]:
        """Within: outputs come from the original processors; maps of batch rows ``cond`` are kept, detached."""
        with self._mode_set("observing", cond=cond):
            yield self

    def forward_until_captured(self, forward: Callable[[], Any]) -> torch.Tensor:
        """Run ``forward()`` in guiding mode, stopping after the last captured layer; return ``maps()``.

        Everything after that layer cannot change the maps, so it is skipped in the forward pass
        and the backward pass alike.
        """
        with self.guiding(stop_early=True):
            try:
                forward()
            except _StopForward:
                pass
            return self.maps()

    @contextlib.contextmanager
    def _mode_set(self, mode: str, *, stop_early: bool = False, cond: slice = slice(None)) -> Iterator[None]:
        if not self._originals:
            raise RuntimeError("AttentionCapture is not installed; use it as a context manager first")
        if self._mode is not None:
            raise RuntimeError(f"AttentionCapture is already {self._mode}")
        self._mode, self._stop_early, self._cond_rows, self._records = mode, stop_early, cond, {}
        try:
            yield
        finally:
            self._mode, self._stop_early = None, False

    def _record(self, name: str, probs: torch.Tensor) -> None:
        self._records[name] = probs  # [B, heads, N, T]

    # -- results -------------------------------------------------------------------------
    def maps(self) -> torch.Tensor:
        """Maps of the last pass, averaged over every head of every captured layer → ``[B, h, w, T]``."""
        missing = [name for name in self.layers if name not in self._records]
        if missing:
            raise RuntimeError(f"no attention captured for layers {missing}; did the UNet forward pass run?")
        records = [self._records[name] for name in self.layers]
        heads = sum(r.shape[1] for r in records)
        total = torch.stack([r.sum(dim=1) for r in records]).sum(dim=0) if len(records) > 1 else records[0].sum(dim=1)
        height, width = self.resolution
        return (total / heads).unflatten(1, (height, width))  # [B, h, w, T]

    def layer_maps(self) -> dict[str, torch.Tensor]:
        """Maps of the last pass per captured layer, averaged over heads → ``{name: [B, h, w, T]}``."""
        height, width = self.resolution
        return {name: self._records[name].mean(dim=1).unflatten(1, (height, width)) for name in self.layers if name in self._records}
