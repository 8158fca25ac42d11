"""Attention guidance for MMDiT pipelines (SD3 / SD3.5, FLUX): subjects, schedule, loss frame, run.

The SD and SDXL pipelines read cross-attention maps whose text axis starts with BOS; the shared
losses (``attnsynth.t2i.losses``) rely on that (A&E's re-normalisation runs over
``maps[..., 1:prompt_length-1]``). An MMDiT text stream is different: SD3's is 77 CLIP rows then
the T5 rows (a word appears once in each), FLUX's is T5 only (no BOS), and padding rows are keys.
So the losses see each prompt's maps in a **loss frame**: a zero column (a virtual BOS), then the
stream rows of the prompt's own tokens in stream order (CLIP's, then T5's; no BOS, EOS or
padding), then zero columns. ``prompt_length`` is the number of those tokens + 2, and the groups
are moved into the frame, so every method runs through the same pure losses unchanged. Users
see maps and groups in stream rows (``TextStreamGroup``).

Flow-matching schedule (:func:`flow_matching_schedule`): the method's step sizes
``α_i = step_size·√linspace(1, 0.5, N)_i`` over the N flow-matching steps, its refinement steps moved
from their 50-step positions to ``round(k·N/50)``, and the first ``round(N/2)`` steps guided (A&E's
25 of 50). Chosen on one argument, not tuned: a flow-matching latent
``x_σ = (1−σ)x₀ + σε`` has per-element std between ~0.7 and 1 along the path, as SD's DDPM latent does
(std 1 throughout), so the same α moves the latent by the same relative amount. It has not been
checked on real SD3/FLUX weights (none can be loaded here): joint-attention maps put much of
their mass on image keys, so the step size that works there may differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch

from attnsynth.attention.joint import JointAttentionCapture
from attnsynth.t2i.guidance import (
    GuidanceRun,
    LatentGuidance,
    PromptSubjects,
    _check_boxes,
    _per_prompt,
    check_method_options,
    schedule_options,
)
from attnsynth.t2i.schedule import METHOD_DEFAULTS, GuidanceSchedule
from attnsynth.t2i.subjects import SubjectGroup, TextSegment, TextStreamGroup, prompt_token_positions, resolve_stream_subjects

__all__ = [
    "FramedCapture",
    "StreamPrompt",
    "check_joint_guidance_inputs",
    "default_attention_res",
    "flow_matching_schedule",
    "plan_stream_subjects",
    "prepare_joint_guidance",
]

_SCHEDULE_BASE_STEPS = 50  # METHOD_DEFAULTS are stated for 50 steps


def default_attention_res(grid: tuple[int, int]) -> tuple[int, int]:
    """Default map grid: the image-token grid halved (2×2 area pooling) where it is even.

    On the real models (VAE 8×, 2×2 patches) that is (H/32, W/32) of the image — the grid the SD
    pipelines read (16×16 at 512², 32×32 at 1024²), for which the losses' pixel radii were set.
    """
    return tuple(g // 2 if g % 2 == 0 else g for g in grid)


def flow_matching_schedule(
    method: str,
    num_inference_steps: int,
    guided_steps: int | None,
    step_size: float | None,
    refine_thresholds: Mapping[int, float] | None,
) -> GuidanceSchedule:
    """The method's schedule fitted to N flow-matching steps (see the module docstring); None keeps a default."""
    n = num_inference_steps
    if guided_steps is None and isinstance(n, int) and n >= 1:
        guided_steps = min(n, max(1, round(n * METHOD_DEFAULTS[method]["guided_steps"] / _SCHEDULE_BASE_STEPS)))
    if refine_thresholds is None and METHOD_DEFAULTS[method].get("refine_thresholds") and isinstance(n, int) and n >= 1:
        moved: dict[int, float] = {}
        for step, threshold in METHOD_DEFAULTS[method]["refine_thresholds"].items():
            moved.setdefault(min(n - 1, round(step * n / _SCHEDULE_BASE_STEPS)), threshold)
        refine_thresholds = moved
    return schedule_options(method, n, guided_steps, step_size, refine_thresholds)


@dataclass(frozen=True)
class StreamPrompt:
    """One prompt's subjects in stream rows, and where its prompt tokens sit in the loss frame."""

    groups: tuple[TextStreamGroup, ...]  # stream rows (what users see)
    columns: tuple[int, ...]  # stream rows of the prompt's own tokens = frame positions 1 .. len(columns)
    subjects: PromptSubjects  # the same groups in the loss frame (what the losses see)


def _to_frame(group: TextStreamGroup, position: Mapping[int, int]) -> SubjectGroup:
    return SubjectGroup(
        name=group.name,
        token_indices=tuple(position[t] for t in group.token_indices),
        attribute_indices=tuple(position[t] for t in group.attribute_indices),
        mention_spans=tuple(tuple(position[t] for t in span) for span in group.mention_spans),
    )


def plan_stream_subjects(
    *,
    method: str | None,
    prompt: str | list[str] | None,
    subjects: Any,
    segments: Sequence[TextSegment],
    boxes: Any = None,
    images_per_prompt: int = 1,
) -> list[StreamPrompt]:
    """Resolve ``subjects`` (and check ``boxes``) for every prompt over the text stream ``segments``."""
    if prompt is None:
        if method is not None or subjects is not None:
            raise ValueError("prompt is None; attention guidance and subjects need the prompt text (not only prompt_embeds)")
        return []
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    plans = []
    for p, (text, spec, box) in enumerate(zip(prompts, _per_prompt(subjects, prompts, "subjects"), _per_prompt(boxes, prompts, "boxes"))):
        groups = tuple(resolve_stream_subjects(text, spec, segments))
        if method is not None and not groups:
            raise ValueError(f"subjects: method {method!r} needs at least one subject in prompt {text!r} (e.g. ['cat', 'dog'] or 'auto')")
        if box is not None:
            _check_boxes(box, groups, text)
        columns = tuple(s.offset + t for s in segments for t in prompt_token_positions(text, s.tokenizer))
        position = {row: k + 1 for k, row in enumerate(columns)}
        rows = slice(p * images_per_prompt, (p + 1) * images_per_prompt)
        framed = PromptSubjects(rows=rows, groups=tuple(_to_frame(g, position) for g in groups), prompt_length=len(columns) + 2, boxes=box)
        plans.append(StreamPrompt(groups=groups, columns=columns, subjects=framed))
    return plans


