"""Demo section: CA²-SIS edits on toy faces with the small checkpoint shipped in the package.

Held-out toy faces (seeds never used for training) are reconstructed, get another face's hair or
skin style (per-class transfer) and another face's hair shape (shape-token swap, no redrawn mask);
the per-class attention maps show where each class token is read. Oracle numbers from
:mod:`attnsynth.toyworld.faces` score each edit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnsynth.demo import figure
from attnsynth.sis import edits
from attnsynth.sis.visuals import attention_probabilities
from attnsynth.toyworld import faces
from attnsynth.utils.images import colorize_labels, from_uint8, to_uint8

TITLE = "CA²-SIS: semantic image synthesis edits (toy faces)"
TOY_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "sis_toy_faces"
HELD_OUT_SEED = 900_000  # toy-face seeds from here on were never in the training set
SHOWN_CLASSES = {"background": 0, "skin": 1, "hair": 13, "cloth": 18, "l_eye": 4, "mouth": 10}


def _tensors(scene) -> tuple[torch.Tensor, torch.Tensor]:
    return from_uint8(scene.image)[None], torch.from_numpy(scene.labels.astype(np.int64))[None]


def _training_summary(checkpoint: Path) -> str:
    """' for N steps at batch B' from the run's train_config.json, when it ships beside the weights."""
    path = Path(checkpoint) / "train_config.json"
    if not path.is_file():
        return ""
    from attnsynth.utils.io import read_json

    train = read_json(path, "SIS train config").get("train", {})
    return f" for {train.get('steps')} steps at batch {train.get('batch_size')} on one CPU core" if train else ""


def render(out_dir: Path, *, checkpoint: Path = TOY_CHECKPOINT, pairs: int = 3) -> str:
    """Write the SIS figures into ``out_dir`` and return the section's HTML."""
    model, label_set = edits.load_model(checkpoint)
    resolution = model.config.resolution[0]
    rows = []
    for k in range(pairs):
        source = faces.render(HELD_OUT_SEED + 2 * k, resolution)
        reference = faces.render(HELD_OUT_SEED + 2 * k + 1, resolution)
        image, labels = _tensors(source)
        ref_image, ref_labels = _tensors(reference)
        recon = edits.reconstruct(model, image, labels, return_attention=True)
        hair = edits.transfer(model, image, labels, ref_image, ref_labels, classes="hair", label_set=label_set)
        skin = edits.transfer(model, image, labels, ref_image, ref_labels, classes="skin", label_set=label_set)
        swapped = edits.swap_shape(model, image, labels, ref_labels, classes="hair", label_set=label_set)

        recon_np = to_uint8(recon.images)
        hair_np, skin_np = to_uint8(hair.images), to_uint8(skin.images)
        recon_err = faces.style_error(recon_np, source.labels, source.record)
        hair_acc = faces.transfer_accuracy(hair_np, source.labels, source.record, reference.record, "hair")
        skin_acc = faces.transfer_accuracy(skin_np, source.labels, source.record, reference.record, "skin")
        cells = [
            figure(out_dir, f"sis_{k}_source.png", source.image, "source (held out)"),
            figure(out_dir, f"sis_{k}_labels.png", colorize_labels(source.labels, faces.NUM_CLASSES), "its mask"),
            figure(out_dir, f"sis_{k}_recon.png", recon_np, f"reconstruction<br>style err {recon_err:.3f}"),
            figure(out_dir, f"sis_{k}_reference.png", reference.image, "reference"),
            figure(out_dir, f"sis_{k}_hair.png", hair_np, f"hair style ← reference<br>transfer acc {hair_acc:.2f}"),
            figure(out_dir, f"sis_{k}_skin.png", skin_np, f"skin style ← reference<br>transfer acc {skin_acc:.2f}"),
            figure(out_dir, f"sis_{k}_swap.png", to_uint8(swapped.images), "hair shape ← reference<br>(shape token swap)"),
        ]
        probs = attention_probabilities(recon.attention, (resolution, resolution))[0]  # [C, H, W]
        for name, class_id in SHOWN_CLASSES.items():
            heat = (probs[class_id].clamp(0, 1).numpy() * 255).astype(np.uint8)
            cells.append(figure(out_dir, f"sis_{k}_att_{name}.png", np.repeat(heat[..., None], 3, axis=2), f"attention: {name}"))
        rows.append("<div>" + "".join(cells) + "</div>")
    trained = _training_summary(checkpoint)
    return (
        f"<p>Checkpoint: the small CA²-SIS model shipped in the package ({checkpoint.name}), trained on toy faces at "
        f"{resolution}²{trained}. Style error 0 = exact styles after removing illumination; transfer accuracy = fraction of classes "
        "showing the expected style (reference for the transferred class, original for the rest). Attention maps are the "
        "per-class softmax averaged over the generator's cross-attention layers.</p>" + "\n".join(rows)
    )
