"""When and how hard to update the latent: the guidance schedule of AI-T2I and its baselines.

At denoising step ``i`` (0-based) a guided pipeline takes ``z ← z − α_i ∇_z L`` while
``is_guided(i)``, with ``α_i = step_size · √s_i`` and ``s = linspace(scale_range[0],
scale_range[1], num_inference_steps)`` — exactly diffusers' Attend-and-Excite
(``scale_range = np.linspace(1.0, 0.5, len(timesteps)); step_size = scale_factor * np.sqrt(...)``).
At steps listed in ``refine_thresholds`` the pipeline first repeats the update until
``loss <= target_loss(i) = 1 − threshold`` or ``max_refine_iters`` updates (A&E's refinement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GuidanceSchedule", "METHOD_DEFAULTS"]

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
    # Divide & Bind builds on A&E's schedule (first 25 steps, α = 20·√s). Its loss −TV + JSD is not
    # in [0, 1], so A&E's "1 − threshold" targets mean nothing for it: no refinement by default.
    "divide-bind": {"guided_steps": 25, "step_size": 20.0, "scale_range": (1.0, 0.5), "refine_thresholds": None},
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
    refine_thresholds: dict[int, float] | None = None  # {step: threshold}; refine while loss > 1 − threshold
    max_refine_iters: int = 20  # cap on refinement updates at one step

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
        thresholds = dict(self.refine_thresholds or {})
        for step, threshold in thresholds.items():
            if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < n:
                raise ValueError(
                    f"refine_thresholds has step {step!r}; expected integer steps in [0, num_inference_steps={n})"
                )
            if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"refine_thresholds[{step}]={threshold!r} is invalid; expected a number in [0, 1]")
        object.__setattr__(self, "scale_range", (float(self.scale_range[0]), float(self.scale_range[1])))
        if self.refine_thresholds is not None:
            object.__setattr__(self, "refine_thresholds", {k: float(v) for k, v in sorted(thresholds.items())})

    @classmethod
    def for_method(cls, method: str, *, num_inference_steps: int, **overrides: Any) -> GuidanceSchedule:
        """Schedule with ``METHOD_DEFAULTS[method]``, fitted to ``num_inference_steps``, then ``overrides``.

        Defaults are stated for 50 steps; for shorter runs the default ``guided_steps`` is capped at
        ``num_inference_steps`` and default refinement steps past the end are dropped (as diffusers'
        A&E silently does). Explicit ``overrides`` are validated as given.
        """
        if method not in METHOD_DEFAULTS:
            raise ValueError(f"method={method!r} is unknown; expected one of {sorted(METHOD_DEFAULTS)}")
        known = {"guided_steps", "step_size", "scale_range", "refine_thresholds", "max_refine_iters"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"schedule option {unknown[0]!r} is unknown; expected some of {sorted(known)}")
        options = dict(METHOD_DEFAULTS[method])
        if isinstance(num_inference_steps, int) and num_inference_steps >= 1:
            options["guided_steps"] = min(options["guided_steps"], num_inference_steps)
            if options.get("refine_thresholds"):
                options["refine_thresholds"] = {
                    k: v for k, v in options["refine_thresholds"].items() if k < num_inference_steps
                }
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
        """Refine at step ``i`` while the loss exceeds this (``max(0, 1 − threshold)``); None: no refinement."""
        threshold = self.refine_threshold(i)
        return None if threshold is None else max(0.0, 1.0 - threshold)
