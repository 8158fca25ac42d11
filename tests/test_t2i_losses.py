"""Tests for attnsynth.t2i.losses: each loss moves synthetic attention the intended way, batches
are independent, A&E matches diffusers numerically, and nothing syncs with the host."""

import ast
import inspect

import pytest
import torch

from attnsynth.attention.geometry import centroid, find_peaks, gaussian_smooth, mass_in_box
from attnsynth.t2i import losses
from attnsynth.t2i.losses import (
    DEFAULT_WEIGHTS,
    METHODS,
    aggregation_loss,
    attend_excite_loss,
    attribute_loss,
    box_loss,
    divide_bind_loss,
    excitation_loss,
    group_maps,
    guidance_loss,
    isolation_loss,
    max_attention_per_subject,
)
from attnsynth.t2i.schedule import METHOD_DEFAULTS
from attnsynth.t2i.subjects import SubjectGroup

H = W = 16
T = 10


def blob(x, y, sigma=1.5, size=(H, W)):
    """A Gaussian bump ``[H, W]`` centred at pixel (x, y)."""
    ys = torch.arange(size[0], dtype=torch.float32)[:, None]
    xs = torch.arange(size[1], dtype=torch.float32)[None, :]
    return torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))


def logits_with(bumps, batch=1, tokens=T):
    """Token logits ``[B, H, W, T]``: zero plus ``height·blob`` for each (b, token, x, y, height)."""
    logits = torch.zeros(batch, H, W, tokens)
    for b, token, x, y, height in bumps:
        logits[b, :, :, token] += height * blob(x, y)
    return logits.requires_grad_(True)


def descend(logits, loss_fn, steps, lr=0.05):
    """Adam on the logits of softmax maps; returns the maps after the steps and the loss history."""
    optimiser = torch.optim.Adam([logits], lr=lr)
    history = []
    for _ in range(steps):
        loss = loss_fn(logits.softmax(dim=-1))
        history.append(loss.detach())
        optimiser.zero_grad()
        loss.sum().backward()
        optimiser.step()
    return logits.detach().softmax(dim=-1), torch.stack(history)


def group(name, tokens, attributes=(), spans=()):
    return SubjectGroup(
        name=name, token_indices=tuple(tokens), attribute_indices=tuple(attributes), mention_spans=spans
    )


CAT, DOG, BIRD, FROG = group("cat", [2]), group("dog", [5]), group("bird", [7]), group("frog", [8])


# --- shared behaviour -------------------------------------------------------------------------


def test_group_maps_sum_tokens_of_multi_token_words_and_mentions():
    maps = torch.rand(2, H, W, T)
    groups = [group("hedgehog", [2, 3, 4]), group("cat", [6, 9], spans=((6,), (9,))), group("dog", [5], [1])]
    out = group_maps(maps, groups)
    assert out.shape == (2, 3, H, W)
    torch.testing.assert_close(out[:, 0], maps[..., 2] + maps[..., 3] + maps[..., 4])
    torch.testing.assert_close(out[:, 1], maps[..., 6] + maps[..., 9])
    attributes = group_maps(maps, groups, token_field="attribute_indices")
    torch.testing.assert_close(attributes[:, 2], maps[..., 1])
    assert torch.equal(attributes[:, 0], torch.zeros(2, H, W))


def all_losses(maps, groups):
    """Every per-image loss of the module on the same maps (name → [B])."""
    boxes = {g.name: (0.0, 0.0, 0.5, 0.5) for g in groups}
    return {
        "aggregation": aggregation_loss(maps, groups),
        "isolation": isolation_loss(maps, groups),
        "isolation-cosine": isolation_loss(maps, groups, distance="cosine"),
        "attribute": attribute_loss(maps, groups),
        "excitation": excitation_loss(maps, groups, prompt_length=T),
        "attend-excite": attend_excite_loss(maps, [g.token_indices[0] for g in groups], prompt_length=T),
        "divide-bind": divide_bind_loss(maps, groups, prompt_length=T),
        "box": box_loss(maps, groups, boxes),
        **{f"guidance-{m}": guidance_loss(m, maps, groups, prompt_length=T, boxes=boxes if m == "layout" else None)[0]
           for m in METHODS},
    }


