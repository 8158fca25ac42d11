"""Attention-guidance losses of AI-T2I and its baselines, as pure functions of attention maps.

Every loss takes ``maps [B, H, W, T]`` — cross-attention probabilities of the conditional branch
(softmax over all T tokens, BOS at 0), averaged over heads and captured layers — and subject
groups from :func:`attnsynth.t2i.subjects.resolve_subjects`, and returns one loss per image,
``[B]`` float32. Image b's loss depends only on ``maps[b]``. Inputs may be float16/bfloat16;
computation is float32. No host syncs (argmax and masks only), so these run inside a guided
denoising step on any device.

A subject group's map is the **sum** of its token maps (:func:`group_maps`): the probability
that a pixel attends to any token of the subject, so multi-token words ("hedgehog" → several
BPE tokens), synonyms and repeated mentions act as one subject, and a one-token group is exactly
that token's map. Sum keeps the mass of every token and passes gradient to all of them (a max
would feed only the winning token at each pixel).

Notation: D = ``diagonal(H, W)`` = √((H−1)² + (W−1)²); E = √(H² + W²); c(A) = centroid;
sg = stop-gradient; p_j, g_j = peak and disc centroid of the j-th non-maximum-suppression disc
(:func:`attnsynth.attention.geometry.find_peaks`); Â = softmax over tokens of 100·A.

``method="ait2i"`` is the authors' loss (Hatter77/AI-T2I ``compute_multi_token_loss``), checked
against numbers recorded from their pipeline (tests/test_parity_ait2i.py). For two single-token
subjects whose attribute is the token before the noun ("a red cat and a blue dog") every term
equals theirs. attnsynth generalises it — N subjects (isolation averaged over pairs, aggregation
and attribute summed over subjects), synonym / multi-token groups (summed maps), the subject's
real attribute words instead of always token k−1 (no attribute → no attribute term), batched
images without host syncs, and a fallback for degenerate discs (see ``find_peaks``) — none of
which changes that case.

``method="divide-bind"`` is the authors' default mode (boschresearch/Divide-and-Bind,
``loss_mode="tv"``): ``−min_k TV(Â_k)`` with their TV (tests/test_parity_divide_bind.py);
attnsynth's JSD binding term is a named opt-in (weight 0 by default).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from attnsynth.attention.geometry import (
    centroid,
    diagonal,
    find_peaks,
    gaussian_smooth,
    mass_in_box,
    normalise,
)
from attnsynth.t2i.subjects import SubjectGroup

__all__ = [
    "DEFAULT_WEIGHTS",
    "METHODS",
    "aggregation_loss",
    "attend_excite_loss",
    "attribute_loss",
    "box_loss",
    "divide_bind_loss",
    "excitation_loss",
    "group_maps",
    "guidance_loss",
    "isolation_loss",
    "max_attention_per_subject",
]

METHODS = ("ait2i", "attend-excite", "divide-bind", "layout")

# Loss weights per method; a weight of 0 skips the term. Keys are the names in `parts`.
DEFAULT_WEIGHTS: dict[str, dict[str, float]] = {
    # AI-T2I public code: L = 2.0·L_iso + 1.25·Σ_k L_agg,k + 0.25·L_exc + 0.75·Σ_k L_adj,k
    # (aggregation and attribute terms are summed over subjects, as in the paper).
    "ait2i": {"isolation": 2.0, "aggregation": 1.25, "excitation": 0.25, "attribute": 0.75},
    # Attend-and-Excite: L = max(0, 1 − min_k max Â_k).
    "attend-excite": {"excitation": 1.0},
    # Divide & Bind, the authors' default mode ("tv"): attendance −min_k TV_k only. binding is
    # attnsynth's JSD noun/attribute term, a named opt-in (loss_weights={"binding": w > 0}); it is
    # not the authors' "tv_bind" term.
    "divide-bind": {"attendance": 1.0, "binding": 0.0},
    # Layout guidance (Chen et al.) box loss, plus a light AI-T2I aggregation so each subject
    # forms one blob inside its box; isolation is redundant when boxes already separate subjects.
    "layout": {"box": 1.0, "aggregation": 0.25, "isolation": 0.0, "excitation": 0.0, "attribute": 0.0},
}

def _norm(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dimension (``torch.norm`` of the authors; gradient 0 at 0)."""
    return torch.linalg.vector_norm(vectors, dim=-1)


