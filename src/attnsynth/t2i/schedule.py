"""When and how hard to update the latent: the guidance schedule of AI-T2I and its baselines.

At denoising step ``i`` (0-based) a guided pipeline takes ``z ← z − α_i ∇_z L`` while
``is_guided(i)``, with ``α_i = step_size · √s_i`` and ``s = linspace(scale_range[0],
scale_range[1], num_inference_steps)`` — exactly diffusers' Attend-and-Excite
(``scale_range = np.linspace(1.0, 0.5, len(timesteps)); step_size = scale_factor * np.sqrt(...)``).
At steps listed in ``refine_thresholds`` the pipeline first repeats the update until
``loss <= target_loss(i)`` or ``max_refine_iters_at(i)`` updates (A&E's refinement). How a
threshold becomes a target loss is the method's ``refine_rule``:

* ``"one-minus"`` (Attend-and-Excite, layout): ``target = max(0, 1 − threshold)`` — A&E's loss is
  ``1 − min_k max Â_k``, so "refine while the weakest subject's peak is below the threshold".
* ``"negative"`` (Divide & Bind): ``target = −threshold`` — its attendance loss is ``−min_k TV_k``,
  so "refine while the smallest total variation is below the threshold", the authors'
  ``while tv_loss_list.min() < thresholds[i]``.

Per-step caps (``refine_iters``, e.g. Divide & Bind's 100 refinement iterations at step 0 and 50
elsewhere) override ``max_refine_iters`` at their steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GuidanceSchedule", "METHOD_DEFAULTS", "REFINE_RULES"]

# How a refinement threshold becomes the target loss (see the module docstring).
REFINE_RULES = ("one-minus", "negative")

# Per-method defaults (keys are GuidanceSchedule fields), all for 50 inference steps.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # AI-T2I public code: one update at each of the first 25 of 50 steps, α = 20·√s, no refinement.
    "ait2i": {"guided_steps": 25, "step_size": 20.0, "scale_range": (1.0, 0.5), "refine_thresholds": None},
    # Attend-and-Excite (diffusers defaults): max_iter_to_alter=25, scale_factor=20,
    # thresholds {0: 0.05, 10: 0.5, 20: 0.8}, at most 20 refinement iterations.
    "attend-excite": {
        "guided_steps": 25,
        "step_size": 20.0,
        "scale_range": (1.0, 0.5),
        "refine_thresholds": {0: 0.05, 10: 0.5, 20: 0.8},
        "max_refine_iters": 20,
    },
    # Divide & Bind (boschresearch/Divide-and-Bind, pipeline_divide_and_bind_latest.py, loss_mode
    # "tv"): max_iter_to_alter=25, scale_factor=20; refinement while min_k TV_k < 0.05 / 0.2 / 0.3 at
    # steps 0 / 10 / 20 (their default_param("tv")), at most 100 iterations at step 0 and 50 at the
    # others (the defaults of their _perform_iterative_refinement_step).
    "divide-bind": {
        "guided_steps": 25,
        "step_size": 20.0,
        "scale_range": (1.0, 0.5),
        "refine_thresholds": {0: 0.05, 10: 0.2, 20: 0.3},
        "refine_rule": "negative",
        "max_refine_iters": 50,
        "refine_iters": {0: 100},
    },
    # Layout guidance (Chen et al.) guides only the first 10 steps, repeating each update up to
    # 5 times while the box loss exceeds 0.2 (threshold 0.8 = target 0.2); its loss scale is 30.
    "layout": {
        "guided_steps": 10,
        "step_size": 30.0,
        "scale_range": (1.0, 0.5),
        "refine_thresholds": {i: 0.8 for i in range(10)},
        "max_refine_iters": 5,
    },
}


def _check_step(step: Any, n: int, what: str) -> None:
    """A step key of a per-step dict: an integer in [0, n)."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < n:
        raise ValueError(f"{what} has step {step!r}; expected integer steps in [0, num_inference_steps={n})")


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class GuidanceSchedule:
    """Which denoising steps update the latent, with what step size, and where to refine."""

    num_inference_steps: int  # length of the denoising loop (len(scheduler.timesteps) to match diffusers A&E)
    guided_steps: int = 25  # steps 0 .. guided_steps−1 take a latent update
    step_size: float = 20.0  # α_i = step_size · √s_i
    scale_range: tuple[float, float] = (1.0, 0.5)  # s = linspace(start, end, num_inference_steps)
    refine_thresholds: dict[int, float] | None = None  # {step: threshold}; refine while loss > target_loss(step)
    refine_rule: str = "one-minus"  # threshold → target: "one-minus" 1 − threshold (A&E), "negative" −threshold (D&B)
    max_refine_iters: int = 20  # cap on refinement updates at one step
    refine_iters: dict[int, int] | None = None  # {step: cap} overriding max_refine_iters at those steps

    def __post_init__(self) -> None:
        n = self.num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_inference_steps={n!r} is invalid; expected an integer >= 1")
        g = self.guided_steps
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= n:
            raise ValueError(f"guided_steps={g!r} is invalid; expected an integer in [0, num_inference_steps={n}]")
        if not _is_number(self.step_size) or self.step_size < 0:
            raise ValueError(f"step_size={self.step_size!r} is invalid; expected a finite number >= 0")
        scales = self.scale_range
        if not isinstance(scales, (tuple, list)) or len(scales) != 2 or any(not _is_number(s) or s < 0 for s in scales):
            raise ValueError(f"scale_range={self.scale_range!r} is invalid; expected two finite numbers >= 0")
        m = self.max_refine_iters
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"max_refine_iters={self.max_refine_iters!r} is invalid; expected an integer >= 0")
        if self.refine_rule not in REFINE_RULES:
            raise ValueError(f"refine_rule={self.refine_rule!r} is invalid; expected one of {list(REFINE_RULES)}")
        # A&E's thresholds are attention values in [0, 1]; Divide & Bind's are TV values, >= 0 (at most 2).
        top = 1.0 if self.refine_rule == "one-minus" else math.inf
        expected = "a number in [0, 1]" if self.refine_rule == "one-minus" else "a finite number >= 0"
        thresholds = dict(self.refine_thresholds or {})
        for step, threshold in thresholds.items():
            _check_step(step, n, "refine_thresholds")
            if not _is_number(threshold) or not 0.0 <= threshold <= top:
                raise ValueError(f"refine_thresholds[{step}]={threshold!r} is invalid; expected {expected}")
        caps = dict(self.refine_iters or {})
        for step, cap in caps.items():
            _check_step(step, n, "refine_iters")
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ValueError(f"refine_iters[{step}]={cap!r} is invalid; expected an integer >= 0")
        object.__setattr__(self, "scale_range", (float(self.scale_range[0]), float(self.scale_range[1])))
        if self.refine_thresholds is not None:
            object.__setattr__(self, "refine_thresholds", {k: float(v) for k, v in sorted(thresholds.items())})
        if self.refine_iters is not None:
            object.__setattr__(self, "refine_iters", dict(sorted(caps.items())))

    @classmethod
    def for_method(cls, method: str, *, num_inference_steps: int, **overrides: Any) -> GuidanceSchedule:
        """Schedule with ``METHOD_DEFAULTS[method]``, fitted to ``num_inference_steps``, then ``overrides``.

        Defaults are stated for 50 steps; for shorter runs the default ``guided_steps`` is capped at
        ``num_inference_steps`` and default refinement steps (thresholds and per-step caps) past the
        end are dropped (as diffusers' A&E silently does). Explicit ``overrides`` are validated as given.
        """
        if method not in METHOD_DEFAULTS:
            raise ValueError(f"method={method!r} is unknown; expected one of {sorted(METHOD_DEFAULTS)}")
        known = {"guided_steps", "step_size", "scale_range", "refine_thresholds", "refine_rule", "max_refine_iters", "refine_iters"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"schedule option {unknown[0]!r} is unknown; expected some of {sorted(known)}")
        options = dict(METHOD_DEFAULTS[method])
        if isinstance(num_inference_steps, int) and num_inference_steps >= 1:
            options["guided_steps"] = min(options["guided_steps"], num_inference_steps)
            for key in ("refine_thresholds", "refine_iters"):
                if options.get(key):
                    options[key] = {k: v for k, v in options[key].items() if k < num_inference_steps}
        options.update(overrides)
        return cls(num_inference_steps=num_inference_steps, **options)

    @property
    def step_sizes(self) -> list[float]:
        """Step size α_i for every step i (``step_size · √s_i``), as diffusers' A&E computes it."""
        scales = np.linspace(self.scale_range[0], self.scale_range[1], self.num_inference_steps)
        return [float(a) for a in self.step_size * np.sqrt(scales)]

    def is_guided(self, i: int) -> bool:
        """Whether denoising step ``i`` takes a latent update."""
        return 0 <= i < self.guided_steps

    def refine_threshold(self, i: int) -> float | None:
        """A&E refinement threshold at step ``i``, or None where there is no refinement."""
        return (self.refine_thresholds or {}).get(i)

    def target_loss(self, i: int) -> float | None:
        """Refine at step ``i`` while the loss exceeds this; None: no refinement.

        ``refine_rule="one-minus"``: ``max(0, 1 − threshold)`` (A&E); ``"negative"``: ``−threshold``
        (Divide & Bind: its loss −min_k TV_k exceeds −threshold exactly while min_k TV_k < threshold).
        """
        threshold = self.refine_threshold(i)
        if threshold is None:
            return None
        return max(0.0, 1.0 - threshold) if self.refine_rule == "one-minus" else -threshold

    def max_refine_iters_at(self, i: int) -> int:
        """Cap on refinement updates at step ``i``: ``refine_iters[i]`` if given, else ``max_refine_iters``."""
        return (self.refine_iters or {}).get(i, self.max_refine_iters)