GROUPS_WITH_ATTRIBUTES = [group("cat", [2], [1]), group("dog", [5], [4]), group("bird", [7, 8])]


def test_batch_results_equal_each_image_alone():
    first = logits_with([(0, 2, 3, 3, 6), (0, 2, 12, 12, 5), (0, 5, 8, 8, 4), (0, 1, 10, 2, 3)]).detach()
    second = logits_with([(0, 2, 10, 4, 5), (0, 5, 3, 12, 6), (0, 4, 2, 2, 3), (0, 7, 8, 8, 2)]).detach()
    batch = torch.cat([first, second]).softmax(-1)
    together = all_losses(batch, GROUPS_WITH_ATTRIBUTES)
    alone = [all_losses(x.softmax(-1), GROUPS_WITH_ATTRIBUTES) for x in (first, second)]
    for name, values in together.items():
        assert values.shape == (2,) and values.dtype == torch.float32, name
        torch.testing.assert_close(values, torch.cat([alone[0][name], alone[1][name]]), msg=name)
        assert values[0] != values[1] or name in ("excitation", "attend-excite"), name  # different content


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gradients_are_finite_and_nonzero(dtype):
    logits = logits_with([(0, 2, 3, 3, 6), (0, 2, 12, 12, 5), (0, 5, 8, 8, 4), (0, 1, 10, 2, 3), (0, 4, 4, 12, 2)])
    maps = logits.detach().softmax(-1).to(dtype).requires_grad_(True)
    for name, value in all_losses(maps, GROUPS_WITH_ATTRIBUTES).items():
        (grad,) = torch.autograd.grad(value.sum(), maps, retain_graph=True)
        assert grad.dtype == dtype and torch.isfinite(grad.float()).all(), name
        assert grad.float().abs().sum() > 0, name


def test_no_groups_give_zero_losses_connected_to_the_graph():
    maps = torch.rand(2, H, W, T, requires_grad=True)
    for name, value in all_losses(maps, []).items():
        assert torch.equal(value, torch.zeros(2)), name
        assert value.requires_grad, name
    assert torch.equal(isolation_loss(maps, [CAT]), torch.zeros(2))
    assert torch.equal(attribute_loss(maps, [CAT, DOG]), torch.zeros(2))


def test_losses_reject_bad_indices_and_options():
    maps = torch.rand(1, H, W, T)
    with pytest.raises(ValueError, match="token index 12 is out of range"):
        aggregation_loss(maps, [group("x", [12])])
    with pytest.raises(ValueError, match="token index 9 is out of range"):
        excitation_loss(maps, [group("x", [9])], prompt_length=T)  # EOS position of a 10-token prompt
    with pytest.raises(ValueError, match="prompt_length=11"):
        excitation_loss(maps, [CAT], prompt_length=11)
    with pytest.raises(ValueError, match="maps has shape"):
        aggregation_loss(maps[0], [CAT])
    with pytest.raises(ValueError, match="distance='manhattan'"):
        isolation_loss(maps, [CAT, DOG], distance="manhattan")
    with pytest.raises(ValueError, match="reduction='max'"):
        aggregation_loss(maps, [CAT], reduction="max")


# --- aggregation -------------------------------------------------------------------------------


def secondary_fraction(maps, token, x, y):
    """Share of a token's mass within radius 3 of (x, y)."""
    near = blob(x, y, sigma=2.0) > 0.3
    subject = maps[0, :, :, token]
    return (subject * near).sum() / subject.sum()


def test_aggregation_merges_a_scattered_subject_into_its_main_blob():
    logits = logits_with([(0, 2, 3, 3, 6), (0, 2, 12, 12, 5)])
    before = logits.detach().softmax(-1)
    after, history = descend(logits, lambda m: aggregation_loss(m, [CAT]), steps=60)
    assert history[-1] < 0.85 * history[0]
    assert secondary_fraction(after, 2, 12, 12) < 0.5 * secondary_fraction(before, 2, 12, 12)
    p_before, g_before = find_peaks(before[0, :, :, 2])
    p_after, g_after = find_peaks(after[0, :, :, 2])
    torch.testing.assert_close(p_after[0], p_before[0])  # the dominant blob stays put
    assert torch.linalg.norm(g_after[1] - p_after[0]) < torch.linalg.norm(g_before[1] - p_before[0])


