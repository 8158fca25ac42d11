"""One way to build the 🤗 Accelerator for every trainer, so multi-process CPU launches really synchronise."""

from __future__ import annotations

import os

import torch


def make_accelerator(*, mixed_precision: str = "no", cpu: bool = False):
    """The Accelerator; a multi-process launch (torchrun / ``accelerate launch``) without CUDA runs on CPU with gloo.

    Plain ``Accelerator()`` on a machine without CUDA ignores the launcher and runs every process alone
    (each training its own copy into the same run directory), so that case is switched to ``cpu=True``
    and the process count Accelerate sees is checked against the launcher's ``WORLD_SIZE``.
    """
    from accelerate import Accelerator

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu or (launched > 1 and not torch.cuda.is_available()))
    if launched != accelerator.num_processes:
        raise ValueError(f"launched with WORLD_SIZE={launched} but Accelerate runs {accelerator.num_processes} process(es); check the launcher")
    return accelerator
