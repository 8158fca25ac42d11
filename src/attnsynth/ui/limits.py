"""What the web app accepts: upload caps, prompt length, queue size — checked before any decoding or compute.

Uploads arrive as files that gradio stored in its own upload folder. Each is checked here in
this order, so a hostile file costs almost nothing: it must lie inside the upload folder (the
browser never names a server-side path), be at most :data:`MAX_UPLOAD_BYTES`, and its header
must declare at most :data:`MAX_UPLOAD_PIXELS` pixels (a decompression bomb is refused before
its pixels are decoded). Every refusal is a ``ValueError`` with a one-line message that the UI
shows as a ``gr.Error``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # per file; also passed to gradio's launch(max_file_size=...)
MAX_UPLOAD_PIXELS = 4096 * 4096  # declared width × height; bigger headers are refused undecoded
MAX_PROMPT_CHARS = 500  # before tokenising; the tokenizer's own limit is checked by the pipeline
MAX_SEED = 2**32 - 1
MAX_STEPS = 200  # denoising steps per image (each click runs the unguided and the guided image)
QUEUE_SIZE = 16  # requests waiting beyond the one running; more are refused with a message
CONCURRENCY = 1  # one model call at a time (CPU: parallel calls only slow each other down)


def check_upload(path: str | os.PathLike | None, what: str, upload_root: str | os.PathLike | None) -> Path:
    """The uploaded file at ``path``, checked: present, inside ``upload_root`` (when given), not too large."""
    if path is None or str(path) == "":
        raise ValueError(f"{what}: no file was uploaded")
    file = Path(path).resolve()
    if upload_root is not None:
        root = Path(upload_root).resolve()
        if root not in file.parents:
            raise ValueError(f"{what}: only files uploaded through the app are accepted, not server paths")
    if not file.is_file():
        raise ValueError(f"{what}: the uploaded file is missing on the server; upload it again")
    size = file.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"{what}: {size / 2**20:.1f} MiB is too large; at most {MAX_UPLOAD_BYTES / 2**20:.0f} MiB")
    return file


def check_pixels(file: Path, what: str) -> None:
    """Refuse an image whose header declares more than :data:`MAX_UPLOAD_PIXELS` pixels, without decoding it."""
    try:
        with Image.open(file) as handle:  # reads the header only
            width, height = handle.size
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        detail = " ".join(str(error).replace(str(file), "the file").split())  # no server paths in messages
        raise ValueError(f"{what}: not a readable image ({detail})") from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise ValueError(f"{what}: {width}×{height} pixels is too large (decompression bomb refused); at most "
                         f"{MAX_UPLOAD_PIXELS} pixels")


def check_prompt(prompt: str | None) -> str:
    """A non-empty prompt of at most :data:`MAX_PROMPT_CHARS` characters, stripped."""
    text = (prompt or "").strip()
    if not text:
        raise ValueError("prompt is empty; type what to draw, e.g. 'a red circle and a blue square'")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt has {len(text)} characters; at most {MAX_PROMPT_CHARS}")
    return text


def check_int(value: float | int | None, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (gradio numbers arrive as floats)."""
    if value is None or float(value) != int(value) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_float(value: float | int | None, name: str, low: float, high: float) -> float:
    """``value`` as a float in [low, high]."""
    if value is None or not np.isfinite(float(value)) or not low <= float(value) <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)
