"""The attention-guided latent update shared by the SD and SDXL pipelines.

At a guided denoising step ``i`` the conditional branch of the UNet is run on the current
latent ``z`` (with autograd, stopped right after the last layer whose maps the loss reads), the
captured maps give the method's loss ``L(z)`` per image, and the latent moves one gradient step:
``z ← z − α_i ∇_z L``. At steps with a refinement threshold the step is first repeated while
``L > schedule.target_loss(i)`` (at most ``schedule.max_refine_iters_at(i)`` times), exactly in the order
diffusers' ``StableDiffusionAttendAndExcitePipeline`` does it, but batched: each image refines
on its own and stops on its own.

The pipelines stay under ``no_grad``; :meth:`LatentGuidance.update` opens ``enable_grad()`` only
around the update, with the UNet's parameters temporarily frozen so only ``∇_z`` is computed.
Nothing syncs with the host except the threshold checks of refinement steps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from attnsynth.attention.capture import AttentionCapture
from attnsynth.t2i.losses import DEFAULT_WEIGHTS, METHODS, guidance_loss
from attnsynth.t2i.schedule import GuidanceSchedule
from attnsynth.t2i.subjects import SubjectGroup, count_prompt_tokens, resolve_subjects

__all__ = [
    "GuidanceRun",
    "LatentGuidance",
    "PromptSubjects",
    "TOKEN_SOFTMAX",
    "check_guidance_inputs",
    "check_method_options",
    "frozen_parameters",
    "plan_subjects",
    "prepare_guidance",
    "schedule_options",
]

# Which tokens the Attend-and-Excite token softmax Â = softmax(100·A) runs over (the excitation
# term of ait2i and attend-excite, divide-bind's maps):
# * "all" (default): positions [1:-1] — everything but the first and last position, so EOS and
#   padding take part and the slice is the same for every prompt. This is what the authors' code
#   of AI-T2I, Attend-and-Excite (SD 1.x) and Divide & Bind does, and diffusers' A&E pipeline.
# * "prompt": a named variant, renormalised over the prompt's own tokens [1:L−1] (BOS and EOS
#   excluded), so a subject competes only with the prompt's words, not with EOS/padding mass
#   (A&E's own code does this only for SD 2.1; attnsynth's ait2i/divide-bind did it before the
#   parity fix). Measured against the default in benchmarks/RESULTS.md.
TOKEN_SOFTMAX = ("all", "prompt")
# The loss part that refinement thresholds are checked against (default: the total). Divide & Bind
# checks its TV only (the authors' threshold is min_k TV_k, also with a binding term).
_REFINE_PART = {"layout": "box", "divide-bind": "attendance"}


@dataclass(frozen=True)
class PromptSubjects:
    """The subject groups of one prompt and the batch rows (its images) they apply to."""

    rows: slice  # rows of the latent batch generated from this prompt
    groups: tuple[SubjectGroup, ...]
    prompt_length: int | None  # tokens incl. BOS/EOS (token_softmax="prompt"); None: the [1:-1] slice
    boxes: Any = None  # layout boxes for these groups, or None


def _per_prompt(value: Any, prompts: list[str], what: str) -> list[Any]:
    """Broadcast a subjects/boxes spec to every prompt, or check a per-prompt list's length."""
    if len(prompts) == 1:
        return [value]
    if value is None or isinstance(value, (str, Mapping, torch.Tensor)):
        return [value] * len(prompts)
    if not isinstance(value, Sequence) or len(value) != len(prompts):
        raise ValueError(
            f"{what}: for {len(prompts)} prompts give one entry per prompt (a list of {len(prompts)}), "
            f"'auto', or None; got {value!r}"
        )
    return list(value)