def _zeros(maps: torch.Tensor) -> torch.Tensor:
    """Per-image zero loss ``[B]`` still connected to the graph of ``maps``."""
    return maps.float().sum(dim=(1, 2, 3)) * 0.0


def _check_maps(maps: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps has shape {shape}; expected a tensor [B, H, W, T]")


def _selection(
    index_sets: Sequence[Sequence[int]], num_tokens: int, *, offset: int, device: torch.device, what: str
) -> torch.Tensor:
    """Matrix ``[num_tokens, K]`` with 1 where token ``i − offset`` belongs to set k (checked on host)."""
    for indices in index_sets:
        for index in indices:
            if not 0 <= index - offset < num_tokens:
                raise ValueError(
                    f"{what} token index {index} is out of range; expected {offset} <= index < {num_tokens + offset}"
                )
    key = tuple(tuple(index - offset for index in indices) for indices in index_sets)
    return _selection_matrix(key, num_tokens, device)


@functools.lru_cache(maxsize=256)
def _selection_matrix(positions: tuple[tuple[int, ...], ...], num_tokens: int, device: torch.device) -> torch.Tensor:
    """The selection matrix on ``device``, built once per prompt: a blocking host→device copy
    waits for the device's queue, so it must not happen at every denoising step."""
    matrix = torch.zeros(num_tokens, len(positions))
    for k, indices in enumerate(positions):
        matrix[list(indices), k] = 1.0
    return matrix.to(device)


@functools.lru_cache(maxsize=256)
def _device_constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A small constant tensor on ``device``, copied there once (see :func:`_selection_matrix`)."""
    return torch.tensor(values, dtype=dtype).to(device)


def _combine(maps: torch.Tensor, index_sets: Sequence[Sequence[int]], *, offset: int, what: str) -> torch.Tensor:
    """Sum the token maps of each index set: ``[B, H, W, T] → [B, K, H, W]``."""
    selection = _selection(index_sets, maps.shape[-1], offset=offset, device=maps.device, what=what)
    return torch.einsum("bhwt,tk->bkhw", maps.float(), selection)


def group_maps(
    maps: torch.Tensor, groups: Sequence[SubjectGroup], *, token_field: str = "token_indices"
) -> torch.Tensor:
    """Each group's map, the sum of its token maps: ``[B, H, W, T] → [B, K, H, W]`` float32.

    ``token_field="attribute_indices"`` sums the attribute tokens instead (zeros where none).
    """
    _check_maps(maps)
    if token_field not in ("token_indices", "attribute_indices"):
        raise ValueError(f"token_field={token_field!r} is invalid; expected 'token_indices' or 'attribute_indices'")
    if token_field == "token_indices":
        for group in groups:
            if not group.token_indices:
                raise ValueError(f"subject group {group.name!r} has no tokens; expected at least one token index")
    return _combine(maps, [getattr(g, token_field) for g in groups], offset=0, what=f"subject {token_field}")


def aggregation_loss(
    maps: torch.Tensor,
    groups: Sequence[SubjectGroup],
    *,
    radius: float = 5.0,
    n_peaks: int = 3,
    reduction: str = "mean",
) -> torch.Tensor:
    """AI-T2I aggregation: pull each subject's secondary blobs onto its dominant one → ``[B]``.

    Per group k (``n_peaks``-disc NMS of radius ``radius`` on its map A_k):
    ``L_agg,k = [Σ_j ‖sg(p_1) − g_j‖ + ‖g_2 − g_3‖] / D`` (the spread term only for n ≥ 3,
    as the authors' code). ``reduction`` over groups: "mean" or "sum" (the authors' Σ_k, used by
    :func:`guidance_loss`). No groups → 0.
    """
    _check_reduction(reduction)
    if not groups:
        return _zeros(maps)
    subject_maps = group_maps(maps, groups)  # [B, K, H, W]
    peaks, centres = find_peaks(subject_maps, n_peaks=n_peaks, radius=radius)  # [B, K, n, 2] each
    per_group = _blob_pull(peaks[..., :1, :], centres) / diagonal(*subject_maps.shape[-2:])  # [B, K]
    return per_group.mean(dim=-1) if reduction == "mean" else per_group.sum(dim=-1)


def _blob_pull(target: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``Σ_j ‖sg(target) − g_j‖ + ‖g_2 − g_3‖`` → ``[...]``; target ``[..., 1, 2]``, centres ``[..., n, 2]``.

    The distance sum shared by the aggregation and attribute terms (the spread term needs 3 discs).
    """
    pull = _norm(target.detach() - centres).sum(dim=-1)
    if centres.shape[-2] >= 3:  # a shape check, not a value check
        pull = pull + _norm(centres[..., 1, :] - centres[..., 2, :])
    return pull


def isolation_loss(
    maps: torch.Tensor, groups: Sequence[SubjectGroup], *, distance: str = "euclidean"
) -> torch.Tensor:
    """AI-T2I isolation: push different subjects' attention apart → ``[B]``, mean over pairs i < j.

    ``distance="euclidean"``: ``1 − ‖c(A_i) − c(A_j)‖ / E`` with E = √(H² + W²) (22.63 for
    16×16, not the pixel-centre diagonal D) — the authors' term for 2 subjects, whose centroids are
    of the whole (unsmoothed) maps.
    ``distance="cosine"``: ``⟨A_i, A_j⟩ / (‖A_i‖‖A_j‖)``, the overlap of the flattened maps.
    Fewer than two groups → 0.
    """
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance={distance!r} is invalid; expected 'euclidean' or 'cosine'")
    if len(groups) < 2:
        return _zeros(maps)
    subject_maps = group_maps(maps, groups)  # [B, K, H, W]
    pairs = list(itertools.combinations(range(len(groups)), 2))
    first = _device_constant(tuple(i for i, _ in pairs), maps.device)
    second = _device_constant(tuple(j for _, j in pairs), maps.device)
    if distance == "euclidean":
        centres = centroid(subject_maps)  # [B, K, 2]
        gaps = _norm(centres[:, first] - centres[:, second])  # [B, P]
        height, width = subject_maps.shape[-2:]
        per_pair = 1.0 - gaps / math.hypot(height, width)  # E, the authors' normaliser of this term
    else:
        flat = subject_maps.flatten(2)  # [B, K, HW]
        unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        per_pair = (unit[:, first] * unit[:, second]).sum(dim=-1)  # [B, P]
    return per_pair.mean(dim=-1)


def attribute_loss(
    maps: torch.Tensor,
    groups: Sequence[SubjectGroup],
    *,
    radius: float = 6.0,
    n_peaks: int = 3,
    reduction: str = "mean",
) -> torch.Tensor:
    """AI-T2I attribute alignment: pull each attribute's blobs onto its noun's peak → ``[B]``.

    For a group with attribute tokens (their maps summed into A_adj; "a small red cat" → small +
    red): ``L_adj = [Σ_j ‖sg(p_1(A_noun)) − g_j(A_adj)‖ + ‖g_2 − g_3‖] / D`` with the NMS of
    radius ``radius`` on A_adj and p_1(A_noun) the argmax of the noun's map — the authors' term,
    whose adjective is always the token before the noun; here it is the subject's own attribute
    words (:mod:`attnsynth.t2i.subjects`), and a subject without one has no attribute term.
    ``reduction`` over the groups that have attributes ("mean" or the authors' "sum"); no
    attributes anywhere → 0.
    """
    _check_reduction(reduction)
    bound = [g for g in groups if g.attribute_indices]
    if not bound:
        return _zeros(maps)
    noun_maps = group_maps(maps, bound)  # [B, K, H, W]
    attribute_maps = group_maps(maps, bound, token_field="attribute_indices")  # [B, K, H, W]
    noun_peak = find_peaks(noun_maps, n_peaks=1, radius=radius)[0]  # [B, K, 1, 2], no gradient
    _, centres = find_peaks(attribute_maps, n_peaks=n_peaks, radius=radius)  # [B, K, n, 2]
    per_group = _blob_pull(noun_peak, centres) / diagonal(*noun_maps.shape[-2:])  # [B, K]
    return per_group.mean(dim=-1) if reduction == "mean" else per_group.sum(dim=-1)


def _text_softmax(maps: torch.Tensor, prompt_length: int | None) -> torch.Tensor:
    """Token re-normalisation ``softmax(100·A[..., 1:L−1])`` over tokens → ``[B, H, W, L−2]``.

    ``prompt_length=None`` (L = T) is the slice ``[1:-1]`` of the authors' AI-T2I, Attend-and-
    Excite (SD 1.x) and Divide & Bind code and of diffusers' A&E pipeline: every position but
    the first and last, so EOS and padding take part — the same slice for every prompt. A
    prompt's own length (BOS and EOS counted) renormalises over its words only (the
    ``token_softmax="prompt"`` variant of the pipelines; A&E's original code does this only for
    SD 2.1, its ``sd_2_1`` flag).
    """
    _check_maps(maps)
    num_tokens = maps.shape[-1]
    length = num_tokens if prompt_length is None else prompt_length
    if isinstance(length, bool) or not isinstance(length, int) or not 3 <= length <= num_tokens:
        raise ValueError(
            f"prompt_length={prompt_length!r} is invalid; "
            f"expected an integer in [3, {num_tokens}] (BOS and EOS included)"
        )
    return torch.softmax(maps.float()[..., 1 : length - 1] * 100, dim=-1)


def _max_attention(
    maps: torch.Tensor,
    index_sets: Sequence[Sequence[int]],
    *,
    prompt_length: int | None,
    smooth: bool,
    kernel_size: int,
    sigma: float,
) -> torch.Tensor:
    """Max over pixels of the (smoothed) re-normalised attention of each index set → ``[B, K]``."""
    text = _text_softmax(maps, prompt_length)  # [B, H, W, L−2]
    subject_maps = _combine(text, index_sets, offset=1, what="subject")  # [B, K, H, W]
    if smooth:
        subject_maps = gaussian_smooth(subject_maps, kernel_size=kernel_size, sigma=sigma)
    return subject_maps.amax(dim=(-2, -1))


def max_attention_per_subject(
    maps: torch.Tensor,
    groups: Sequence[SubjectGroup],
    *,
    prompt_length: int | None,
    smooth: bool = True,
    kernel_size: int = 3,
    sigma: float = 0.5,
) -> torch.Tensor:
    """A&E activation per subject → ``[B, K]``: ``max_{x} G(Σ_{t∈k} Â_t)(x)``, Â = softmax(100·A[1:L−1]).

    ``prompt_length`` counts BOS and EOS (None = T: the authors' ``[1:-1]`` slice, see
    :func:`_text_softmax`). G = reflect-pad by 1 and the 3×3 Gaussian of σ = 0.5
    (:func:`~attnsynth.attention.geometry.gaussian_smooth`). Used for the excitation loss and
    for A&E's refinement thresholds.
    """
    return _max_attention(
        maps,
        [g.token_indices for g in groups],
        prompt_length=prompt_length,
        smooth=smooth,
        kernel_size=kernel_size,
        sigma=sigma,
    )


def excitation_loss(
    maps: torch.Tensor, groups: Sequence[SubjectGroup], *, prompt_length: int | None, smooth: bool = True
) -> torch.Tensor:
    """Attend-and-Excite term ``L_exc = max(0, 1 − min_k max G(Â_k))`` over subject groups → ``[B]``.

    AI-T2I's excitation term with ``prompt_length=None`` (softmax over ``[1:-1]``).
    """
    if not groups:
        return _zeros(maps)
    peak = max_attention_per_subject(maps, groups, prompt_length=prompt_length, smooth=smooth)  # [B, K]
    return (1.0 - peak.amin(dim=-1)).clamp_min(0.0)


def attend_excite_loss(
    maps: torch.Tensor,
    token_indices: Sequence[int],
    *,
    prompt_length: int | None,
    smooth: bool = True,
    sigma: float = 0.5,
    kernel_size: int = 3,
) -> torch.Tensor:
    """diffusers' A&E loss per image → ``[B]``: ``max_t max(0, 1 − max_x G(Â_t)(x))``.

    Equals ``_compute_loss(_compute_max_attention_per_index(maps[b], token_indices))`` of
    ``StableDiffusionAttendAndExcitePipeline`` for every b when ``prompt_length=None`` (diffusers
    and A&E's own SD 1.x code slice ``[1:-1]``); with the prompt's length it renormalises over the
    prompt's tokens ``[1:L−1]`` (A&E's ``sd_2_1`` behaviour).
    """
    if len(token_indices) == 0:  # no subjects: nothing to excite
        return _zeros(maps)
    peak = _max_attention(
        maps,
        [[int(i)] for i in token_indices],
        prompt_length=prompt_length,
        smooth=smooth,
        kernel_size=kernel_size,
        sigma=sigma,
    )  # [B, K]
    return (1.0 - peak).clamp_min(0.0).amax(dim=-1)


def _jensen_shannon(p: torch.Tensor, q: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """JSD between spatial distributions ``[..., H, W]`` (natural log) → ``[...]``."""
    mid = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        return (a * (torch.log(a.clamp_min(eps)) - torch.log(mid.clamp_min(eps)))).sum(dim=(-2, -1))

    return 0.5 * kl(p) + 0.5 * kl(q)


def _divide_bind_total_variation(maps: torch.Tensor) -> torch.Tensor:
    """Divide & Bind's total variation of maps ``[..., H, W]`` → ``[...]`` (float32).

    ``mean_{i, j<W−1} |A[i, j] − A[i, j+1]| + mean_{i≥1, j} |A[H−1, j] − A[i, j]|``: the first term
    compares horizontally adjacent pixels, the second compares the **last row with every row**
    (rows 1 … H−1) — what the authors' code computes, ``L1Loss(A[:, :-1], A[:, 1:]) +
    L1Loss(A[-1:, :], A[1:, :])`` (broadcast), rather than the adjacent-row term of the textbook
    anisotropic TV (:func:`~attnsynth.attention.geometry.total_variation`). A side of length 1
    contributes 0.
    """
    maps = maps.float()
    total = maps.new_zeros(maps.shape[:-2])
    if maps.shape[-1] > 1:  # a shape check, not a value check
        total = total + (maps[..., :, :-1] - maps[..., :, 1:]).abs().mean(dim=(-2, -1))
    if maps.shape[-2] > 1:
        total = total + (maps[..., -1:, :] - maps[..., 1:, :]).abs().mean(dim=(-2, -1))
    return total


def _divide_bind_parts(
    maps: torch.Tensor, groups: Sequence[SubjectGroup], *, prompt_length: int | None, smooth: bool = True
) -> dict[str, torch.Tensor]:
    """Divide & Bind terms ``{"attendance": [B], "binding": [B]}`` on A&E-normalised maps.

    attendance = −min_k TV_k (the authors' TV, :func:`_divide_bind_total_variation`); binding is
    attnsynth's JSD term (the opt-in, see :func:`divide_bind_loss`).
    """
    if not groups:
        return {"attendance": _zeros(maps), "binding": _zeros(maps)}
    text = _text_softmax(maps, prompt_length)  # [B, H, W, L−2]
    subjects = _combine(text, [g.token_indices for g in groups], offset=1, what="subject")  # [B, K, H, W]
    if smooth:
        subjects = gaussian_smooth(subjects)
    attendance = -_divide_bind_total_variation(subjects).amin(dim=-1)  # the least-spread-out subject drives it
    bound = [k for k, g in enumerate(groups) if g.attribute_indices]
    if not bound:
        return {"attendance": attendance, "binding": _zeros(maps)}
    attributes = _combine(text, [groups[k].attribute_indices for k in bound], offset=1, what="attribute")
    if smooth:
        attributes = gaussian_smooth(attributes)
    nouns = subjects[:, _device_constant(tuple(bound), maps.device)]  # [B, K', H, W]
    binding = _jensen_shannon(normalise(nouns), normalise(attributes)).mean(dim=-1)
    return {"attendance": attendance, "binding": binding}


def divide_bind_loss(
    maps: torch.Tensor,
    groups: Sequence[SubjectGroup],
    *,
    prompt_length: int | None,
    weights: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """Divide & Bind → ``[B]``: ``w_a·L_attend + w_b·L_bind`` (default ``w_b = 0``: ``L_attend`` only).

    Â as in A&E (softmax(100·A[1:L−1]) over tokens, L = T for ``prompt_length=None`` = the
    authors' ``[1:-1]``; reflect-padded 3×3 Gaussian, σ = 0.5), summed per group.
    ``L_attend = −min_k TV(Â_k)`` with the authors' TV (:func:`_divide_bind_total_variation`:
    horizontal neighbours + last row against every row): maximise the total variation of the
    least-varied subject. With the default weights, ``prompt_length=None`` and single-token
    subjects this is the authors' default-mode (``loss_mode="tv"``) loss, boschresearch/
    Divide-and-Bind ``_compute_loss_geiven_attn_map`` — value and gradient, checked against
    numbers recorded from their code (tests/test_parity_divide_bind.py); their refinement
    schedule is ``METHOD_DEFAULTS["divide-bind"]`` in :mod:`attnsynth.t2i.schedule`.

    ``L_bind`` is a named opt-in of attnsynth, **not** the authors' ``"tv_bind"`` mode (which
    binds to attribute maps from the 32²/64² layers, rescaled, pixel-softmaxed and thresholded,
    with a step-dependent weight, per token inside ``max_k``): weight ``w_b > 0`` via
    ``weights={"binding": w_b}`` (pipelines: ``loss_weights``) adds the mean over groups with
    attributes of ``JSD(Â_noun/ΣÂ_noun ‖ Â_adj/ΣÂ_adj)``. Refinement still checks the TV part.
    """
    total, _ = guidance_loss("divide-bind", maps, groups, prompt_length=prompt_length, weights=weights)
    return total


def _box_tensor(
    boxes: Any, groups: Sequence[SubjectGroup], batch: int, device: torch.device
) -> tuple[list[int], torch.Tensor]:
    """Resolve ``boxes`` to (indices of boxed groups, boxes ``[B, K', 4]``), validated on the host."""
    if isinstance(boxes, Mapping):
        lookup: dict[str, int] = {}
        for k, group in enumerate(groups):
            for name in {group.name, *group.name.split("/")}:
                lookup[name] = k
        chosen: dict[int, tuple[float, ...]] = {}
        for name, box in boxes.items():
            if name not in lookup:
                raise ValueError(
                    f"boxes has subject {name!r}, which is not a subject; expected one of {sorted(lookup)}"
                )
            values = tuple(float(v) for v in box)
            if len(values) != 4 or not (0 <= values[0] < values[2] <= 1 and 0 <= values[1] < values[3] <= 1):
                raise ValueError(
                    f"boxes[{name!r}]={tuple(box)!r} is invalid; "
                    "expected (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
                )
            chosen[lookup[name]] = values
        indices = sorted(chosen)
        table = _device_constant(tuple(chosen[k] for k in indices), device, torch.float32).reshape(-1, 4)
        return indices, table.expand(batch, -1, -1)
    if isinstance(boxes, torch.Tensor):
        if boxes.ndim == 2:
            boxes = boxes.unsqueeze(0).expand(batch, -1, -1)
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[1] != len(groups) or boxes.shape[0] != batch:
            raise ValueError(
                f"boxes has shape {tuple(boxes.shape)}; expected [{len(groups)}, 4] or [{batch}, {len(groups)}, 4]"
            )
        return list(range(len(groups))), boxes.to(device=device, dtype=torch.float32)
    raise ValueError(
        f"boxes has type {type(boxes).__name__}; expected a dict {{subject: (x0, y0, x1, y1)}} or a tensor [K, 4]"
    )


def box_loss(maps: torch.Tensor, groups: Sequence[SubjectGroup], boxes: Any) -> torch.Tensor:
    """Layout guidance (Chen et al.) → ``[B]``: ``Σ_i (1 − Σ A_i·box_i / Σ A_i)²`` over boxed subjects.

    ``boxes``: ``{subject name (or one synonym): (x0, y0, x1, y1)}`` in [0, 1] image coordinates
    (subjects without a box are not constrained), or a tensor ``[K, 4]`` / ``[B, K, 4]`` in group
    order (keep it on the maps' device: a copy per step would wait for the device). Pixels partly
    inside a box count by the covered fraction.
    """
    _check_maps(maps)
    indices, table = _box_tensor(boxes, groups, maps.shape[0], maps.device)
    if not indices:
        return _zeros(maps)
    subject_maps = group_maps(maps, [groups[k] for k in indices])  # [B, K', H, W]
    inside = mass_in_box(subject_maps, table)  # [B, K']
    return ((1.0 - inside) ** 2).sum(dim=-1)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is invalid; expected 'mean' or 'sum'")


def guidance_loss(
    method: str,
    maps: torch.Tensor,
    groups: Sequence[SubjectGroup],
    *,
    prompt_length: int | None,
    boxes: Any = None,
    weights: Mapping[str, float] | None = None,
    isolation_distance: str = "euclidean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The latent-update objective of ``method`` → ``(total [B], parts {term: [B]})``.

    ``total = Σ_term weight·part`` with ``DEFAULT_WEIGHTS[method]`` updated by ``weights``; terms
    of weight 0 are skipped (absent from ``parts``). ait2i: isolation, aggregation (Σ over
    subjects), excitation, attribute (Σ) — with ``prompt_length=None`` the authors' L.
    attend-excite: excitation. divide-bind: attendance, binding. layout: box (``boxes``
    required) and the ait2i terms with their layout weights. ``prompt_length`` only matters to
    the token softmax Â (excitation, divide-bind): None = the authors' ``[1:-1]`` slice.
    """
    if method not in DEFAULT_WEIGHTS:
        raise ValueError(f"method={method!r} is unknown; expected one of {list(METHODS)}")
    chosen = dict(DEFAULT_WEIGHTS[method])
    for key, value in (weights or {}).items():
        if key not in chosen:
            raise ValueError(
                f"weights has term {key!r}, unknown for method {method!r}; expected some of {sorted(chosen)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"weights[{key!r}]={value!r} is invalid; expected a finite number")
        chosen[key] = float(value)
    if method == "layout" and boxes is None:
        raise ValueError("boxes is None; method 'layout' needs a box per constrained subject")
    if method != "layout" and boxes is not None:
        raise ValueError(f"boxes were given but method={method!r} ignores them; use method 'layout'")
    _check_maps(maps)

    parts: dict[str, torch.Tensor] = {}
    active = {key for key, value in chosen.items() if value != 0.0}
    if "isolation" in active:
        parts["isolation"] = isolation_loss(maps, groups, distance=isolation_distance)
    if "aggregation" in active:
        parts["aggregation"] = aggregation_loss(maps, groups, reduction="sum")
    if "excitation" in active:
        parts["excitation"] = excitation_loss(maps, groups, prompt_length=prompt_length)
    if "attribute" in active:
        parts["attribute"] = attribute_loss(maps, groups, reduction="sum")
    if active & {"attendance", "binding"}:
        divide_bind = _divide_bind_parts(maps, groups, prompt_length=prompt_length)
        parts.update({key: divide_bind[key] for key in ("attendance", "binding") if key in active})
    if "box" in active:
        parts["box"] = box_loss(maps, groups, boxes)

    total = _zeros(maps)
    for key, part in parts.items():
        total = total + chosen[key] * part
    return total, parts
