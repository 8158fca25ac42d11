"""Token grounding for the shapes-world T2I model: keep each subject word's attention on its object.

A text encoder trained from scratch together with the UNet is free to spread a caption's meaning
over every token, and then no token's cross-attention map shows where its object is (measured on
the stop-7 model: a subject's map held the same share of mass inside its object's box as the box's
share of the image). Attention guidance (A&E, AI-T2I, …) edits exactly those maps, so on such a
model it steers noise. Stable Diffusion's frozen CLIP keeps words local; here the shapes world
knows every object's pixels, so training adds a grounding term in the spirit of TokenCompose
(Wang et al., CVPR 2024): for each subject's noun and colour tokens, the share of the token's
attention that falls outside its object,

    L_ground = mean over (image, token) of  1 − Σ_xy Â_t(x, y) · M_o(x, y),   Â_t = A_t / Σ A_t,

with ``A_t`` the token's cross-attention map (softmax over tokens, averaged over heads and the
captured layers) and ``M_o`` its object's visible coverage on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["GroundingTargets", "grounding_loss", "grounding_targets", "subject_token_positions"]


def subject_token_positions(tokenizer, caption: str, spec, max_length: int) -> list[tuple[int, tuple[int, ...]]]:
    """``(object index, token positions of its noun and colour words)`` per subject of ``spec``; BOS = 0.

    Positions come from tokenising the caption up to each word (grammar words are whole tokens,
    and a prefix ending at a word boundary tokenises as in the full caption); positions cut off
    by ``max_length`` (EOS included) are dropped.
    """
    out = []
    for subject in spec.subjects:
        positions: list[int] = []
        for span in (subject.noun_span, subject.attribute_span):
            if span is None:
                continue
            start = 1 + len(tokenizer.tokenize(caption[: span[0]]))
            length = len(tokenizer.tokenize(caption[span[0] : span[1]]))
            positions.extend(p for p in range(start, start + length) if p < max_length - 1)
        out.append((subject.object_index, tuple(positions)))
    return out


@dataclass(frozen=True)
class GroundingTargets:
    """What one batch grounds: ``rows [N]`` image index, ``tokens [N]`` token position, ``masks [N, h, w]``."""

    rows: torch.Tensor
    tokens: torch.Tensor
    masks: torch.Tensor

    def to(self, device: torch.device | str) -> "GroundingTargets":
        return GroundingTargets(self.rows.to(device), self.tokens.to(device), self.masks.to(device))

    def __len__(self) -> int:
        return int(self.rows.numel())


def grounding_targets(tokenizer, captions: Sequence[str], specs: Sequence, *, size: int, max_length: int,
                      skip: Sequence[bool] = ()) -> GroundingTargets:
    """Every subject token of every caption (rows with ``skip[b]`` true, e.g. dropped captions, left out)."""
    from attnsynth.toyworld.shapes import object_masks

    rows: list[int] = []
    tokens: list[int] = []
    masks: list[np.ndarray] = []
    for b, (caption, spec) in enumerate(zip(captions, specs)):
        if b < len(skip) and skip[b]:
            continue
        coverage = object_masks(spec.objects, size)  # [K, size, size]
        for index, positions in subject_token_positions(tokenizer, caption, spec, max_length):
            for position in positions:
                rows.append(b)
                tokens.append(position)
                masks.append(coverage[index])
    stacked = np.stack(masks) if masks else np.zeros((0, size, size), np.float32)
    return GroundingTargets(torch.tensor(rows, dtype=torch.long), torch.tensor(tokens, dtype=torch.long), torch.from_numpy(stacked))


def grounding_loss(maps: torch.Tensor, targets: GroundingTargets) -> torch.Tensor:
    """Mean share of each target token's attention outside its object (formula in the module docstring).

    ``maps [B, h, w, T]`` cross-attention probabilities; returns a float32 scalar (0 with no targets).
    """
    if len(targets) == 0:
        return maps.sum() * 0.0
    token_maps = maps[targets.rows, :, :, targets.tokens].float()  # [N, h, w]
    token_maps = token_maps / token_maps.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    inside = (token_maps * targets.masks).sum(dim=(1, 2))  # [N]
    return (1.0 - inside).mean()
