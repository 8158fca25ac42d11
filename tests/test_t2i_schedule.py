"""Tests for attnsynth.t2i.schedule: step sizes as diffusers' A&E, guided steps, refinement."""

import math

import numpy as np
import pytest

from attnsynth.t2i.schedule import METHOD_DEFAULTS, GuidanceSchedule


def test_step_sizes_follow_attend_and_excite():
    schedule = GuidanceSchedule(num_inference_steps=50)
    sizes = schedule.step_sizes
    assert len(sizes) == 50
    assert sizes[0] == pytest.approx(20.0) and sizes[-1] == pytest.approx(20.0 * math.sqrt(0.5))
    assert all(a > b for a, b in zip(sizes, sizes[1:]))
    # diffusers: scale_range = np.linspace(1.0, 0.5, len(timesteps)); step_size = scale_factor * np.sqrt(scale_range)
    np.testing.assert_array_equal(np.array(sizes), 20.0 * np.sqrt(np.linspace(1.0, 0.5, 50)))


def test_custom_scale_range_and_step_size():
    sizes = GuidanceSchedule(num_inference_steps=3, guided_steps=3, step_size=4.0, scale_range=(0.25, 1.0)).step_sizes
    assert sizes == pytest.approx([2.0, 4.0 * math.sqrt(0.625), 4.0])


def test_is_guided_covers_exactly_the_first_guided_steps():
    schedule = GuidanceSchedule(num_inference_steps=10, guided_steps=4)
    assert [schedule.is_guided(i) for i in range(10)] == [True] * 4 + [False] * 6
    assert not GuidanceSchedule(num_inference_steps=10, guided_steps=0).is_guided(0)


def test_negative_refine_rule_accepts_total_variation_thresholds_above_one():
    schedule = GuidanceSchedule(num_inference_steps=10, guided_steps=5, refine_rule="negative", refine_thresholds={2: 1.5})
    assert schedule.target_loss(2) == -1.5


def test_refinement_thresholds_and_targets():
    schedule = GuidanceSchedule(num_inference_steps=50, refine_thresholds={0: 0.05, 10: 0.5, 20: 0.8})
    assert schedule.refine_threshold(10) == 0.5 and schedule.refine_threshold(11) is None
    assert schedule.target_loss(0) == pytest.approx(0.95) and schedule.target_loss(20) == pytest.approx(0.2)
    assert schedule.target_loss(5) is None
    assert GuidanceSchedule(num_inference_steps=50).refine_threshold(0) is None


def test_method_defaults_give_valid_schedules():
    assert set(METHOD_DEFAULTS) == {"ait2i", "attend-excite", "divide-bind", "layout"}
    ait2i = GuidanceSchedule.for_method("ait2i", num_inference_steps=50)
    assert ait2i.guided_steps == 25 and ait2i.step_size == 20.0 and ait2i.refine_thresholds is None
    ae = GuidanceSchedule.for_method("attend-excite", num_inference_steps=50)
    assert ae.refine_thresholds == {0: 0.05, 10: 0.5, 20: 0.8} and ae.max_refine_iters == 20
    layout = GuidanceSchedule.for_method("layout", num_inference_steps=50)
    assert layout.guided_steps == 10 and layout.target_loss(9) == pytest.approx(0.2)
    assert ait2i.refine_rule == ae.refine_rule == layout.refine_rule == "one-minus"
    assert ae.refine_iters is None and all(ae.max_refine_iters_at(i) == 20 for i in (0, 10, 20))


def test_divide_bind_defaults_are_the_authors_schedule():
    # boschresearch/Divide-and-Bind, loss_mode "tv": 25 guided steps, scale_factor 20, refinement
    # while min_k TV_k < 0.05 / 0.2 / 0.3 at steps 0 / 10 / 20, at most 100 updates at step 0, 50 else.
    dnb = GuidanceSchedule.for_method("divide-bind", num_inference_steps=51)  # PNDM: 51 timesteps
    assert dnb.guided_steps == 25 and dnb.step_size == 20.0 and dnb.scale_range == (1.0, 0.5)
    assert dnb.refine_thresholds == {0: 0.05, 10: 0.2, 20: 0.3} and dnb.refine_rule == "negative"
    assert [dnb.max_refine_iters_at(i) for i in (0, 10, 20)] == [100, 50, 50]
    # its loss is −min_k TV_k: "loss > −threshold" is "min TV < threshold"
    assert [dnb.target_loss(i) for i in (0, 10, 20)] == [-0.05, -0.2, -0.3] and dnb.target_loss(1) is None
    short = GuidanceSchedule.for_method("divide-bind", num_inference_steps=6)
    assert short.refine_thresholds == {0: 0.05} and short.refine_iters == {0: 100} and short.guided_steps == 6


