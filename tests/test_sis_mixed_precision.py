"""bf16 autocast (what `--mixed-precision bf16` turns on) runs forward and backward through every SIS config."""

import pytest
import torch

from attnsynth.sis.configs import get_config
from attnsynth.sis.model import build_model, labels_to_onehot


@pytest.mark.parametrize("name", ["small", "spade-small"])
def test_bf16_autocast_forward_backward_close_to_fp32(name):
    torch.manual_seed(0)
    model = build_model(get_config(name, num_classes=19, resolution=32))
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    onehot = labels_to_onehot(torch.randint(0, 19, (2, 32, 32)), 19)
    reference = model(image, onehot)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(image, onehot)
    assert mixed.dtype == torch.bfloat16
    assert (mixed.float() - reference).abs().max() < 0.05
    mixed.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