def test_aggregation_merges_repeated_mentions_as_one_subject():
    cats = group("cat", [2, 6], spans=((2,), (6,)))  # "a cat chasing a cat": the two maps are summed
    logits = logits_with([(0, 2, 3, 3, 6), (0, 6, 12, 12, 5)])
    before = logits.detach().softmax(-1)
    after, history = descend(logits, lambda m: aggregation_loss(m, [cats]), steps=60)
    assert history[-1] < 0.85 * history[0]
    assert secondary_fraction(after, 6, 12, 12) < 0.5 * secondary_fraction(before, 6, 12, 12)


def test_aggregation_reduction_mean_and_sum():
    maps = logits_with([(0, 2, 3, 3, 6), (0, 2, 12, 12, 5), (0, 5, 8, 2, 4)]).detach().softmax(-1)
    each = torch.stack([aggregation_loss(maps, [g]) for g in (CAT, DOG)])
    torch.testing.assert_close(aggregation_loss(maps, [CAT, DOG]), each.mean(0))
    torch.testing.assert_close(aggregation_loss(maps, [CAT, DOG], reduction="sum"), each.sum(0))


def test_aggregation_is_near_zero_for_a_single_compact_blob():
    maps = torch.zeros(1, H, W, T)
    maps[0, 5, 5, 2] = 1.0
    assert aggregation_loss(maps, [CAT]) < 1e-3  # exhausted map: discs 2 and 3 repeat disc 1


def test_aggregation_and_attribute_are_the_authors_distance_sums():
    # L = [Σ_j ‖sg(p_1) − g_j‖ + ‖g_2 − g_3‖] / √((H−1)² + (W−1)²), discs of radius 5 (noun) / 6 (attribute).
    red_cat = group("cat", [2], [1])
    maps = logits_with([(0, 2, 3, 3, 6), (0, 2, 12, 12, 5), (0, 1, 10, 2, 3), (0, 1, 4, 12, 2)]).detach().softmax(-1)
    diagonal = (15**2 + 15**2) ** 0.5

    def pull(target, centres):
        return sum(torch.linalg.norm(target - c) for c in centres) + torch.linalg.norm(centres[1] - centres[2])

    p, g = find_peaks(maps[0, :, :, 2], n_peaks=3, radius=5)
    torch.testing.assert_close(aggregation_loss(maps, [red_cat])[0], pull(p[0], g) / diagonal)
    _, g_adj = find_peaks(maps[0, :, :, 1], n_peaks=3, radius=6)
    torch.testing.assert_close(attribute_loss(maps, [red_cat])[0], pull(p[0], g_adj) / diagonal)


# --- isolation ---------------------------------------------------------------------------------


def pairwise_gaps(maps, groups):
    centres = centroid(group_maps(maps, groups))[0]  # [K, 2]
    return torch.pdist(centres)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_isolation_separates_overlapping_subjects(count):
    groups = [CAT, DOG, BIRD, FROG][:count]
    positions = [(7, 8), (9, 8), (8, 7), (8, 9)]
    logits = logits_with([(0, g.token_indices[0], x, y, 5) for g, (x, y) in zip(groups, positions)])
    before = logits.detach().softmax(-1)
    after, history = descend(logits, lambda m: isolation_loss(m, groups), steps=40)
    assert history[-1] < history[0] - 0.1
    assert pairwise_gaps(after, groups).min() > pairwise_gaps(before, groups).min() + 1.0


def test_isolation_cosine_reduces_overlap():
    logits = logits_with([(0, 2, 7, 8, 5), (0, 5, 9, 8, 5)])
    after, history = descend(logits, lambda m: isolation_loss(m, [CAT, DOG], distance="cosine"), steps=40)
    assert history[-1] < 0.5 * history[0]


def test_isolation_euclidean_formula_for_two_subjects():
    maps = torch.zeros(1, H, W, T)
    maps[0, 0, 0, 2] = 1.0  # cat at (0, 0)
    maps[0, 0, 15, 5] = 1.0  # dog at (15, 0): gap 15, normalised by the grid's extent √(16² + 16²)
    expected = 1 - 15 / (16 * 2**0.5)  # the authors' normaliser (not the pixel-centre diagonal 15·√2)
    torch.testing.assert_close(isolation_loss(maps, [CAT, DOG]), torch.tensor([expected]), atol=1e-5, rtol=0)


