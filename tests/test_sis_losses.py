"""SIS losses: hinge GAN, feature matching, attention loss (square and not), VGG19 loading, weights."""

import pytest
import torch
from safetensors.torch import save_file

from attnsynth.sis.losses import (
    LossWeights,
    VGG19Features,
    VGGPerceptualLoss,
    attention_loss,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    l1_loss,
)
from attnsynth.sis.model import labels_to_onehot


def _outputs(*logits, feature=None):
    """Discriminator-shaped outputs: one scale per logits tensor, each [feature, logits]."""
    feature = torch.zeros(1, 2, 4, 4) if feature is None else feature
    return [[feature, x] for x in logits]


def test_hinge_losses_follow_their_formulas():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # scale 1: relu(1-real) mean (0 + 0.5)/2, relu(1+fake) mean (0 + 1)/2; scale 2: real [3, 0] → (0 + 1)/2, same fake
    d = hinge_d_loss(_outputs(real, 2 * real - 1), _outputs(fake, fake))
    expected = ((0 + 0.5) / 2 + (0 + 1) / 2 + (0 + 1) / 2 + (0 + 1) / 2) / 2
    assert torch.isclose(d, torch.tensor(expected))
    assert torch.isclose(hinge_g_loss(_outputs(fake, 2 * fake)), -(fake.mean() + 2 * fake.mean()) / 2)
    well_separated = hinge_d_loss(_outputs(torch.full((3,), 1.5)), _outputs(torch.full((3,), -1.5)))
    assert well_separated == 0


def test_feature_matching_is_l1_on_features_and_only_trains_the_fake():
    real_f = [torch.randn(1, 3, 4, 4), torch.randn(1, 5, 2, 2)]
    fake_f = [torch.randn(1, 3, 4, 4, requires_grad=True), torch.randn(1, 5, 2, 2, requires_grad=True)]
    real_out = [[real_f[0], real_f[1], torch.zeros(1)], [real_f[0], torch.ones(1)]]
    fake_out = [[fake_f[0], fake_f[1], torch.zeros(1)], [fake_f[0], torch.ones(1)]]
    loss = feature_matching_loss(fake_out, real_out)
    scale1 = (fake_f[0] - real_f[0]).abs().mean() + (fake_f[1] - real_f[1]).abs().mean()
    scale2 = (fake_f[0] - real_f[0]).abs().mean()
    assert torch.isclose(loss, (scale1 + scale2) / 2)
    assert feature_matching_loss(real_out, real_out) == 0
    real_f[0].requires_grad_(True)
    feature_matching_loss(fake_out, [[real_f[0], real_f[1], torch.zeros(1)], [real_f[0], torch.ones(1)]]).backward()
    assert real_f[0].grad is None and fake_f[0].grad is not None


def _mask(resolution=(32, 48), classes=5):
    labels = torch.randint(0, classes, (2, *resolution))
    return labels_to_onehot(labels, classes)


