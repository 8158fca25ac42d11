"""Capture of image→text attention maps from MMDiT transformers (SD3 / SD3.5, FLUX).

MMDiT blocks run *joint* attention: image and text tokens attend to one another in a single
softmax over all keys, with no attention mask (padding tokens are keys too). The map a
cross-attention loss needs is the image-query × text-key block of those probabilities, with the
softmax still taken over **all** keys. :class:`JointAttentionCapture` puts a capturing processor
on the chosen joint blocks and, as :class:`~attnsynth.attention.capture.AttentionCapture` does
for UNets, works in three modes:

* off (default) and every mode: the block's output always comes from its **original**
  processor (diffusers' SDPA call), so latents and images are bit-identical to the plain
  pipeline's whether capture is off, observing or guiding;
* ``observing(cond)``: the maps of batch rows ``cond`` are computed on the side, detached;
* ``guiding()`` / ``forward_until_captured``: the maps keep their autograd graph (gradients
  reach the latents through the block's queries and keys), and the forward pass may stop right
  after the last captured block.

The maps are computed from the same queries and keys the original processor uses (its
projections, fused or not, its q/k RMS norms, FLUX's rotary embedding) in chunks of image
queries: per chunk the scores against all keys, their log-sum-exp, and only the text columns
``exp(s − lse)`` averaged over heads are kept. No block ever holds the full joint probability
tensor ``[B, heads, N, N]`` (2 GB per image at FLUX 1024² in float32); under autograd each chunk
is recomputed in the backward pass (``torch.utils.checkpoint``) instead of being stored.

Supported processors: diffusers' ``JointAttnProcessor2_0`` and ``FusedJointAttnProcessor2_0``
(SD3, SD3.5 — fuse first, then capture: ``fuse_qkv_projections()`` replaces every processor) and
``FluxAttnProcessor`` (FLUX double- and single-stream blocks, fused or not). Any other processor on
a chosen block is refused with a one-line error naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from attnsynth.attention.capture import AttentionCapture, _filtered_kwargs, _StopForward

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "JointAttentionBlock",
    "JointAttentionCapture",
    "default_joint_blocks",
    "joint_attention_blocks",
    "text_attention_probs",
]

# Score elements (batch × heads × query chunk × keys) computed at once: 2**24 floats = 64 MiB in float32.
DEFAULT_CHUNK_ELEMENTS = 2**24

# Token order of each block kind in its joint sequence.
_IMAGE_TEXT = "image_text"  # SD3: [image, text]
_TEXT_IMAGE = "text_image"  # FLUX double-stream: [text, image]
_SINGLE = "single"  # FLUX single-stream: one sequence [text, image]; the text length comes from the capture


@dataclass(frozen=True)
class JointAttentionBlock:
    """One joint-attention module of an MMDiT transformer."""

    name: str  # module path, e.g. "transformer_blocks.3.attn" or "single_transformer_blocks.0.attn"
    layout: str  # "image_text" (SD3), "text_image" (FLUX double-stream) or "single" (FLUX single-stream)


def joint_attention_blocks(transformer: torch.nn.Module) -> list[JointAttentionBlock]:
    """Every joint-attention module of an SD3 or FLUX transformer, in forward order.

    SD3.5's second, image-only attention (``attn2`` of its dual-attention blocks) is not joint
    and not listed.
    """
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    if isinstance(transformer, SD3Transformer2DModel):
        return [JointAttentionBlock(f"transformer_blocks.{i}.attn", _IMAGE_TEXT) for i in range(len(transformer.transformer_blocks))]
    if isinstance(transformer, FluxTransformer2DModel):
        double = [JointAttentionBlock(f"transformer_blocks.{i}.attn", _TEXT_IMAGE) for i in range(len(transformer.transformer_blocks))]
        single = [
            JointAttentionBlock(f"single_transformer_blocks.{i}.attn", _SINGLE)
            for i in range(len(transformer.single_transformer_blocks))
        ]
        return double + single
    raise ValueError(
        f"transformer: expected a diffusers SD3Transformer2DModel or FluxTransformer2DModel, got {type(transformer).__name__}"
    )


def default_joint_blocks(transformer: torch.nn.Module) -> tuple[str, ...]:
    """The documented default: every double-stream joint block (``transformer_blocks.*.attn``).

    This is FOCUS's choice for both families (all SD3 blocks; FLUX's 19 double-stream blocks, not
    its 38 single-stream ones). On FLUX the guided forward pass then stops after the double-stream
    blocks, skipping the single-stream two thirds of the network.
    """
    return tuple(b.name for b in joint_attention_blocks(transformer) if b.layout != _SINGLE)


def _chunk_text_probs(query: torch.Tensor, key: torch.Tensor, text_start: int, text_stop: int) -> torch.Tensor:
    """Softmax over all keys of one query chunk, text columns only, mean over heads → ``[B, n, T]``."""
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])  # [B, heads, n, S]
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # [B, heads, n, 1]
    return torch.exp(scores[..., text_start:text_stop] - lse).mean(dim=1)  # [B, n, T]


def text_attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    text: slice,
    *,
    chunk_size: int | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Image-query × text-key attention probabilities, softmax over all keys, mean over heads.

    query: ``[B, heads, N_img, d]`` (image queries only); key: ``[B, heads, S, d]`` (all keys);
    ``text``: the text columns of the keys. Returns ``[B, N_img, T]`` in float32 (float64 inputs stay float64). Queries are taken
    ``chunk_size`` at a time (default: as many as keep ``B·heads·chunk·S <= chunk_elements``);
    with autograd on and more than one chunk, each chunk is recomputed in the backward pass
    instead of being stored.
    """
    batch, heads, queries, _ = query.shape
    keys = key.shape[2]
    start, stop, _ = text.indices(keys)
    if chunk_size is None:
        chunk_size = max(1, chunk_elements // max(1, batch * heads * keys))
    dtype = torch.promote_types(query.dtype, torch.float32)  # float32 for half precision, float64 stays
    query, key = query.to(dtype), key.to(dtype)
    # Recompute in the backward pass only when there are several chunks: a single chunk stores no more
    # than it computes, and recomputing it would only cost time.
    grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad) and chunk_size < queries
    chunks = []
    for begin in range(0, queries, chunk_size):
        q = query[:, :, begin : begin + chunk_size]
        if grad:
            chunks.append(checkpoint(_chunk_text_probs, q, key, start, stop, use_reentrant=False))
        else:
            chunks.append(_chunk_text_probs(q, key, start, stop))
    return torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, heads·d] → [B, N, heads, d]``."""
    return x.unflatten(-1, (heads, -1))


def _sd3_query_key(attn, processor, hidden_states, encoder_hidden_states):
    """SD3 image queries and [image, text] keys as ``JointAttnProcessor2_0`` / its fused twin make them."""
    if type(processor).__name__ == "FusedJointAttnProcessor2_0":
        query, key, _ = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        text_key = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)[1]
        query, key, text_key = (_heads(x, attn.heads).transpose(1, 2) for x in (query, key, text_key))
        # diffusers' fused joint processor applies no q/k norms; mirror it.
    else:
        query = _heads(attn.to_q(hidden_states), attn.heads).transpose(1, 2)  # [B, heads, N, d]
        key = _heads(attn.to_k(hidden_states), attn.heads).transpose(1, 2)
        text_key = _heads(attn.add_k_proj(encoder_hidden_states), attn.heads).transpose(1, 2)  # [B, heads, T, d]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attn.norm_added_k is not None:
            text_key = attn.norm_added_k(text_key)
    tokens = key.shape[2]
    return query, torch.cat([key, text_key], dim=2), slice(tokens, tokens + text_key.shape[2])


def _flux_query_key(attn, hidden_states, encoder_hidden_states, image_rotary_emb, text_tokens):
    """FLUX image queries and [text, image] keys as ``FluxAttnProcessor`` makes them (norms, then rotary)."""
    from diffusers.models.embeddings import apply_rotary_emb

    fused = getattr(attn, "fused_projections", False)
    if fused:
        query, key, _ = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        query, key = attn.to_q(hidden_states), attn.to_k(hidden_states)
    query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))  # [B, N, heads, d]
    key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
    if encoder_hidden_states is not None:  # double-stream block: the text keys come from the context stream
        text_key = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)[1] if fused else attn.add_k_proj(encoder_hidden_states)
        text_key = attn.norm_added_k(text_key.unflatten(-1, (-1, attn.head_dim)))
        text_tokens = text_key.shape[1]
        key = torch.cat([text_key, key], dim=1)
    else:  # single-stream block: hidden_states is already [text, image]
        query = query[:, text_tokens:]
    if image_rotary_emb is not None:
        cos, sin = image_rotary_emb  # [S, d] each, for the [text, image] sequence
        query = apply_rotary_emb(query, (cos[text_tokens:], sin[text_tokens:]), sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query.transpose(1, 2), key.transpose(1, 2), slice(0, text_tokens)


_SD3_PROCESSORS = ("JointAttnProcessor2_0", "FusedJointAttnProcessor2_0")
_FLUX_PROCESSORS = ("FluxAttnProcessor", "FluxAttnProcessor2_0")


class _JointCaptureProcessor:
    """Processor installed on one captured joint block: original output, maps on the side."""

    def __init__(self, capture: "JointAttentionCapture", block: JointAttentionBlock, original: Any, *, is_last: bool):
        self.capture = capture
        self.block = block
        self.original = original
        self.is_last = is_last

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kwargs):
        capture = self.capture
        joint = encoder_hidden_states is not None or self.block.layout == _SINGLE
        out = self._original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, kwargs)
        if capture._mode is None or not joint:
            return out
        if capture._mode == "guiding":
            capture._record(self.block.name, self._maps(attn, hidden_states, encoder_hidden_states, image_rotary_emb))
            if self.is_last and capture._stop_early:
                raise _StopForward
            return out
        rows = capture._cond_rows
        with torch.no_grad():
            context = None if encoder_hidden_states is None else encoder_hidden_states[rows]
            capture._record(self.block.name, self._maps(attn, hidden_states[rows], context, image_rotary_emb))
        return out

    def _maps(self, attn, hidden_states, encoder_hidden_states, image_rotary_emb) -> torch.Tensor:
        if self.block.layout == _IMAGE_TEXT:
            query, key, text = _sd3_query_key(attn, self.original, hidden_states, encoder_hidden_states)
        else:
            query, key, text = _flux_query_key(attn, hidden_states, encoder_hidden_states, image_rotary_emb, self.capture.text_tokens)
        probs = text_attention_probs(query, key, text, chunk_size=self.capture.chunk_size)  # [B, N_img, T]
        self.capture._check_tokens(self.block.name, probs)
        return probs

    def _original(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, kwargs):
        if image_rotary_emb is not None:
            kwargs = {**kwargs, "image_rotary_emb": image_rotary_emb}
        return self.original(
            attn,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **_filtered_kwargs(self.original, kwargs),
        )


class JointAttentionCapture(AttentionCapture):
    """Capture image→text attention maps on chosen joint blocks of an SD3 / FLUX transformer.

    ``grid``: the image-token grid ``(h, w)`` (SD3: latent / patch size; FLUX: latent / 2);
    ``resolution``: the map grid, the token grid average-pooled by a whole factor (default: the
    token grid itself);
    ``text_tokens``: length of the text stream (SD3: 77 CLIP + T5 rows; FLUX: T5 rows), which
    FLUX's single-stream blocks are not told; ``blocks``: module names of the joint blocks to
    capture (default :func:`default_joint_blocks`); ``chunk_size``: image queries per chunk
    (default from :data:`DEFAULT_CHUNK_ELEMENTS`). ``maps()`` → ``[B, h, w, T]``, averaged over
    heads and captured blocks. Modes, installation and restoring as :class:`AttentionCapture`
    (whose mode machinery this class reuses; only the layer selection, processors and maps differ).
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        *,
        grid: tuple[int, int],
        text_tokens: int,
        resolution: tuple[int, int] | None = None,
        blocks: Sequence[str] | None = None,
        chunk_size: int | None = None,
    ):
        available = {b.name: b for b in joint_attention_blocks(transformer)}
        names = default_joint_blocks(transformer) if blocks is None else tuple(blocks)
        if isinstance(blocks, str) or not names:
            raise ValueError(f"attention_blocks={blocks!r} is invalid; expected a non-empty list of joint block names")
        unknown = [name for name in names if name not in available]
        if unknown:
            raise ValueError(
                f"attention_blocks has {unknown[0]!r}, not a joint attention block of this transformer; "
                f"expected some of {list(available)[:3]} … ({len(available)} in all)"
            )
        order = list(available)
        self.blocks = tuple(available[name] for name in sorted(set(names), key=order.index))
        for block in self.blocks:
            processor = transformer.get_submodule(block.name).processor
            supported = _SD3_PROCESSORS if block.layout == _IMAGE_TEXT else _FLUX_PROCESSORS
            if type(processor).__name__ not in supported:
                raise ValueError(
                    f"transformer: block {block.name} uses {type(processor).__name__}, which joint capture does not "
                    f"support; expected one of {list(supported)}"
                )
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} is invalid; expected a positive integer or None")
        self.unet = transformer  # the attribute name AttentionCapture's restore() uses
        self.transformer = transformer
        self.grid = (int(grid[0]), int(grid[1]))
        self.resolution = self.grid if resolution is None else (int(resolution[0]), int(resolution[1]))
        if any(r < 1 or g % r for g, r in zip(self.grid, self.resolution)):
            raise ValueError(
                f"attention_res={tuple(self.resolution)!r} is invalid; expected a grid that divides the "
                f"{self.grid[0]}x{self.grid[1]} image-token grid"
            )
        self.latent_size = self.grid
        self.text_tokens = int(text_tokens)
        self.chunk_size = chunk_size
        self.layers = tuple(block.name for block in self.blocks)
        self._originals: dict[str, Any] = {}
        self._mode: str | None = None
        self._stop_early = False
        self._cond_rows: slice = slice(None)
        self._records: dict[str, torch.Tensor] = {}

    def install(self) -> "JointAttentionCapture":
        """Put the capturing processor on the chosen blocks (idempotent).

        Only the chosen module's processor is replaced, so SD3.5's image-only ``attn2``, which
        shares the processor object with ``attn``, keeps it.
        """
        if self._originals:
            return self
        for block in self.blocks:
            attn = self.transformer.get_submodule(block.name)
            self._originals[block.name] = attn.processor
            attn.set_processor(_JointCaptureProcessor(self, block, attn.processor, is_last=block is self.blocks[-1]))
        return self

    def _check_tokens(self, name: str, probs: torch.Tensor) -> None:
        height, width = self.grid
        if probs.shape[1] != height * width or probs.shape[2] != self.text_tokens:
            raise RuntimeError(
                f"block {name} has {probs.shape[1]} image and {probs.shape[2]} text tokens, expected a "
                f"{height}x{width} grid and {self.text_tokens}; was the capture built for another size or prompt length?"
            )

    def maps(self) -> torch.Tensor:
        """Maps of the last pass, averaged over heads (in each block) and captured blocks → ``[B, h, w, T]``."""
        missing = [name for name in self.layers if name not in self._records]
        if missing:
            raise RuntimeError(f"no attention captured for blocks {missing}; did the transformer forward pass run?")
        records = [self._records[name] for name in self.layers]  # [B, N, T] each
        mean = torch.stack(records).mean(dim=0) if len(records) > 1 else records[0]
        return self._grid_maps(mean)

    def layer_maps(self) -> dict[str, torch.Tensor]:
        """Maps of the last pass per captured block, averaged over heads → ``{name: [B, h, w, T]}``."""
        return {name: self._grid_maps(self._records[name]) for name in self.layers if name in self._records}

    def _grid_maps(self, probs: torch.Tensor) -> torch.Tensor:
        """``[B, N, T]`` on the token grid → ``[B, h, w, T]`` on the map grid (area average, so sums over T stay <= 1)."""
        maps = probs.unflatten(1, self.grid)  # [B, gh, gw, T]
        if self.resolution == self.grid:
            return maps
        pooled = torch.nn.functional.avg_pool2d(maps.permute(0, 3, 1, 2), kernel_size=(self.grid[0] // self.resolution[0], self.grid[1] // self.resolution[1]))
        return pooled.permute(0, 2, 3, 1)