def test_per_step_refinement_caps_override_the_default_cap():
    schedule = GuidanceSchedule(num_inference_steps=10, refine_thresholds={0: 0.5, 3: 0.5}, max_refine_iters=7,
                                guided_steps=5, refine_iters={3: 0})
    assert schedule.max_refine_iters_at(0) == 7 and schedule.max_refine_iters_at(3) == 0
    custom = GuidanceSchedule.for_method("attend-excite", num_inference_steps=50, refine_iters={10: 2})
    assert custom.max_refine_iters_at(10) == 2 and custom.max_refine_iters_at(0) == 20


def test_for_method_fits_short_runs_and_applies_overrides():
    short = GuidanceSchedule.for_method("attend-excite", num_inference_steps=8)
    assert short.guided_steps == 8 and short.refine_thresholds == {0: 0.05}
    custom = GuidanceSchedule.for_method("ait2i", num_inference_steps=50, step_size=5.0, guided_steps=10)
    assert custom.step_size == 5.0 and custom.guided_steps == 10
    with pytest.raises(ValueError, match="guided_steps"):
        GuidanceSchedule.for_method("ait2i", num_inference_steps=8, guided_steps=9)


def test_for_method_rejects_unknown_method_and_option():
    with pytest.raises(ValueError, match="method='boxdiff'.*ait2i"):
        GuidanceSchedule.for_method("boxdiff", num_inference_steps=50)
    with pytest.raises(ValueError, match="'stepsize'"):
        GuidanceSchedule.for_method("ait2i", num_inference_steps=50, stepsize=3.0)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 10, "guided_steps": 11}, "guided_steps"),
        ({"num_inference_steps": 10, "guided_steps": -1}, "guided_steps"),
        ({"num_inference_steps": 10, "guided_steps": 5, "step_size": -1.0}, "step_size"),
        ({"num_inference_steps": 10, "guided_steps": 5, "step_size": "20"}, "step_size"),
        ({"num_inference_steps": 10, "guided_steps": 5, "scale_range": (1.0,)}, "scale_range"),
        ({"num_inference_steps": 10, "guided_steps": 5, "scale_range": 0.5}, "scale_range"),
        ({"num_inference_steps": 10, "guided_steps": 5, "refine_thresholds": {10: 0.5}}, "refine_thresholds"),
        ({"num_inference_steps": 10, "guided_steps": 5, "refine_thresholds": {1: 1.5}}, "refine_thresholds"),
        ({"num_inference_steps": 10, "guided_steps": 5, "max_refine_iters": -2}, "max_refine_iters"),
        ({"num_inference_steps": 10, "guided_steps": 5, "refine_iters": {10: 5}}, "refine_iters"),
        ({"num_inference_steps": 10, "guided_steps": 5, "refine_iters": {1: -1}}, "refine_iters"),
        ({"num_inference_steps": 10, "guided_steps": 5, "refine_iters": {1: 2.5}}, "refine_iters"),
        ({"num_inference_steps": 10, "guided_steps": 5, "refine_rule": "below"}, "refine_rule"),
        ({"num_inference_steps": 10, "guided_steps": 5, "refine_rule": "negative", "refine_thresholds": {1: -0.1}}, "refine_thresholds"),
    ],
)
def test_invalid_schedules_raise_one_line_errors(kwargs, argument):
    with pytest.raises(ValueError, match=argument) as info:
        GuidanceSchedule(**kwargs)
    assert "\n" not in str(info.value)


def test_schedule_is_frozen_and_keyword_only():
    schedule = GuidanceSchedule(num_inference_steps=10, guided_steps=5)
    with pytest.raises(AttributeError):
        schedule.step_size = 1.0
    with pytest.raises(TypeError):
        GuidanceSchedule(10)
