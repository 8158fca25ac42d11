"""Data order as a pure function of the training step — the resumable part of data loading.

The sample stream is the concatenation of per-epoch permutations (epoch ``e`` shuffled by a
generator seeded from ``(seed, e)``). Step ``s`` with a global batch ``G = batch × processes``
takes stream positions ``[s·G, (s+1)·G)``; process ``r`` gets ``batch`` consecutive positions.
Each sample's augmentation seed is derived from ``(seed, position)``. Resuming at step ``k``
therefore needs only ``k``: no sampler or RNG state is stored.
"""

from __future__ import annotations

import functools
from typing import Iterator

import torch

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant for seed mixing


def mix_seed(*values: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64-style), for per-step/per-sample RNG."""
    state = 0
    for value in values:
        state = (state ^ (int(value) + _MIX + ((state << 6) & (2**64 - 1)) + (state >> 2))) & (2**64 - 1)
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        state ^= state >> 31
    return state & (2**63 - 1)


class StepBatchSampler(torch.utils.data.Sampler):
    """Yield, for steps ``start_step … total_steps − 1``, this process's ``[(index, aug_seed), …]``."""

    def __init__(self, *, num_samples: int, batch_size: int, total_steps: int, start_step: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 1:
            raise ValueError(f"the dataset is empty (num_samples={num_samples})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.start_step = start_step
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    @functools.lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, 0xDA7A, epoch))
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(dataset index, augmentation seed)`` pairs for ``step``."""
        first = (step * self.world_size + self.rank) * self.batch_size
        out = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_samples)
            out.append((self._permutation(epoch)[offset], mix_seed(self.seed, 0xA11C, position)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)