def _check_boxes(boxes: Any, groups: Sequence[SubjectGroup], prompt: str) -> None:
    """Validate layout boxes ``{subject: (x0, y0, x1, y1)}`` (or a tensor ``[K, 4]``) before any compute."""
    if isinstance(boxes, torch.Tensor):
        if boxes.ndim != 2 or tuple(boxes.shape) != (len(groups), 4):
            raise ValueError(f"boxes has shape {tuple(boxes.shape)}; expected [{len(groups)}, 4] for prompt {prompt!r}")
        values = boxes.detach().cpu().tolist()
        named = {f"row {k}": box for k, box in enumerate(values)}
    elif isinstance(boxes, Mapping):
        names = {name for group in groups for name in (group.name, *group.name.split("/"))}
        for name in boxes:
            if name not in names:
                raise ValueError(f"boxes has subject {name!r}, not a subject of prompt {prompt!r}; expected some of {sorted(names)}")
        named = dict(boxes)
    else:
        raise ValueError(f"boxes has type {type(boxes).__name__}; expected a dict {{subject: (x0, y0, x1, y1)}} or a tensor [K, 4]")
    if not named:
        raise ValueError("boxes is empty; expected a box for at least one subject")
    for name, box in named.items():
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"boxes[{name!r}]={box!r} is not four numbers (x0, y0, x1, y1)") from None
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"boxes[{name!r}]={tuple(box)!r} is invalid; expected 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")


def plan_subjects(
    *,
    method: str | None,
    prompt: str | list[str] | None,
    subjects: Any,
    tokenizer: Any,
    boxes: Any = None,
    images_per_prompt: int = 1,
    token_softmax: str = "all",
) -> list[PromptSubjects]:
    """Resolve ``subjects`` (and ``boxes``) for every prompt → one :class:`PromptSubjects` per prompt.

    For a list of prompts, ``subjects`` and ``boxes`` are either shared (``"auto"``, a dict of
    boxes) or given per prompt (a list with one entry per prompt). ``token_softmax`` (see
    :data:`TOKEN_SOFTMAX`) sets each prompt's ``prompt_length``. Raises ``ValueError`` for a
    subject not in its prompt, a prompt longer than the tokenizer allows, or bad boxes.
    """
    _check_token_softmax(token_softmax)
    if prompt is None:
        if method is not None or subjects is not None:
            raise ValueError("prompt is None; attention guidance and subjects need the prompt text (not only prompt_embeds)")
        return []
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    subject_specs = _per_prompt(subjects, prompts, "subjects")
    box_specs = _per_prompt(boxes, prompts, "boxes")
    plans = []
    for p, (text, spec, box) in enumerate(zip(prompts, subject_specs, box_specs)):
        groups = tuple(resolve_subjects(text, spec, tokenizer))
        if method is not None and not groups:
            raise ValueError(f"subjects: method {method!r} needs at least one subject in prompt {text!r} (e.g. ['cat', 'dog'] or 'auto')")
        if box is not None:
            _check_boxes(box, groups, text)
        length = count_prompt_tokens(text, tokenizer) if token_softmax == "prompt" else None
        rows = slice(p * images_per_prompt, (p + 1) * images_per_prompt)
        plans.append(PromptSubjects(rows=rows, groups=groups, prompt_length=length, boxes=box))
    return plans


def _check_token_softmax(token_softmax: Any) -> None:
    if token_softmax not in TOKEN_SOFTMAX:
        raise ValueError(f"token_softmax={token_softmax!r} is invalid; expected one of {list(TOKEN_SOFTMAX)}")


