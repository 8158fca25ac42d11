"""Shared set-up of the generation commands: torch CPU threads and the libraries' progress bars off."""

from __future__ import annotations


def quiet_torch(threads: int | None) -> None:
    """Set torch's CPU threads (``--threads``; None keeps torch's choice) and silence diffusers/transformers progress bars."""
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
