"""AI-T2I: attention-guided Stable Diffusion pipelines (and the A&E, Divide & Bind, layout baselines).

``AttentionGuidedStableDiffusionPipeline`` (SD 1.x/2.x) and ``AttentionGuidedStableDiffusionXLPipeline``
are diffusers pipelines with extra ``__call__`` arguments (``subjects``, ``method``, ...). They are
imported lazily, so ``attnsynth.t2i.losses`` and friends load without diffusers.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

_LAZY = {
    "AttentionGuidedStableDiffusionPipeline": "attnsynth.t2i.pipeline_sd",
    "AttentionGuidedStableDiffusionPipelineOutput": "attnsynth.t2i.pipeline_sd",
    "AttentionGuidedStableDiffusionXLPipeline": "attnsynth.t2i.pipeline_sdxl",
    "AttentionGuidedStableDiffusionXLPipelineOutput": "attnsynth.t2i.pipeline_sdxl",
}

__all__ = sorted([*_LAZY, "RECOMMENDED_SETTINGS_FILE", "load_pipeline", "recommended_for", "recommended_settings"])

#: Optional JSON beside ``model_index.json``: call settings the model was tuned with (steps, CFG,
#: attention grid, guided steps, step size, size), used wherever the caller does not set them.
RECOMMENDED_SETTINGS_FILE = "attnsynth_defaults.json"

_SDXL_CLASS_NAMES = ("StableDiffusionXLPipeline", "AttentionGuidedStableDiffusionXLPipeline")


def recommended_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The model directory's :data:`RECOMMENDED_SETTINGS_FILE` as a dict ({} when it has none)."""
    from attnsynth.utils.io import read_json

    settings_path = Path(path) / RECOMMENDED_SETTINGS_FILE
    return dict(read_json(settings_path, "recommended settings")) if settings_path.is_file() else {}


def recommended_for(settings: dict[str, Any], key: str, method: str | None) -> Any:
    """``settings[key]`` for ``method``: a value may be one number for all methods or ``{method: number}``
    (step sizes differ per method: their losses have different scales). None when not set."""
    value = settings.get(key)
    return value.get(method) if isinstance(value, dict) else value


def load_pipeline(path: str | os.PathLike, *, device: str | None = None, dtype: Any = None) -> Any:
    """Load a local diffusers SD or SDXL directory as the matching attention-guided pipeline.

    SDXL is recognised from ``model_index.json`` (its class name, or a ``text_encoder_2``). The
    directory's recommended settings (:func:`recommended_settings`) become ``pipe.attnsynth_defaults``.
    Raises ``FileNotFoundError`` when the directory or its ``model_index.json`` is missing.
    """
    index_path = Path(path) / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"--model {path}: no model_index.json there; expected a diffusers pipeline directory")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{index_path}: unreadable model_index.json ({error})") from None
    is_sdxl = index.get("_class_name") in _SDXL_CLASS_NAMES or "text_encoder_2" in index
    cls = __getattr__("AttentionGuidedStableDiffusionXLPipeline" if is_sdxl else "AttentionGuidedStableDiffusionPipeline")
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    pipe = cls.from_pretrained(str(path), **kwargs)
    pipe.attnsynth_defaults = recommended_settings(path)
    return pipe.to(device) if device is not None else pipe


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