def prompt_batch_size(prompt: Any, prompt_embeds: Any) -> int:
    """Prompts in a pipeline call: 1 for a string, the list's length, else the embeddings' batch (as diffusers)."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def check_method_options(
    *,
    method: str | None,
    boxes: Any,
    guided_steps: int | None,
    step_size: float | None,
    refine_thresholds: Mapping[int, float] | None,
    loss_weights: Mapping[str, float] | None,
    attention_res: tuple[int, int] | None,
    schedule: Callable[[], GuidanceSchedule],
) -> None:
    """The model-independent checks of the guidance arguments (shared with the MMDiT pipelines).

    The method is known, boxes come with ``"layout"`` only, schedule and weight options only
    with a method, ``schedule()`` builds a valid schedule, loss weights are the method's terms
    and finite, and ``attention_res`` is two positive integers.
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; expected one of {list(METHODS)} or None")
    if boxes is not None and method != "layout":
        raise ValueError(f"boxes were given but method={method!r} ignores them; use method='layout'")
    if method == "layout" and boxes is None:
        raise ValueError("boxes is None; method='layout' needs boxes {subject: (x0, y0, x1, y1)} in [0, 1]")
    if method is None:
        extras = {"guided_steps": guided_steps, "step_size": step_size, "refine_thresholds": refine_thresholds, "loss_weights": loss_weights}
        given = [name for name, value in extras.items() if value is not None]
        if given:
            raise ValueError(f"{given[0]} was given but method is None; pass method= one of {list(METHODS)}")
    else:
        schedule()
        for key, value in (loss_weights or {}).items():
            if key not in DEFAULT_WEIGHTS[method]:
                raise ValueError(f"loss_weights has term {key!r}, unknown for method {method!r}; expected some of {sorted(DEFAULT_WEIGHTS[method])}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"loss_weights[{key!r}]={value!r} is invalid; expected a finite number")
    if attention_res is not None:
        if len(attention_res) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in attention_res):
            raise ValueError(f"attention_res={attention_res!r} is invalid; expected two positive integers (h, w)")


def check_guidance_inputs(
    *,
    method: str | None,
    prompt: str | list[str] | None,
    subjects: Any,
    tokenizer: Any,
    unet: torch.nn.Module,
    latent_size: tuple[int, int],
    num_inference_steps: int,
    guided_steps: int | None,
    step_size: float | None,
    refine_thresholds: Mapping[int, float] | None,
    attention_res: tuple[int, int] | None,
    boxes: Any,
    loss_weights: Mapping[str, float] | None,
    return_attention_maps: bool,
    token_softmax: str = "all",
) -> None:
    """Reject bad guidance arguments with a one-line ``ValueError`` before any model runs."""
    _check_token_softmax(token_softmax)
    check_method_options(
        method=method,
        boxes=boxes,
        guided_steps=guided_steps,
        step_size=step_size,
        refine_thresholds=refine_thresholds,
        loss_weights=loss_weights,
        attention_res=attention_res,
        schedule=lambda: schedule_options(method, num_inference_steps, guided_steps, step_size, refine_thresholds),
    )
    if method is not None or return_attention_maps:
        AttentionCapture(unet, latent_size=latent_size, resolution=attention_res)  # validates the grid
    if not isinstance(return_attention_maps, bool):
        raise ValueError(f"return_attention_maps={return_attention_maps!r} is invalid; expected True or False")
    plan_subjects(method=method, prompt=prompt, subjects=subjects, tokenizer=tokenizer, boxes=boxes)


def schedule_options(
    method: str,
    num_inference_steps: int,
    guided_steps: int | None,
    step_size: float | None,
    refine_thresholds: Mapping[int, float] | None,
) -> GuidanceSchedule:
    """The method's :class:`GuidanceSchedule` with the caller's overrides (None keeps the default)."""
    overrides = {"guided_steps": guided_steps, "step_size": step_size, "refine_thresholds": refine_thresholds}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "refine_thresholds" in overrides:
        overrides["refine_thresholds"] = dict(overrides["refine_thresholds"]) or None
    if "step_size" in overrides and not isinstance(overrides["step_size"], (int, float)):
        raise ValueError(f"step_size={step_size!r} is invalid; expected a number >= 0")
    return GuidanceSchedule.for_method(method, num_inference_steps=num_inference_steps, **overrides)


@contextlib.contextmanager
def frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Temporarily stop ``module``'s parameters from requiring grad (only latent gradients are wanted)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