class FramedCapture:
    """A :class:`JointAttentionCapture` whose guided maps come in each prompt's loss frame.

    ``forward_until_captured`` returns ``[B, h, w, F]``: per image, a zero column, its prompt's
    token columns, zero columns up to ``F`` (the longest prompt + 2). Everything else — install,
    restore, ``observing``, ``maps()`` (stream rows) — is the wrapped capture's.
    """

    def __init__(self, capture: JointAttentionCapture, prompts: Sequence[StreamPrompt], num_images: int):
        self.capture = capture
        width = max(len(p.columns) for p in prompts) + 2
        zero = capture.text_tokens  # index of the appended zero column
        index = torch.full((num_images, width), zero, dtype=torch.long)
        for prompt in prompts:
            rows = range(*prompt.subjects.rows.indices(num_images))
            index[list(rows), 1 : 1 + len(prompt.columns)] = torch.tensor(prompt.columns)
        self.index = index  # [B, F]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.capture, name)

    def forward_until_captured(self, forward: Callable[[], Any]) -> torch.Tensor:
        maps = self.capture.forward_until_captured(forward)  # [B, h, w, T]
        padded = torch.cat([maps, maps.new_zeros(*maps.shape[:-1], 1)], dim=-1)  # [B, h, w, T+1]
        index = self.index.to(maps.device)[:, None, None, :].expand(*maps.shape[:-1], -1)  # [B, h, w, F]
        return torch.gather(padded, -1, index)


def check_joint_guidance_inputs(
    *,
    method: str | None,
    prompt: str | list[str] | None,
    subjects: Any,
    segments: Sequence[TextSegment],
    transformer: torch.nn.Module,
    grid: tuple[int, int],
    text_tokens: int,
    num_inference_steps: int,
    guided_steps: int | None,
    step_size: float | None,
    refine_thresholds: Mapping[int, float] | None,
    attention_res: tuple[int, int] | None,
    attention_blocks: Sequence[str] | None,
    boxes: Any,
    loss_weights: Mapping[str, float] | None,
    return_attention_maps: bool,
) -> None:
    """Reject bad guidance arguments with a one-line ``ValueError`` before any model runs."""
    if not isinstance(return_attention_maps, bool):
        raise ValueError(f"return_attention_maps={return_attention_maps!r} is invalid; expected True or False")
    check_method_options(
        method=method,
        boxes=boxes,
        guided_steps=guided_steps,
        step_size=step_size,
        refine_thresholds=refine_thresholds,
        loss_weights=loss_weights,
        attention_res=attention_res,
        schedule=lambda: flow_matching_schedule(method, num_inference_steps, guided_steps, step_size, refine_thresholds),
    )
    if method is not None or return_attention_maps:
        JointAttentionCapture(  # validates the blocks, their processors and the grid
            transformer, grid=grid, text_tokens=text_tokens, resolution=attention_res or default_attention_res(grid), blocks=attention_blocks
        )
    plan_stream_subjects(method=method, prompt=prompt, subjects=subjects, segments=segments, boxes=boxes)


def prepare_joint_guidance(
    *,
    method: str | None,
    transformer: torch.nn.Module,
    grid: tuple[int, int],
    text_tokens: int,
    num_timesteps: int,
    prompts: Sequence[StreamPrompt],
    num_images: int,
    guided_steps: int | None = None,
    step_size: float | None = None,
    refine_thresholds: Mapping[int, float] | None = None,
    attention_res: tuple[int, int] | None = None,
    attention_blocks: Sequence[str] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    return_attention_maps: bool = False,
) -> GuidanceRun:
    """The :class:`GuidanceRun` of one MMDiT call (no capture at all without guidance or maps)."""
    if method is None and not return_attention_maps:
        return GuidanceRun(capture=None, guide=None, record_maps=False)
    capture = JointAttentionCapture(
        transformer, grid=grid, text_tokens=text_tokens, resolution=attention_res or default_attention_res(grid), blocks=attention_blocks
    )
    guide = None
    if method is not None:
        guide = LatentGuidance(
            method=method,
            schedule=flow_matching_schedule(method, num_timesteps, guided_steps, step_size, refine_thresholds),
            prompts=[p.subjects for p in prompts],
            capture=FramedCapture(capture, prompts, num_images),
            unet=transformer,
            loss_weights=loss_weights,
        )
    return GuidanceRun(capture=capture, guide=guide, record_maps=return_attention_maps)


def text_segments(*, clip_tokenizer: Any | None, clip_rows: int, t5_tokenizer: Any | None, t5_rows: int) -> list[TextSegment]:
    """The text stream's segments: CLIP rows first (SD3) when given, then T5 rows."""
    segments = []
    if clip_tokenizer is not None:
        segments.append(TextSegment("CLIP", clip_tokenizer, 0, clip_rows))
    if t5_tokenizer is not None:
        segments.append(TextSegment("T5", t5_tokenizer, clip_rows if clip_tokenizer is not None else 0, t5_rows))
    return segments