# --- attribute ---------------------------------------------------------------------------------


def test_attribute_pulls_the_adjective_onto_its_noun():
    red_cat = group("cat", [2], [1])
    logits = logits_with([(0, 2, 3, 3, 6), (0, 1, 12, 12, 5)])
    before = logits.detach().softmax(-1)
    after, history = descend(logits, lambda m: attribute_loss(m, [red_cat]), steps=60)
    assert history[-1] < 0.85 * history[0]
    noun = torch.tensor([3.0, 3.0])
    gap_before = torch.linalg.norm(centroid(before[0, :, :, 1]) - noun)
    gap_after = torch.linalg.norm(centroid(after[0, :, :, 1]) - noun)
    assert gap_after < gap_before - 1.0
    assert torch.linalg.norm(find_peaks(after[0, :, :, 2])[0][0] - noun) <= 1.5  # the noun stays put


def test_attribute_combines_multi_token_adjectives_and_reduces_over_bound_groups():
    maps = logits_with([(0, 2, 3, 3, 6), (0, 1, 12, 12, 5), (0, 5, 10, 3, 5), (0, 4, 3, 10, 5)]).detach().softmax(-1)
    red_cat, blue_dog = group("cat", [2], [1]), group("dog", [5], [3, 4])
    each = torch.stack([attribute_loss(maps, [g]) for g in (red_cat, blue_dog)])
    torch.testing.assert_close(attribute_loss(maps, [red_cat, blue_dog, BIRD]), each.mean(0))
    torch.testing.assert_close(attribute_loss(maps, [red_cat, blue_dog], reduction="sum"), each.sum(0))


# --- excitation and diffusers' Attend-and-Excite -----------------------------------------------


def diffusers_attend_and_excite():
    module = pytest.importorskip(
        "diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite"
    )
    return module.StableDiffusionAttendAndExcitePipeline


@pytest.mark.parametrize("indices", [[2], [2, 5], [1, 4, 7]])
def test_attend_excite_loss_matches_diffusers(indices):
    reference = diffusers_attend_and_excite()
    maps = (torch.randn(3, H, W, 77) * 2).softmax(-1)
    ours = attend_excite_loss(maps, indices, prompt_length=None)
    ours_prompt = attend_excite_loss(maps, indices, prompt_length=9)
    for b in range(3):
        # diffusers scales its argument in place: give it copies.
        peaks = reference._compute_max_attention_per_index(maps[b].clone(), indices)
        torch.testing.assert_close(ours[b], torch.as_tensor(reference._compute_loss(peaks)), rtol=0, atol=1e-6)
        # A prompt-length slice [1:L-1] (token_softmax='prompt'; A&E's sd_2_1 flag) is [1:-1] of the first L tokens.
        peaks = reference._compute_max_attention_per_index(maps[b, :, :, :9].clone(), indices)
        torch.testing.assert_close(ours_prompt[b], torch.as_tensor(reference._compute_loss(peaks)), rtol=0, atol=1e-6)
        singles = [group(str(i), [i]) for i in indices]
        per_token = max_attention_per_subject(maps[b : b + 1], singles, prompt_length=None)
        peaks = reference._compute_max_attention_per_index(maps[b].clone(), indices)
        torch.testing.assert_close(per_token[0], torch.stack(peaks))


def test_attend_excite_half_precision_is_close_to_float32():
    maps = (torch.randn(2, H, W, 77) * 2).softmax(-1)
    full = attend_excite_loss(maps, [2, 5], prompt_length=12)
    torch.testing.assert_close(attend_excite_loss(maps.half(), [2, 5], prompt_length=12), full, atol=2e-3, rtol=0)


def test_excitation_equals_attend_excite_for_single_token_groups_and_without_smoothing():
    maps = (torch.randn(2, H, W, T) * 2).softmax(-1)
    torch.testing.assert_close(
        excitation_loss(maps, [CAT, DOG], prompt_length=T), attend_excite_loss(maps, [2, 5], prompt_length=T)
    )
    rough = attend_excite_loss(maps, [2, 5], prompt_length=T, smooth=False)
    text = (maps[..., 1 : T - 1] * 100).softmax(-1)
    expected = (1 - text[..., [1, 4]].amax(dim=(1, 2))).clamp_min(0).amax(-1)
    torch.testing.assert_close(rough, expected)


