"""Seeded weights in the authors' CA²-SIS layout, shared by the parity tests and by the scratch script that
recorded the authors' numbers (so both sides use bit-identical tensors).

Every tensor is drawn from its own ``torch.Generator`` seeded with ``seed + crc32(key)`` in float64:
matrices/kernels U(−1, 1)/√fan_in (PyTorch's Linear/Conv scale), 1-D ``*weight`` (norm gains) 1 + U(−0.1, 0.1),
other 1-D tensors (biases) U(−0.1, 0.1), spectral-norm ``weight_u`` / ``weight_v`` unit vectors; attention
``to_q`` / ``to_k`` weights ×2, so the attention logits reach ±1–2 (else the softmax over classes is nearly
uniform and a wrong logit barely shows in the image). So no tensor is
constant — the authors' zero-initialised ResBlock out-convs and transformer ``proj_out`` included, which would
otherwise make the image ignore style and attention.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "parity"
SEED = 1234
PARITY_CONFIG = dict(name="small", num_classes=19, resolution=32)  # get_config(**PARITY_CONFIG) = the small preset


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int = SEED) -> torch.Tensor:
    """The float64 value of official tensor `key` (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
    if key.endswith(("weight_u", "weight_v")):
        vector = torch.randn(shape, generator=generator, dtype=torch.float64)
        return vector / vector.norm()
    if len(shape) >= 2:
        fan_in = 1
        for size in shape[1:]:
            fan_in *= size
        gain = 2.0 if key.endswith(("to_q.weight", "to_k.weight")) else 1.0
        return gain * uniform / fan_in ** 0.5
    return 1 + 0.1 * uniform if key.endswith("weight") else 0.1 * uniform


def official_keys(part: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of the authors' `part` ('generator' | 'discriminator') state dict at PARITY_CONFIG, recorded from their code."""
    recorded = json.loads((DATA / "ca2sis_small_keys.json").read_text())
    return {key: tuple(shape) for key, shape in recorded[part]}


def official_state_dict(part: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A seeded state dict in the authors' layout for `part`, in their key order."""
    return {key: seeded_tensor(key, shape).to(dtype) for key, shape in official_keys(part).items()}
