"""Demo section: toy-world scenes with their ground truth and what the oracles read back.

Faces: image, label map, the same face relit (oracle style error stays ≈ 0 because illumination
is estimated and removed), and the same shape painted with another face's styles (style error jumps). Shapes: image,
caption, and the oracle's detections drawn as boxes with its verdict.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from attnsynth.demo import figure
from attnsynth.toyworld import faces, shapes
from attnsynth.toyworld.faces_record import Illumination
from attnsynth.utils.images import colorize_labels

TITLE = "Toy worlds: ground truth and oracles"
SCALE = 3  # 64² scenes are shown at 192² (nearest)


def shapes_verdict(verdict: dict) -> str:
    """The oracle's verdict on a shapes image as caption text: all present or not, and its accuracy."""
    found = "all present ✓" if verdict["all_present"] else "missing ✗"
    return f"{found}, accuracy {verdict['accuracy']:.2f}"


def _faces_rows(out_dir: Path, seeds: range, resolution: int) -> str:
    rows = []
    for seed in seeds:
        scene = faces.render(seed, resolution)
        relit = faces.render_record(
            scene.record.with_illumination(Illumination(direction=2.5, strength=0.9, falloff=0.6, center=(0.3, 0.7), gain=(1.15, 0.95, 0.8))),
            resolution,
        )
        other = faces.render_record(faces.render(seed + 1000, resolution).record, resolution, labels=scene.labels)
        own = faces.style_error(scene.image, scene.labels, scene.record)
        relit_error = faces.style_error(relit.image, relit.labels, scene.record)
        other_error = faces.style_error(other.image, other.labels, scene.record)
        consistency = faces.global_consistency(scene.image, scene.labels)
        cells = [
            figure(out_dir, f"faces_{seed}.png", scene.image, f"seed {seed}<br>style err {own:.3f}<br>consistency {consistency:.2f}"),
            figure(out_dir, f"faces_{seed}_labels.png", colorize_labels(scene.labels, faces.NUM_CLASSES), "labels"),
            figure(out_dir, f"faces_{seed}_relit.png", relit.image, f"relit<br>style err {relit_error:.3f}"),
            figure(out_dir, f"faces_{seed}_other.png", other.image, f"same shape, other styles<br>style err {other_error:.3f}"),
        ]
        rows.append("<div>" + "".join(cells) + "</div>")
    return "\n".join(rows)


def _draw_detections(image: np.ndarray, detections: list, scale: int = SCALE) -> np.ndarray:
    big = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for det in detections:
        x0, y0, x1, y1 = (v * big.width for v in det.box)
        draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0), width=2)
        draw.text((x0 + 2, y0 + 1), f"{det.colour} {det.shape}", fill=(0, 0, 0))
    return np.asarray(big)


def _shapes_rows(out_dir: Path, seeds: range, resolution: int) -> str:
    cells = []
    for seed in seeds:
        scene = shapes.render(seed, resolution)
        verdict = shapes.score(scene.image, scene.spec)
        detections = shapes.detect(scene.image)
        boxed = _draw_detections(scene.image, detections)
        caption = f"“{html.escape(scene.caption)}”<br>oracle: {shapes_verdict(verdict)}"
        cells.append(figure(out_dir, f"shapes_{seed}.png", boxed, caption, scale=1))  # boxed is already enlarged
    return "<div>" + "".join(cells) + "</div>"


def render(out_dir: Path, *, resolution: int = 64) -> str:
    """Write the toy-world figures into ``out_dir`` and return the section's HTML."""
    return (
        "<h3>Faces (semantic image synthesis)</h3>"
        "<p>Per-class styles with inter-class correlations, under a global illumination and colour cast. "
        "The style-error oracle removes the illumination it estimates from the image, so relighting keeps the error ≈ 0 "
        "while another face's styles score far higher.</p>"
        + _faces_rows(out_dir, range(4), resolution)
        + "<h3>Shapes (text-to-image)</h3><p>Captions from a small grammar; boxes are what the oracle detects.</p>"
        + _shapes_rows(out_dir, range(8), resolution)
    )
