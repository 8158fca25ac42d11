"""AI-T2I: attention-guided Stable Diffusion pipelines (and the A&E, Divide & Bind, layout baselines).

``AttentionGuidedStableDiffusionPipeline`` (SD 1.x/2.x), ``AttentionGuidedStableDiffusionXLPipeline``,
``AttentionGuidedStableDiffusion3Pipeline`` (SD3/3.5) and ``AttentionGuidedFluxPipeline`` (FLUX.1)
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
    "AttentionGuidedStableDiffusion3Pipeline": "attnsynth.t2i.pipeline_sd3",
    "AttentionGuidedStableDiffusion3PipelineOutput": "attnsynth.t2i.pipeline_sd3",
    "AttentionGuidedFluxPipeline": "attnsynth.t2i.pipeline_flux",
    "AttentionGuidedFluxPipelineOutput": "attnsynth.t2i.pipeline_flux",
}

__all__ = sorted([*_LAZY, "RECOMMENDED_SETTINGS_FILE", "load_pipeline", "pipeline_class_name", "recommended_for", "recommended_settings"])

#: Optional JSON beside ``model_index.json``: call settings the model was tuned with (steps, CFG,
#: attention grid, guided steps, step size, size), used wherever the caller does not set them.
RECOMMENDED_SETTINGS_FILE = "attnsynth_defaults.json"

_SDXL_CLASS_NAMES = ("StableDiffusionXLPipeline", "AttentionGuidedStableDiffusionXLPipeline")
# MMDiT families: model_index class names → our pipeline (SD3 covers SD3.5; FLUX covers FLUX.1 dev/schnell).
_MMDIT_CLASS_NAMES = {
    "StableDiffusion3Pipeline": "AttentionGuidedStableDiffusion3Pipeline",
    "AttentionGuidedStableDiffusion3Pipeline": "AttentionGuidedStableDiffusion3Pipeline",
    "FluxPipeline": "AttentionGuidedFluxPipeline",
    "AttentionGuidedFluxPipeline": "AttentionGuidedFluxPipeline",
}
_MMDIT_TRANSFORMERS = {
    "SD3Transformer2DModel": "AttentionGuidedStableDiffusion3Pipeline",
    "FluxTransformer2DModel": "AttentionGuidedFluxPipeline",
}


def pipeline_class_name(index: dict[str, Any]) -> str:
    """Our pipeline class for a ``model_index.json``: SD 1.x/2.x, SDXL, SD3/3.5 or FLUX.

    Known pipeline class names first; otherwise the transformer's class (SD3/FLUX), then a
    ``text_encoder_2`` (SDXL); else SD. An index with a transformer of another kind is refused.
    """
    name = index.get("_class_name")
    if name in _MMDIT_CLASS_NAMES:
        return _MMDIT_CLASS_NAMES[name]
    if name in _SDXL_CLASS_NAMES:
        return "AttentionGuidedStableDiffusionXLPipeline"
    transformer = index.get("transformer")
    if transformer is not None:
        kind = transformer[1] if isinstance(transformer, (list, tuple)) and len(transformer) == 2 else transformer
        if kind not in _MMDIT_TRANSFORMERS:
            raise ValueError(
                f"model_index.json: transformer {kind!r} is not supported; expected one of {sorted(_MMDIT_TRANSFORMERS)}"
            )
        return _MMDIT_TRANSFORMERS[kind]
    return "AttentionGuidedStableDiffusionXLPipeline" if "text_encoder_2" in index else "AttentionGuidedStableDiffusionPipeline"


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
    """Load a local diffusers SD, SDXL, SD3/3.5 or FLUX directory as the matching attention-guided pipeline.

    The family is recognised from ``model_index.json`` (:func:`pipeline_class_name`). The
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
    cls = __getattr__(pipeline_class_name(index))
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