class LatentGuidance:
    """Applies a method's attention-guided latent updates across the denoising loop.

    ``forward(z)`` must run the UNet's conditional branch on latent ``z`` for the current step
    (scaled input, conditional embeddings only); it is called inside the capture's guiding mode.
    """

    def __init__(
        self,
        *,
        method: str,
        schedule: GuidanceSchedule,
        prompts: Sequence[PromptSubjects],
        capture: AttentionCapture,
        unet: torch.nn.Module,
        loss_weights: Mapping[str, float] | None = None,
    ):
        self.method = method
        self.schedule = schedule
        self.prompts = _merge_equal(prompts)
        self.capture = capture
        self.unet = unet
        self.loss_weights = dict(loss_weights) if loss_weights else None
        self.step_sizes = schedule.step_sizes
        self._history: list[dict[str, torch.Tensor]] = []

    def needed(self, i: int) -> bool:
        """Whether step ``i`` runs a guided forward pass (an update or a refinement)."""
        return self.schedule.is_guided(i) or self.schedule.target_loss(i) is not None

    def update(self, latents: torch.Tensor, i: int, forward: Callable[[torch.Tensor], Any]) -> torch.Tensor:
        """Return the latents after step ``i``'s refinement (if any) and guided update (if any)."""
        if not self.needed(i):
            return latents
        alpha = self.step_sizes[i]
        target = self.schedule.target_loss(i)
        cap = self.schedule.max_refine_iters_at(i)
        with torch.enable_grad(), frozen_parameters(self.unet):
            z = latents.detach().requires_grad_(True)
            total, parts = self.loss(z, forward)
            if target is not None and cap > 0:
                z, total, parts = self._refine(z, total, parts, alpha, target, forward, cap)
            if self.schedule.is_guided(i):
                z = _gradient_step(z, total, alpha)
                self._history.append({"total": total.detach(), **{k: v.detach() for k, v in parts.items()}})
        return z.detach()

    def loss(self, z: torch.Tensor, forward: Callable[[torch.Tensor], Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the guided forward pass on ``z`` and return the loss ``[B]`` and its parts ``{name: [B]}``."""
        maps = self.capture.forward_until_captured(lambda: forward(z))  # [B, h, w, T]
        totals, parts = [], {}
        for prompt in self.prompts:
            total, part = guidance_loss(
                self.method,
                maps[prompt.rows],
                prompt.groups,
                prompt_length=prompt.prompt_length,
                boxes=prompt.boxes,
                weights=self.loss_weights,
            )
            totals.append(total)
            for name, value in part.items():
                parts.setdefault(name, []).append(value)
        return torch.cat(totals), {name: torch.cat(values) for name, values in parts.items()}

    def _refine(self, z, total, parts, alpha, target, forward, cap):
        """A&E's iterative refinement, batched: image b keeps updating while its loss exceeds ``target``.

        Same sequence as diffusers per image (and Divide & Bind's code): update with L(z_{k-1});
        continue while L(z_{k-1}) > target and k < cap; then one more forward for the final loss.
        """
        active = _refine_value(self.method, total, parts) > target  # [B] bool
        if not bool(active.any()):  # host sync: the threshold check
            return z, total, parts
        for k in range(1, cap + 1):
            z = _gradient_step(z, total, alpha, where=active)
            active = active & (_refine_value(self.method, total, parts) > target) & (k < cap)
            z = z.detach().requires_grad_(True)
            total, parts = self.loss(z, forward)
            if not bool(active.any()):
                break
        return z, total, parts

    def losses(self) -> dict[str, torch.Tensor]:
        """Loss parts (and ``"total"``) of every guided step → ``{name: [guided steps, B]}``, float32 on CPU."""
        if not self._history:
            return {}
        return {name: torch.stack([h[name] for h in self._history]).float().cpu() for name in self._history[0]}


def _refine_value(method: str, total: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The per-image value that refinement thresholds are compared with."""
    name = _REFINE_PART.get(method)
    return parts[name].detach() if name in parts else total.detach()


def _gradient_step(z: torch.Tensor, loss: torch.Tensor, alpha: float, where: torch.Tensor | None = None) -> torch.Tensor:
    """``z − α ∇_z Σ_b L_b`` (images are independent, so each gets its own gradient); rows ``where`` only."""
    if not loss.requires_grad:
        return z
    (grad,) = torch.autograd.grad(loss.sum(), [z])
    if where is not None:
        grad = grad * where.view(-1, *([1] * (grad.ndim - 1))).to(grad.dtype)
    return z - alpha * grad


def _merge_equal(prompts: Sequence[PromptSubjects]) -> list[PromptSubjects]:
    """Join consecutive prompts with the same groups, length and boxes, so their loss runs batched."""
    merged: list[PromptSubjects] = []
    for prompt in prompts:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.groups == prompt.groups
            and last.prompt_length == prompt.prompt_length
            and _same_boxes(last.boxes, prompt.boxes)
            and last.rows.stop == prompt.rows.start
        ):
            merged[-1] = PromptSubjects(slice(last.rows.start, prompt.rows.stop), last.groups, last.prompt_length, last.boxes)
        else:
            merged.append(prompt)
    return merged


def _same_boxes(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


class GuidanceRun:
    """One pipeline call's guidance state: the capture, the latent guidance, and the recorded maps.

    ``with run:`` installs the capturing processors (when guidance or maps are wanted) and always
    restores the UNet's own processors on exit, even after an error.
    """

    def __init__(self, *, capture: AttentionCapture | None, guide: LatentGuidance | None, record_maps: bool):
        self.capture = capture
        self.guide = guide
        self.record_maps = record_maps
        self._maps: list[torch.Tensor] = []

    def __enter__(self) -> "GuidanceRun":
        if self.capture is not None:
            self.capture.install()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.capture is not None:
            self.capture.restore()

    def update(self, latents: torch.Tensor, i: int, forward: Callable[[torch.Tensor], Any]) -> torch.Tensor:
        """Step ``i``'s guided latent update (identity without guidance or outside guided steps)."""
        return latents if self.guide is None else self.guide.update(latents, i, forward)

    @contextlib.contextmanager
    def denoising_pass(self, cond_rows: slice) -> Iterator[None]:
        """Wrap the step's ordinary UNet call; records the maps of rows ``cond_rows`` when asked."""
        if not self.record_maps:
            yield
            return
        with self.capture.observing(cond_rows):
            yield
            self._maps.append(self.capture.maps())

    def losses(self) -> dict[str, torch.Tensor] | None:
        """``{part: [guided steps, B]}`` (with ``"total"``), or None without guidance."""
        return None if self.guide is None else self.guide.losses()

    def attention_maps(self) -> torch.Tensor | None:
        """Recorded maps ``[steps, B, h, w, T]`` (float32, CPU), or None if not requested."""
        return torch.stack(self._maps).float().cpu() if self.record_maps and self._maps else None


def prepare_guidance(
    *,
    method: str | None,
    unet: torch.nn.Module,
    latent_size: tuple[int, int],
    num_timesteps: int,
    prompts: Sequence[PromptSubjects],
    guided_steps: int | None = None,
    step_size: float | None = None,
    refine_thresholds: Mapping[int, float] | None = None,
    attention_res: tuple[int, int] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    return_attention_maps: bool = False,
) -> GuidanceRun:
    """Build the :class:`GuidanceRun` of one call (no capture at all when neither guidance nor maps are wanted)."""
    if method is None and not return_attention_maps:
        return GuidanceRun(capture=None, guide=None, record_maps=False)
    capture = AttentionCapture(unet, latent_size=latent_size, resolution=attention_res)
    guide = None
    if method is not None:
        guide = LatentGuidance(
            method=method,
            schedule=schedule_options(method, num_timesteps, guided_steps, step_size, refine_thresholds),
            prompts=prompts,
            capture=capture,
            unet=unet,
            loss_weights=loss_weights,
        )
    return GuidanceRun(capture=capture, guide=guide, record_maps=return_attention_maps)
