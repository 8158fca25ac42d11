"""Shared test setup: offline hubs, one torch thread (tiny models gain nothing from more, and a
shared 2-core machine slows down several-fold when threads oversubscribe), a fixed seed per test."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