def test_excitation_raises_the_weakest_subject():
    logits = logits_with([(0, 2, 4, 4, 6), (0, 5, 11, 11, 0.5), (0, 3, 11, 11, 4)])
    before = max_attention_per_subject(logits.detach().softmax(-1), [CAT, DOG], prompt_length=T)
    after, history = descend(logits, lambda m: excitation_loss(m, [CAT, DOG], prompt_length=T), steps=30)
    peak = max_attention_per_subject(after, [CAT, DOG], prompt_length=T)
    assert before[0, 1] < before[0, 0]  # the dog is the weakest subject
    assert peak[0, 1] > before[0, 1] + 0.2 and history[-1] < history[0] - 0.2
    torch.testing.assert_close(history[0], (1 - before.amin(-1)).clamp_min(0))


# --- Divide & Bind and layout ------------------------------------------------------------------


def test_divide_bind_attendance_sharpens_a_diffuse_subject():
    logits = logits_with([(0, 2, 8, 8, 0.2), (0, 5, 4, 4, 5)])
    before = losses._divide_bind_parts(logits.detach().softmax(-1), [CAT, DOG], prompt_length=T)["attendance"]
    after, history = descend(logits, lambda m: divide_bind_loss(m, [CAT, DOG], prompt_length=T), steps=30)
    after_parts = losses._divide_bind_parts(after, [CAT, DOG], prompt_length=T)
    assert after_parts["attendance"] < before - 0.01  # the least-varied subject's TV rose
    assert history[-1] < history[0]


def test_divide_bind_total_variation_is_the_authors_formula():
    # Divide & Bind's TV: horizontal neighbours + the LAST row against every row 1..H−1 (not
    # adjacent rows): mean|A[:, j] − A[:, j+1]| + mean_{i≥1}|A[H−1, :] − A[i, :]|.
    first_row = torch.zeros(4, 4)
    first_row[0] = 1.0  # row 0 is never compared: TV 0 (the adjacent-row TV would be 1/3)
    assert losses._divide_bind_total_variation(first_row) == 0
    first_column = torch.zeros(4, 4)
    first_column[:, 0] = 1.0  # one jump in each of 4 rows over 4·3 horizontal pairs; rows all equal
    torch.testing.assert_close(losses._divide_bind_total_variation(first_column), torch.tensor(1 / 3))
    last_row = torch.zeros(4, 4)
    last_row[-1] = 1.0  # rows 1, 2 differ from the last by 1 everywhere, row 3 by 0: mean 2/3
    torch.testing.assert_close(losses._divide_bind_total_variation(last_row), torch.tensor(2 / 3))
    maps = torch.rand(2, 3, 5, 6)
    reference = (maps[..., :, :-1] - maps[..., :, 1:]).abs().mean(dim=(-2, -1)) + (
        maps[..., -1:, :] - maps[..., 1:, :]
    ).abs().mean(dim=(-2, -1))
    torch.testing.assert_close(losses._divide_bind_total_variation(maps), reference)
    assert losses._divide_bind_total_variation(torch.rand(3, 1, 4)).shape == (3,)


def test_divide_bind_attendance_is_minus_the_least_total_variation():
    maps = torch.rand(2, H, W, T).softmax(-1)
    text = torch.softmax(100 * maps[..., 1:-1], dim=-1)
    subjects = torch.stack([text[..., CAT.token_indices[0] - 1], text[..., DOG.token_indices[0] - 1]], dim=1)
    tv = losses._divide_bind_total_variation(gaussian_smooth(subjects))  # [B, 2]
    attendance = losses._divide_bind_parts(maps, [CAT, DOG], prompt_length=None)["attendance"]
    torch.testing.assert_close(attendance, -tv.amin(dim=-1))


