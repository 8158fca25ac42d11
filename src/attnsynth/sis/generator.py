"""CA²-SIS cross-attention generator: shape tokens (queries' origin) × style tokens (keys/values) → image.

The C' shape tokens are reshaped to C' maps on the first grid (16×16 faithful), mixed by a conv1×1,
then each stage is ``ResBlock`` (upsampling from stage 1 on) → ``SpatialTransformer``. In every
transformer the pixels attend to the C style tokens (softmax over classes, never masked); the
head-averaged **pre-softmax** logits can be returned per layer for the attention loss.

Efficiency choices (same parameters and maths as the paper's code):

* self-attention runs through `F.scaled_dot_product_attention` (memory-efficient kernels; the
  N×N maps are never materialised);
* cross-attention logits are computed explicitly — they are only [B, heads, N, C];
* q/k/v are one fused matmul; the tokens ↔ maps reshapes are views (activations are channels-last);
* the GEGLU feed-forward (the largest activations: 8× the width per token) is one autograd
  function that keeps only its input and hidden pre-activation and works in row chunks, and every
  LayerNorm → projection pair recomputes the normalised tokens in backward instead of storing them
  (together ≈ 45 % less activation memory than plain autograd, at the same speed);
* without autograd (inference) blocks on large maps run image by image and every per-token layer
  on token chunks, so no temporary exceeds a few MB and the per-image cost does not grow with
  the batch, while small maps still batch across images;
* optional gradient checkpointing per sub-layer (norm+proj-in, self-attn, cross-attn, FF in token
  chunks, proj-out, ResBlock), so the peak holds one sub-layer's activations at a time.

``reference_kernels=True`` (config ``kernels="reference"``) computes the same function the way the
paper's code does — explicit attention maps, plain autograd, no chunking — for equivalence tests
and for the benchmark's in-house baseline.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from attnsynth.sis.group_norm import GroupNorm
from attnsynth.sis.group_norm import group_norm as channels_last_group_norm

FF_CHUNK_TOKENS = 4096  # feed-forward token chunk under gradient checkpointing (bounds the peak)
INFERENCE_CHUNK_TOKENS = 2048  # token chunk of the per-token layers without autograd (small, cache-friendly)
PER_IMAGE_PIXELS = 64 * 64  # without autograd, blocks on maps at least this large run one image at a time


def group_norm(channels: int, groups: int, *, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with min(groups, channels) groups (eps 1e-6: the transformers' input norm, as in the authors' code)."""
    return GroupNorm(min(groups, channels), channels, eps=eps)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in (at least) float32 whatever the input dtype (fp16/bf16, autocast included), returned
    in the input's dtype — the ResBlocks' norm in the authors' code (eps 1e-5, PyTorch's default). float64 stays
    float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight = None if self.weight is None else self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return channels_last_group_norm(x.to(dtype), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _zero_(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def map_images(fn: Callable, *tensors: torch.Tensor):
    """fn(*tensors) computed one batch item at a time into preallocated outputs (inference only).

    Big maps gain nothing from batching, but their B-times-larger temporaries would each be fresh
    zero-filled pages; one image at a time they stay small and are reused by the allocator.
    """
    batch = tensors[0].shape[0]
    outs: list[torch.Tensor] = []
    single = False
    for b in range(batch):
        result = fn(*(t[b:b + 1] for t in tensors))
        single = isinstance(result, torch.Tensor)
        items = (result,) if single else tuple(result)
        if not outs:
            for item in items:
                channels_last = item.ndim == 4 and item.is_contiguous(memory_format=torch.channels_last)
                layout = torch.channels_last if channels_last else torch.contiguous_format
                outs.append(torch.empty((batch, *item.shape[1:]), dtype=item.dtype, device=item.device, memory_format=layout))
        for out, item in zip(outs, items):
            out[b:b + 1] = item
    return outs[0] if single else tuple(outs)


def per_image_inference(x: torch.Tensor, pixels: int) -> bool:
    """True when a block should run image by image: CPU, no autograd, batch > 1 and a large map.

    CPU only: the gain is fewer fresh zero-filled pages from the C allocator; CUDA's caching
    allocator reuses blocks, and a GPU needs the batch to fill its cores.
    """
    return x.device.type == "cpu" and not torch.is_grad_enabled() and x.shape[0] > 1 and pixels >= PER_IMAGE_PIXELS


class _Checkpointable(nn.Module):
    """Mixin: `self._run(fn, *args)` recomputes `fn` in backward when checkpointing is on."""

    gradient_checkpointing: bool = False

    def _run(self, fn: Callable, *args: torch.Tensor):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


class ResBlock(_Checkpointable):
    """GroupNorm → SiLU → [nearest ×2] → conv3×3 → GroupNorm → SiLU → zero-init conv3×3, plus skip.

    Both norms are `GroupNorm32` (float32, eps 1e-5), as in the authors' ResBlock."""

    def __init__(self, *, in_channels: int, out_channels: int, upsample: bool = False, norm_groups: int = 32) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm1 = GroupNorm32(min(norm_groups, in_channels), in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm32(min(norm_groups, out_channels), out_channels, eps=1e-5)
        self.conv2 = _zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv2(F.silu(self.norm2(self.conv1(h))))
        return self.skip(x) + h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in, h, w] → [B, out, h, w] (×2 when upsampling)."""
        if per_image_inference(x, x.shape[-2] * x.shape[-1] * (4 if self.upsample else 1)):
            return map_images(self._forward, x)
        return self._run(self._forward, x)


class _LayerNormLinear(torch.autograd.Function):
    """y = LN(x) Wᵀ (+ b), saving x and LN's statistics but not LN(x): backward recomputes it.

    Plain autograd keeps both x (for LayerNorm) and LN(x) (for the Linear); x is the transformer's
    residual stream, kept anyway, so this saves one [N, dim] activation per norm+projection pair.
    """

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, weight, bias, eps: float):
        normed, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
        ctx.save_for_backward(x, mean, rstd, ln_weight, ln_bias, weight)
        ctx.has_bias = bias is not None
        return F.linear(normed, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, mean, rstd, ln_weight, ln_bias, weight = ctx.saved_tensors
        need_x, need_lnw, need_lnb, need_w, need_b, _ = ctx.needs_input_grad
        grads = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = grad_b = grad_x = grad_lnw = grad_lnb = None
        if need_w:
            normed = (x - mean) * rstd * ln_weight + ln_bias  # recomputed LN(x)
            grad_w = grads.t() @ normed.reshape(-1, normed.shape[-1])
        if need_b and ctx.has_bias:
            grad_b = grads.sum(0)
        if need_x or need_lnw or need_lnb:
            grad_x, grad_lnw, grad_lnb = torch.ops.aten.native_layer_norm_backward(
                grad_out @ weight, x, (x.shape[-1],), mean, rstd, ln_weight, ln_bias, [need_x, need_lnw, need_lnb])
        return grad_x, grad_lnw, grad_lnb, grad_w, grad_b, None


def _wants_grad(x: torch.Tensor, *modules: nn.Module) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters()))


def _autocast(x: torch.Tensor) -> bool:
    """Mixed precision is on: the fused fp32 kernels (explicit ``addmm(out=…)``, custom autograd) step aside."""
    return x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)


def norm_linear(x: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear, *, fused: bool = True) -> torch.Tensor:
    """linear(norm(x)); with `fused` and autograd, LN(x) is recomputed in backward instead of stored."""
    if fused and not _autocast(x) and _wants_grad(x, norm, linear):
        return _LayerNormLinear.apply(x, norm.weight, norm.bias, linear.weight, linear.bias, norm.eps)
    return linear(norm(x))


class SelfAttention(nn.Module):
    """LayerNorm → multi-head self-attention over the N pixels of a map (fused qkv projection)."""

    def __init__(self, *, dim: int, heads: int, head_dim: int, reference_kernels: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim, self.reference_kernels = heads, head_dim, reference_kernels
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, dim] → [B, N, dim] (the residual branch, not yet added)."""
        batch, tokens, _ = x.shape
        qkv = norm_linear(x, self.norm, self.to_qkv, fused=not self.reference_kernels)
        q, k, v = qkv.view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, N, d]
        if not self.reference_kernels:
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # explicit N×N maps, as the paper's code computes them
            weights = (q @ k.transpose(-1, -2) * self.head_dim ** -0.5).softmax(dim=-1)  # [B, heads, N, N]
            out = weights @ v
        return self.to_out(out.transpose(1, 2).reshape(batch, tokens, -1))


class CrossAttention(nn.Module):
    """LayerNorm → pixels (queries) attend to the C style tokens (keys, values); softmax over the C classes."""

    def __init__(self, *, dim: int, context_dim: int, heads: int, head_dim: int, reference_kernels: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim, self.reference_kernels = heads, head_dim, reference_kernels
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context [B, C, D_style] → keys, values [B, heads, C, d] (computed once per layer)."""
        batch = context.shape[0]
        kv = self.to_kv(context).view(batch, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, dim], k, v [B, heads, C, d] → (out [B, N, dim], head-mean pre-softmax logits [B, N, C])."""
        batch, tokens, _ = x.shape
        q = norm_linear(x, self.norm, self.to_q, fused=not self.reference_kernels)
        q = q.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)  # [B, h, N, d]
        logits = (q * self.head_dim ** -0.5) @ k.transpose(-1, -2)  # [B, h, N, C]
        out = logits.softmax(dim=-1) @ v  # [B, h, N, d]
        out = self.to_out(out.transpose(1, 2).reshape(batch, tokens, -1))
        return out, logits.mean(dim=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, dim], context [B, C, D_style] → (out [B, N, dim], head-mean pre-softmax logits [B, N, C])."""
        return self.attend(x, *self.keys_values(context))


GEGLU_CHUNK_ELEMENTS = 2**21  # rows × hidden per chunk of the feed-forward (temporaries ≈ 8 MB fp32 each)
GEGLU_SAVE_ELEMENTS = 2**22  # up to rows × hidden this large (16 MB fp32), GELU(g) and a·GELU(g) are kept, not recomputed


class _GEGLUFeedForward(torch.autograd.Function):
    """y = (a · GELU(g)) W₂ᵀ + b₂ with [a, g] = LN(x) W₁ᵀ + b₁, saving x, LN's statistics and h = [a, g].

    Plain autograd also keeps LN(x), GELU(g) and the product (≈ 2× the hidden activations) and its
    backward materialises ∂h for all tokens at once. Here LN(x) is recomputed in backward and both
    passes run over row chunks, so the saved memory halves and the temporaries stay small. GELU(g) and
    the product are recomputed too when the layer is large (> ``GEGLU_SAVE_ELEMENTS``: the memory-bound
    256² case); a small layer keeps them — on a CPU the exact GELU is the costliest elementwise op of
    the backward, and at 64² they are a few MB.
    """

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, w1, b1, w2, b2, eps: float):
        rows = x.reshape(-1, x.shape[-1])  # [N, dim]
        normed, mean, rstd = torch.native_layer_norm(rows, (rows.shape[-1],), ln_weight, ln_bias, eps)
        h = F.linear(normed, w1, b1)  # [N, 2·hidden]
        del normed
        hidden = w2.shape[1]
        keep = rows.shape[0] * hidden <= GEGLU_SAVE_ELEMENTS
        out = rows.new_empty(rows.shape[0], w2.shape[0])
        if keep:  # one pass, GELU(g) and the product saved for backward
            value, gate = h.chunk(2, dim=-1)
            gelu_gate = F.gelu(gate)
            product = value * gelu_gate
            torch.addmm(b2, product, w2.t(), out=out)
            ctx.save_for_backward(rows, mean, rstd, ln_weight, ln_bias, h, w1, w2, gelu_gate, product)
        else:
            step = max(1, GEGLU_CHUNK_ELEMENTS // hidden)
            for start in range(0, rows.shape[0], step):
                value, gate = h[start:start + step].chunk(2, dim=-1)
                torch.addmm(b2, value * F.gelu(gate), w2.t(), out=out[start:start + step])
            ctx.save_for_backward(rows, mean, rstd, ln_weight, ln_bias, h, w1, w2)
        ctx.kept = keep
        return out.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if ctx.kept:
            rows, mean, rstd, ln_weight, ln_bias, h, w1, w2, saved_gelu, saved_product = ctx.saved_tensors
        else:
            rows, mean, rstd, ln_weight, ln_bias, h, w1, w2 = ctx.saved_tensors
        need_x, need_lnw, need_lnb, need_w1, need_b1, need_w2, need_b2, _ = ctx.needs_input_grad
        need_normed = need_x or need_lnw or need_lnb
        grads = grad_out.reshape(-1, grad_out.shape[-1])  # [N, dim]
        hidden = w2.shape[1]
        grad_normed = torch.empty_like(rows) if need_normed else None
        grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        grad_b1 = w1.new_zeros(w1.shape[0])
        step = rows.shape[0] if ctx.kept else max(1, GEGLU_CHUNK_ELEMENTS // hidden)
        for start in range(0, rows.shape[0], step):
            chunk = slice(start, start + step)
            value, gate = h[chunk].chunk(2, dim=-1)
            gelu_gate = saved_gelu if ctx.kept else F.gelu(gate)
            grad = grads[chunk]
            if need_w2:
                grad_w2.addmm_(grad.t(), saved_product if ctx.kept else value * gelu_gate)
            if not (need_normed or need_w1 or need_b1):
                continue
            grad_product = grad @ w2  # [n, hidden]
            grad_h = h.new_empty(grad_product.shape[0], 2 * hidden)  # ∂[a, g], written in place (no concat)
            torch.mul(grad_product, gelu_gate, out=grad_h[:, :hidden])
            torch.ops.aten.gelu_backward.grad_input(grad_product.mul_(value), gate, grad_input=grad_h[:, hidden:])
            if need_w1:
                normed = (rows[chunk] - mean[chunk]) * rstd[chunk] * ln_weight + ln_bias  # recomputed LN(x)
                grad_w1.addmm_(grad_h.t(), normed)
            if need_b1:
                grad_b1 += grad_h.sum(0)
            if need_normed:
                torch.mm(grad_h, w1, out=grad_normed[chunk])
        grad_x = grad_lnw = grad_lnb = None
        if need_normed:
            grad_x, grad_lnw, grad_lnb = torch.ops.aten.native_layer_norm_backward(
                grad_normed, rows, (rows.shape[-1],), mean, rstd, ln_weight, ln_bias, [need_x, need_lnw, need_lnb])
        return (grad_x.view(grad_out.shape[:-1] + (rows.shape[1],)) if need_x else None, grad_lnw, grad_lnb,
                grad_w1 if need_w1 else None, grad_b1 if need_b1 else None,
                grad_w2 if need_w2 else None, grads.sum(0) if need_b2 else None, None)


class FeedForward(nn.Module):
    """LayerNorm → GEGLU feed-forward: Linear(dim → 2·mult·dim) → a · GELU(gate) → Linear(mult·dim → dim)."""

    def __init__(self, *, dim: int, mult: int = 4, reference_kernels: bool = False) -> None:
        super().__init__()
        self.reference_kernels = reference_kernels
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, dim] → [B, N, dim] (the residual branch); memory-lean fused autograd when training."""
        if self.reference_kernels or _autocast(x):
            value, gate = self.proj(self.norm(x)).chunk(2, dim=-1)
            return self.out(value * F.gelu(gate))
        if _wants_grad(x, self):
            return _GEGLUFeedForward.apply(x, self.norm.weight, self.norm.bias, self.proj.weight, self.proj.bias,
                                           self.out.weight, self.out.bias, self.norm.eps)
        rows = self.norm(x).reshape(-1, x.shape[-1])  # inference: row chunks keep the 8×-wide temporaries small
        out = rows.new_empty(rows.shape[0], self.out.out_features)
        step = max(1, GEGLU_CHUNK_ELEMENTS // self.out.in_features)
        for start in range(0, rows.shape[0], step):
            value, gate = self.proj(rows[start:start + step]).chunk(2, dim=-1)
            torch.addmm(self.out.bias, value * F.gelu(gate), self.out.weight.t(), out=out[start:start + step])
        return out.view(*x.shape[:-1], self.out.out_features)


class SpatialTransformer(_Checkpointable):
    """GroupNorm → proj-in → [LN → self-attn] → LN → cross-attn → LN → GEGLU FF → zero-init proj-out, + x."""

    def __init__(self, *, channels: int, context_dim: int, heads: int, head_dim: int, self_attention: bool = True,
                 ff_mult: int = 4, norm_groups: int = 32, reference_kernels: bool = False) -> None:
        super().__init__()
        inner = heads * head_dim
        self.reference_kernels = reference_kernels
        self.norm = group_norm(channels, norm_groups)
        self.proj_in = nn.Linear(channels, inner)
        kernels = dict(reference_kernels=reference_kernels)
        self.attn1 = SelfAttention(dim=inner, heads=heads, head_dim=head_dim, **kernels) if self_attention else None
        self.attn2 = CrossAttention(dim=inner, context_dim=context_dim, heads=heads, head_dim=head_dim, **kernels)
        self.ff = FeedForward(dim=inner, mult=ff_mult, **kernels)
        self.proj_out = _zero_(nn.Linear(inner, channels))

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # view if channels-last
        return self.proj_in(h)  # [B, N, inner]

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, c, h, w], context [B, C, D_style] → (x' [B, c, h, w], logits [B, C, h, w])."""
        if not (torch.is_grad_enabled() or self.reference_kernels):
            if per_image_inference(x, x.shape[-2] * x.shape[-1]):
                return map_images(self._forward_chunked, x, context)
            return self._forward_chunked(x, context)
        batch, channels, height, width = x.shape
        h = self._run(self._enter, x)
        if self.attn1 is not None:
            h = h + self._run(self.attn1, h)
        out, logits = self._run(self.attn2, h, context)
        h = h + out
        if self.gradient_checkpointing and h.shape[1] > FF_CHUNK_TOKENS:
            h = h + torch.cat([self._run(self.ff, part) for part in h.split(FF_CHUNK_TOKENS, dim=1)], dim=1)
        else:
            h = h + self.ff(h)
        h = self._run(self.proj_out, h).view(batch, height, width, channels).permute(0, 3, 1, 2)
        logits = logits.transpose(1, 2).reshape(batch, -1, height, width)  # [B, C, h, w]
        return x + h, logits

    def _forward_chunked(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same maths without autograd, the per-token layers run on blocks of ≤ INFERENCE_CHUNK_TOKENS
        tokens (a token range of one image, or several whole small images): no temporary exceeds a few
        MB, so big maps cause no page-fault storm while small maps still batch across images."""
        batch, channels, height, width = x.shape
        tokens = height * width
        normed = self.norm(x).permute(0, 2, 3, 1).reshape(batch, tokens, channels)  # view if channels-last
        if self.attn1 is not None:  # self-attention needs all of an image's tokens at once
            full = self.proj_in(normed)
            full = full + self.attn1(full)
        k, v = self.attn2.keys_values(context)
        out = x.new_empty(batch, tokens, channels)
        logits = x.new_empty(batch, tokens, k.shape[2])
        images = max(1, INFERENCE_CHUNK_TOKENS // tokens)  # images per block
        span = min(tokens, INFERENCE_CHUNK_TOKENS)  # tokens per block
        for first in range(0, batch, images):
            group = slice(first, first + images)
            for start in range(0, tokens, span):
                part = slice(start, start + span)
                h = full[group, part] if self.attn1 is not None else self.proj_in(normed[group, part])
                attended, logits[group, part] = self.attn2.attend(h, k[group], v[group])
                h = h + attended
                h = h + self.ff(h)
                out[group, part] = self.proj_out(h)
        out = out.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return x + out, logits.transpose(1, 2).reshape(batch, -1, height, width)


class CA2SISGenerator(nn.Module):
    """Decoder: `forward(shape [B, C', D_shape], style [B, C, D_style]) -> (image [B, 3, H, W], logits per layer)`."""

    def __init__(self, *, num_shape_tokens: int, start_size: tuple[int, int], style_dim: int, base_channels: int = 512,
                 stage_channels: tuple[int, ...] = (256, 128, 64, 32, 32), stage_heads: tuple[int, ...] = (8, 8, 8, 8, 4),
                 stage_head_dim: tuple[int, ...] = (64, 64, 64, 64, 32),
                 self_attention: tuple[bool, ...] = (True, True, True, False, False), ff_mult: int = 4,
                 norm_groups: int = 32, reference_kernels: bool = False, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.start_size = tuple(start_size)
        self.conv_in = nn.Conv2d(num_shape_tokens, base_channels, 1)
        self.resblocks, self.transformers = nn.ModuleList(), nn.ModuleList()
        channels = base_channels
        for i, out_channels in enumerate(stage_channels):
            self.resblocks.append(ResBlock(in_channels=channels, out_channels=out_channels, upsample=i > 0, norm_groups=norm_groups))
            self.transformers.append(SpatialTransformer(
                channels=out_channels, context_dim=style_dim, heads=stage_heads[i], head_dim=stage_head_dim[i],
                self_attention=self_attention[i], ff_mult=ff_mult, norm_groups=norm_groups, reference_kernels=reference_kernels))
            channels = out_channels
        self.conv_out = nn.Conv2d(channels, 3, 1)
        self.set_gradient_checkpointing(gradient_checkpointing)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Turn per-sub-layer activation recomputation on or off."""
        for module in self.modules():
            if isinstance(module, _Checkpointable):
                module.gradient_checkpointing = bool(enabled)

    def forward(self, shape: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """shape [B, C', h0·w0], style [B, C, D_style] → (image [B, 3, H, W] in [-1, 1], [logits [B, C, h_l, w_l]])."""
        x = shape.reshape(shape.shape[0], shape.shape[1], *self.start_size)
        x = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        logits = []
        for resblock, transformer in zip(self.resblocks, self.transformers):
            x, layer_logits = transformer(resblock(x), style)
            logits.append(layer_logits)
        return torch.tanh(self.conv_out(x)), logits
