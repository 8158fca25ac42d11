"""The channels-last GroupNorm kernels compute ``F.group_norm`` and its gradients."""

import pytest
import torch
import torch.nn.functional as F

from attnsynth.sis.group_norm import GroupNorm, group_norm


def _channels_last(*shape, dtype=torch.float64):
    return (torch.randn(*shape, dtype=dtype) * 3 + 2).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels,groups", [(8, 8), (12, 4), (6, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_values_and_gradients_equal_torch_group_norm(channels, groups, affine):
    torch.manual_seed(0)
    x = _channels_last(2, channels, 16, 20).requires_grad_()
    weight = torch.randn(channels, dtype=x.dtype, requires_grad=True) if affine else None
    bias = torch.randn(channels, dtype=x.dtype, requires_grad=True) if affine else None
    ours = group_norm(x, groups, weight, bias, 1e-5)
    assert type(ours.grad_fn).__name__ == "_ChannelsLastGroupNormBackward"  # the fast path ran, not the fallback
    assert ours.is_contiguous(memory_format=torch.channels_last)
    reference = F.group_norm(x, groups, weight, bias, 1e-5)
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-12)
    inputs = tuple(t for t in (x, weight, bias) if t is not None)
    grad = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, inputs, grad)
    got = torch.autograd.grad(ours, inputs, grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_float32_and_a_contiguous_incoming_gradient():
    torch.manual_seed(1)
    x = _channels_last(4, 32, 32, 32, dtype=torch.float32).requires_grad_()
    norm = GroupNorm(16, 32)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    out = norm(x)
    grad = torch.randn(out.shape)  # contiguous (NCHW), not channels-last
    got = torch.autograd.grad(out, (x, norm.weight, norm.bias), grad)
    reference = F.group_norm(x, 16, norm.weight, norm.bias, norm.eps)
    expected = torch.autograd.grad(reference, (x, norm.weight, norm.bias), grad)
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_an_in_place_op_after_the_norm_is_allowed():
    x = _channels_last(2, 8, 16, 16).requires_grad_()
    y = torch.relu_(group_norm(x, 4, None, None, 1e-5))
    y.sum().backward()
    expected = torch.autograd.grad(torch.relu(F.group_norm(x, 4, None, None, 1e-5)).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("case", ["contiguous", "small map", "bfloat16", "autocast"])
def test_other_inputs_take_torch_group_norm(case):
    x = _channels_last(2, 8, 16, 16, dtype=torch.float32)
    if case == "contiguous":
        x = x.contiguous()
    elif case == "small map":
        x = _channels_last(2, 8, 4, 4, dtype=torch.float32)
    elif case == "bfloat16":
        x = x.bfloat16()
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        out = group_norm(x, 4, None, None, 1e-5)
    assert type(out.grad_fn).__name__ != "_ChannelsLastGroupNormBackward"