def test_divide_bind_binding_aligns_attribute_with_noun():
    red_cat = group("cat", [2], [1])
    logits = logits_with([(0, 2, 3, 3, 6), (0, 1, 12, 12, 6)])
    # the opt-in JSD term alone (its default weight is 0: the authors' default mode has no binding)
    binding = lambda m: divide_bind_loss(m, [red_cat], prompt_length=T, weights={"attendance": 0.0, "binding": 1.0})  # noqa: E731
    before = logits.detach().softmax(-1)
    after, history = descend(logits, binding, steps=40)
    assert history[-1] < 0.5 * history[0]
    # JSD is symmetric: the noun's and the adjective's maps move towards each other.
    gap = lambda m: torch.linalg.norm(centroid(m[0, :, :, 1]) - centroid(m[0, :, :, 2]))  # noqa: E731
    assert gap(after) < gap(before) - 1.0


def test_box_loss_moves_mass_into_the_box():
    logits = logits_with([(0, 2, 12, 12, 6)])
    box = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    before = mass_in_box(group_maps(logits.detach().softmax(-1), [CAT])[:, 0], box[0])
    after, history = descend(logits, lambda m: box_loss(m, [CAT], box), steps=40)
    inside = mass_in_box(group_maps(after, [CAT])[:, 0], box[0])
    assert inside > before + 0.2 and history[-1] < history[0]


def test_box_loss_dict_tensor_and_synonyms_agree():
    maps = logits_with([(0, 2, 12, 12, 6), (0, 5, 3, 3, 6)], batch=2).detach().softmax(-1)
    cat = group("cat/kitten", [2])
    boxes = {"kitten": (0.0, 0.0, 0.5, 0.5), "dog": (0.5, 0.5, 1.0, 1.0)}
    table = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    from_dict = box_loss(maps, [cat, DOG], boxes)
    torch.testing.assert_close(from_dict, box_loss(maps, [cat, DOG], table))
    torch.testing.assert_close(from_dict, box_loss(maps, [cat, DOG], table.expand(2, 2, 4)))
    fractions = mass_in_box(group_maps(maps, [cat, DOG]), table)
    torch.testing.assert_close(from_dict, ((1 - fractions) ** 2).sum(-1))
    only_cat = box_loss(maps, [cat, DOG], {"cat/kitten": boxes["kitten"]})  # unboxed subjects are free
    torch.testing.assert_close(only_cat, (1 - fractions[:, 0]) ** 2)


@pytest.mark.parametrize(
    "boxes,message",
    [
        ({"horse": (0, 0, 1, 1)}, "'horse', which is not a subject"),
        ({"dog": (0.5, 0, 0.4, 1)}, r"boxes\['dog'\]"),
        ({"dog": (0, 0, 1)}, r"boxes\['dog'\]"),
        (torch.zeros(3, 4), r"boxes has shape \(1, 3, 4\); expected \[2, 4\]"),
        ([0, 0, 1, 1], "boxes has type list"),
    ],
)
def test_box_loss_rejects_bad_boxes(boxes, message):
    with pytest.raises(ValueError, match=message):
        box_loss(torch.rand(1, H, W, T), [CAT, DOG], boxes)


# --- guidance_loss -----------------------------------------------------------------------------


def test_guidance_loss_ait2i_is_the_weighted_sum_of_the_paper():
    red_cat = group("cat", [2], [1])
    maps = logits_with([(0, 2, 3, 3, 6), (0, 2, 12, 12, 5), (0, 5, 8, 8, 4), (0, 1, 10, 2, 3)]).detach().softmax(-1)
    groups = [red_cat, DOG]
    total, parts = guidance_loss("ait2i", maps, groups, prompt_length=T)
    assert set(parts) == {"isolation", "aggregation", "excitation", "attribute"}
    torch.testing.assert_close(parts["aggregation"], aggregation_loss(maps, groups, reduction="sum"))
    torch.testing.assert_close(parts["attribute"], attribute_loss(maps, groups, reduction="sum"))
    torch.testing.assert_close(parts["isolation"], isolation_loss(maps, groups))
    torch.testing.assert_close(parts["excitation"], excitation_loss(maps, groups, prompt_length=T))
    expected = (
        2.0 * parts["isolation"] + 1.25 * parts["aggregation"] + 0.25 * parts["excitation"] + 0.75 * parts["attribute"]
    )
    torch.testing.assert_close(total, expected)
    assert DEFAULT_WEIGHTS["ait2i"] == {"isolation": 2.0, "aggregation": 1.25, "excitation": 0.25, "attribute": 0.75}