@pytest.mark.parametrize("resolution", [(32, 32), (32, 64), (64, 32)])
def test_attention_loss_is_minimal_at_the_mask_and_decreases_toward_it(resolution):
    onehot = _mask(resolution)
    sizes = [(resolution[0] // 4, resolution[1] // 4), resolution]
    targets = [torch.nn.functional.interpolate(onehot, size=s, mode="nearest") for s in sizes]
    ideal = [20.0 * (2 * t - 1) for t in targets]
    random = [torch.randn_like(t) for t in targets]
    halfway = [(a + b) / 2 for a, b in zip(ideal, random)]
    l_ideal, l_half, l_random = (attention_loss(x, onehot) for x in (ideal, halfway, random))
    assert l_ideal < 1e-6 < l_half < l_random
    wrong = [20.0 * (1 - 2 * t) for t in targets]  # confidently wrong
    assert attention_loss(wrong, onehot) > 10


def test_attention_loss_is_the_mean_over_layers_and_classes():
    onehot = _mask((16, 16), classes=3)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 16, 16)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    target_a = torch.nn.functional.interpolate(onehot, size=(4, 4), mode="nearest")
    per_class_a = torch.stack([bce(a[:, c], target_a[:, c]) for c in range(3)]).mean()
    per_class_b = torch.stack([bce(b[:, c], onehot[:, c]) for c in range(3)]).mean()
    assert torch.isclose(attention_loss([a, b], onehot), (per_class_a + per_class_b) / 2)
    with pytest.raises(ValueError, match="no logits"):
        attention_loss([], onehot)
    with pytest.raises(ValueError, match="expected"):
        attention_loss([torch.randn(2, 4, 4, 4)], onehot)


def test_attention_loss_gradient_step_moves_logits_toward_the_mask():
    onehot = _mask((16, 16))
    logits = torch.zeros(2, 5, 8, 8, requires_grad=True)
    before = attention_loss([logits], onehot)
    before.backward()
    with torch.no_grad():
        stepped = logits - 50.0 * logits.grad
    assert attention_loss([stepped], onehot) < before


def test_pixel_l1_and_loss_weights():
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    assert l1_loss(a, b) == 0.5
    weights = LossWeights()
    assert (weights.gan, weights.fm, weights.vgg, weights.att, weights.l1) == (1, 10, 10, 1, 0)
    total = weights.total({"gan": torch.tensor(2.0), "fm": torch.tensor(0.5), "att": torch.tensor(3.0)})
    assert total == 2 + 10 * 0.5 + 3
    with pytest.raises(ValueError, match="LossWeights.fm"):
        LossWeights(fm=-1)
    with pytest.raises(ValueError, match="unknown"):
        weights.total({"kl": torch.tensor(1.0)})


# ---- VGG19 ------------------------------------------------------------------------------------------
def test_vgg_without_weights_is_refused_unless_random_is_allowed():
    with pytest.raises(ValueError, match="weights_path"):
        VGGPerceptualLoss(None)
    with pytest.raises(FileNotFoundError):
        VGGPerceptualLoss("/nonexistent/vgg19.pth")


def _torchvision_style_state(seed=0):
    """A torchvision-format vgg19 state dict: features.N.* for all 16 convs plus classifier.* keys."""
    torch.manual_seed(seed)
    state = {f"features.{k}": v.clone() for k, v in VGG19Features().features.state_dict().items()}
    for i in (30, 32, 34):  # conv5_2 … conv5_4 exist in the full network and must be ignored
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.randn(512, 512, 3, 3) * 0.01, torch.zeros(512)
    state["classifier.0.weight"], state["classifier.0.bias"] = torch.randn(8, 4), torch.zeros(8)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg_loads_torchvision_and_safetensors_weights(tmp_path, suffix):
    state = _torchvision_style_state()
    path = tmp_path / f"vgg19{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    loss = VGGPerceptualLoss(path)
    assert torch.equal(loss.vgg.features[28].weight, state["features.28.weight"])
    assert not any(p.requires_grad for p in loss.parameters())
    real = torch.rand(1, 3, 32, 32) * 2 - 1
    fake = (real + 0.3 * torch.randn_like(real)).requires_grad_(True)
    assert loss(real, real) == 0
    value = loss(fake, real)
    value.backward()
    assert value > 0 and fake.grad is not None and fake.grad.abs().sum() > 0


def test_vgg_rejects_files_with_missing_or_misshapen_tensors(tmp_path):
    state = _torchvision_style_state()
    del state["features.28.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="lacks"):
        VGGPerceptualLoss(tmp_path / "missing.pth")
    state = _torchvision_style_state()
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="shape"):
        VGGPerceptualLoss(tmp_path / "shape.pth")
    torch.save({"not": object()}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="weights-only"):
        VGGPerceptualLoss(tmp_path / "pickle.pth")


def test_vgg_taps_are_relu1_to_relu5_first_layers():
    features = VGG19Features()(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in features] == [64, 128, 256, 512, 512]
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]
    assert all(f.min() >= 0 for f in features)  # taps are after ReLU