def test_guidance_loss_weights_override_and_skip_zero_terms():
    maps = torch.rand(2, H, W, T)
    weights = {"excitation": 0, "isolation": 1.0}
    total, parts = guidance_loss("ait2i", maps, [CAT, DOG], prompt_length=T, weights=weights)
    assert "excitation" not in parts
    torch.testing.assert_close(total, parts["isolation"] + 1.25 * parts["aggregation"] + 0.75 * parts["attribute"])
    _, cosine = guidance_loss("ait2i", maps, [CAT, DOG], prompt_length=T, isolation_distance="cosine")
    torch.testing.assert_close(cosine["isolation"], isolation_loss(maps, [CAT, DOG], distance="cosine"))


def test_guidance_loss_other_methods():
    maps = torch.rand(2, H, W, T)
    total, parts = guidance_loss("attend-excite", maps, [CAT, DOG], prompt_length=T)
    assert set(parts) == {"excitation"} and torch.equal(total, parts["excitation"])
    red_cat = group("cat", [2], [1])
    total, parts = guidance_loss("divide-bind", maps, [red_cat, DOG], prompt_length=T)
    assert set(parts) == {"attendance"} and torch.equal(total, parts["attendance"])  # no binding by default
    total, parts = guidance_loss("divide-bind", maps, [red_cat, DOG], prompt_length=T, weights={"binding": 2.0})
    assert set(parts) == {"attendance", "binding"}
    torch.testing.assert_close(total, parts["attendance"] + 2.0 * parts["binding"])
    boxes = {"cat": (0, 0, 0.5, 1), "dog": (0.5, 0, 1, 1)}
    total, parts = guidance_loss("layout", maps, [CAT, DOG], prompt_length=T, boxes=boxes)
    assert set(parts) == {"box", "aggregation"}
    torch.testing.assert_close(total, parts["box"] + 0.25 * parts["aggregation"])
    torch.testing.assert_close(parts["box"], box_loss(maps, [CAT, DOG], boxes))


@pytest.mark.parametrize(
    "method,kwargs,message",
    [
        ("boxdiff", {}, "method='boxdiff' is unknown.*'ait2i', 'attend-excite', 'divide-bind', 'layout'"),
        ("ait2i", {"weights": {"box": 1.0}}, "term 'box', unknown for method 'ait2i'.*'aggregation'"),
        ("ait2i", {"weights": {"isolation": float("nan")}}, r"weights\['isolation'\]"),
        ("layout", {}, "boxes is None"),
        ("ait2i", {"boxes": {"cat": (0, 0, 1, 1)}}, "boxes were given"),
    ],
)
def test_guidance_loss_rejects_bad_arguments(method, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        guidance_loss(method, torch.rand(1, H, W, T), [CAT, DOG], prompt_length=T, **kwargs)
    assert "\n" not in str(info.value)


def test_every_method_has_weights_and_a_schedule():
    assert set(METHODS) == set(DEFAULT_WEIGHTS) == set(METHOD_DEFAULTS)


def test_losses_source_has_no_host_syncs():
    banned = {"item", "tolist", "nonzero", "cpu", "numpy", "argwhere"}
    tree = ast.parse(inspect.getsource(losses))
    calls = [n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert banned.isdisjoint(calls)


@pytest.mark.gpu
def test_losses_and_gradients_never_synchronise_on_cuda():
    """CUDA's sync debug mode raises on any host sync (.item(), nonzero, blocking copies)."""
    maps = (torch.randn(2, H, W, 77, device="cuda") * 2).softmax(-1).requires_grad_(True)
    groups = [group("cat", [2], [1]), group("dog", [5], [4]), group("bird", [7, 8])]
    boxes = {"cat": (0.0, 0.0, 0.5, 1.0), "dog": (0.5, 0.0, 1.0, 1.0)}

    def run():
        for method in METHODS:
            chosen = boxes if method == "layout" else None
            total, _ = guidance_loss(method, maps, groups, prompt_length=12, boxes=chosen)
            torch.autograd.grad(total.sum(), maps)
        attend_excite_loss(maps, [2, 5], prompt_length=None)

    run()  # the first call copies per-prompt constants (token selections, boxes) to the device once
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
