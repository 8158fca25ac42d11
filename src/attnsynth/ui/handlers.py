"""What the web app's buttons do, as plain functions of arrays and loaded models (no gradio here).

Each function checks its inputs (one-line ``ValueError``), calls the library — the edits of
:mod:`attnsynth.sis.edits`, the attention-guided pipelines of :mod:`attnsynth.t2i`, the oracles of
:mod:`attnsynth.toyworld` — and returns pictures ([H, W, 3] uint8 arrays) and captions. The
gradio layer (:mod:`attnsynth.ui.app`) only turns widgets into these arguments and errors into
``gr.Error``; tests call these functions directly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from attnsynth.data.labelsets import LabelSet
from attnsynth.toyworld.faces import FaceRecord
from attnsynth.ui.limits import MAX_SEED, MAX_STEPS, check_float, check_int, check_pixels, check_prompt, check_upload
from attnsynth.utils.images import colorize_labels, from_uint8, label_palette, to_uint8

#: Edit modes of the CA²-SIS editor (the first is the default).
SIS_MODES = ("transfer styles", "swap shape", "interpolate shape", "interpolate style", "random styles", "reconstruct")
#: T2I methods as the UI names them ("none" = plain sampling).
T2I_METHODS = ("none", "ait2i", "attend-excite", "divide-bind", "layout")
GALLERY_SEED = 900_000  # toy-face seeds from here on were never in the shipped model's training set
RANDOM_STYLE_SAMPLES = 4


# ---- loaded models ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class SISModels:
    """A CA²-SIS run (its label set, its mapping network if trained) and an optional SPADE run beside it."""

    model: torch.nn.Module
    label_set: LabelSet
    mapping: torch.nn.Module | None = None
    spade: torch.nn.Module | None = None
    name: str = ""
    spade_name: str = ""

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.model.config.resolution)


def load_sis(checkpoint: str | Path, spade_checkpoint: str | Path | None = None, *, device: str = "cpu") -> SISModels:
    """Load the runs through the library's loaders; the mapping network only if the run has one."""
    from attnsynth.sis import edits
    from attnsynth.sis.checkpoint import MAPPING_WEIGHTS

    model, label_set = edits.load_model(checkpoint, device=device)
    mapping = edits.load_mapping(checkpoint, model) if (Path(checkpoint) / MAPPING_WEIGHTS).is_file() else None
    spade = None
    if spade_checkpoint is not None:
        spade, _ = edits.load_model(spade_checkpoint, device=device)
        if spade.config.num_classes != model.config.num_classes:
            raise ValueError(f"--spade-checkpoint {spade_checkpoint} has {spade.config.num_classes} classes but "
                             f"--sis-checkpoint has {model.config.num_classes}; they must share the label set")
        if tuple(spade.config.resolution) != tuple(model.config.resolution):
            raise ValueError(f"--spade-checkpoint {spade_checkpoint} is {tuple(spade.config.resolution)} but --sis-checkpoint is "
                             f"{tuple(model.config.resolution)}; side by side they must share the resolution")
    return SISModels(model=model, label_set=label_set, mapping=mapping, spade=spade, name=Path(checkpoint).name,
                     spade_name=Path(spade_checkpoint).name if spade_checkpoint is not None else "")


@dataclasses.dataclass(frozen=True, eq=False)
class T2IModel:
    """An attention-guided SD/SDXL pipeline, the settings saved with it, and whether the shapes oracle applies."""

    pipe: Any
    defaults: dict[str, Any]
    shapes_oracle: bool
    name: str


def is_shapes_model(pipe: Any) -> bool:
    """True for a shapes-world model: a small vocabulary holding every word of the shapes grammar."""
    from attnsynth.toyworld.shapes_grammar import vocabulary

    vocab = pipe.tokenizer.get_vocab()
    return len(vocab) < 5000 and all(f"{word}</w>" in vocab or word in vocab for word in vocabulary())


def load_t2i(model_dir: str | Path | None = None, *, device: str = "cpu") -> T2IModel:
    """The shipped shapes model (``model_dir=None``) or any local SD / SDXL directory, as a guided pipeline."""
    from attnsynth.t2i import AttentionGuidedStableDiffusionPipeline, load_pipeline

    if model_dir is None:
        from attnsynth.shapes_t2i import load_t2i_pipeline

        base = load_t2i_pipeline(device=device)
        pipe = AttentionGuidedStableDiffusionPipeline.from_pipe(base)
        defaults, name = dict(base.attnsynth_defaults), "shapes-world model (shipped)"
    else:
        pipe = load_pipeline(model_dir, device=device)
        defaults, name = dict(pipe.attnsynth_defaults), Path(model_dir).name
    pipe.set_progress_bar_config(disable=True)
    return T2IModel(pipe=pipe, defaults=defaults, shapes_oracle=is_shapes_model(pipe), name=name)


# ---- pictures in the SIS editor ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Picture:
    """An image and its label map at the model's resolution, with the toy face's truth when known."""

    image: np.ndarray | None  # [H, W, 3] uint8 (None: a label map without an image, e.g. a donor)
    labels: np.ndarray  # [H, W] uint8 class ids
    record: FaceRecord | None = None  # set for gallery toy faces: the oracles score against it
    name: str = ""

    def with_labels(self, labels: np.ndarray) -> "Picture":
        """The same picture with an edited label map (the record still holds its styles)."""
        return dataclasses.replace(self, labels=labels, name=f"{self.name} (edited map)")


def faces_fit(models: SISModels) -> bool:
    """Whether toy faces can feed the model: square resolution and the toy faces' label set (CelebAMask-HQ classes)."""
    from attnsynth.toyworld import faces

    height, width = models.resolution
    return height == width and models.label_set.class_names == faces.CLASS_NAMES


def gallery_face(index: int, resolution: tuple[int, int]) -> Picture:
    """Held-out toy face ``index`` (seed GALLERY_SEED + index) at the model's resolution."""
    from attnsynth.toyworld import faces

    if resolution[0] != resolution[1]:
        raise ValueError(f"toy faces are square; this model is {resolution[0]}×{resolution[1]}: upload pictures instead")
    scene = faces.render(GALLERY_SEED + check_int(index, "gallery index", 0, 10_000), resolution[0])
    return Picture(image=scene.image, labels=scene.labels, record=scene.record, name=f"toy face {index}")


def read_uploaded_pair(image_path: str | None, mask_path: str | None, *, resolution: tuple[int, int], num_classes: int,
                       upload_root: str | Path | None, what: str = "image") -> Picture:
    """An uploaded image (optional) and label map → Picture, after the upload caps (:mod:`attnsynth.ui.limits`).

    The label map must be a single-channel PNG of class ids 0..num_classes−1 of the image's size
    (checked by :func:`attnsynth.sis.edits.load_pair`, which also resizes to the model).
    """
    from attnsynth.sis.edits import load_pair

    mask = check_upload(mask_path, f"{what} label map", upload_root)
    check_pixels(mask, f"{what} label map")
    image = None
    if image_path is not None and str(image_path) != "":
        image = check_upload(image_path, what, upload_root)
        check_pixels(image, what)
    try:
        pixels, labels = load_pair(image, mask, resolution=resolution, num_classes=num_classes)
    except (ValueError, FileNotFoundError) as error:  # names the server-side temp file: say which upload instead
        message = str(error).replace(str(mask), f"'{what} label map'")
        raise ValueError(message.replace(str(image), f"'{what}'") if image is not None else message) from None
    return Picture(image=None if pixels is None else to_uint8(pixels), labels=labels[0].numpy().astype(np.uint8),
                   name=f"uploaded {what}")


def palette_hex(num_classes: int) -> list[str]:
    """The label colours as '#rrggbb' (the painting brush's colours), index = class id."""
    return ["#%02x%02x%02x" % tuple(int(v) for v in colour) for colour in label_palette(num_classes)]


def enlarge(array: np.ndarray, scale: int) -> np.ndarray:
    """[H, W, …] → [H·s, W·s, …] by repeating each pixel ``scale``× (nearest neighbour)."""
    return np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)


def labels_to_canvas(labels: np.ndarray, num_classes: int, *, scale: int) -> np.ndarray:
    """Label map [H, W] → its colours, enlarged ``scale``× for painting: [H·s, W·s, 3] uint8."""
    return enlarge(colorize_labels(labels, num_classes), scale)


def canvas_to_labels(canvas: np.ndarray, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """A painted canvas [h, w, 3|4] → label map [H, W] uint8: each pixel snapped to the nearest label colour.

    Brush edges are anti-aliased, so their colours lie between palette entries; the nearest
    colour (squared RGB distance) decides. Transparent pixels (alpha < 128) count as background 0.
    The canvas is resized to ``size`` (H, W) by nearest neighbour.
    """
    from PIL import Image

    array = np.asarray(canvas)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"painted label map must be an RGB(A) image, got shape {array.shape}")
    rgb = array[..., :3].astype(np.int32)
    palette = label_palette(num_classes).astype(np.int32)  # [C, 3]
    distance = ((rgb[..., None, :] - palette[None, None]) ** 2).sum(axis=-1)  # [h, w, C]
    labels = distance.argmin(axis=-1).astype(np.uint8)
    if array.shape[2] == 4:
        labels[array[..., 3] < 128] = 0
    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


def labels_png_bytes(labels: np.ndarray) -> bytes:
    """The label map as a single-channel PNG of class ids (the dataset format the CLI reads)."""
    from attnsynth.utils.io import png_bytes

    return png_bytes(np.asarray(labels, dtype=np.uint8))


def palette_legend(label_set: LabelSet) -> list[tuple[str, str]]:
    """(class name, '#rrggbb') for each class, for the legend beside the painting canvas."""
    return list(zip(label_set.class_names, palette_hex(label_set.num_classes)))


# ---- the CA²-SIS edit -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class SISResult:
    """One edit's pictures and captions; the SPADE fields are None without a SPADE run."""

    image: np.ndarray  # [H, W·n, 3] uint8 (a strip when several images came out)
    caption: str
    overlays: list[tuple[np.ndarray, str]]  # per-class attention maps of the first image, with captions
    spade_image: np.ndarray | None = None
    spade_caption: str | None = None


def _tensors(picture: Picture, what: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    if picture is None:
        raise ValueError(f"{what}: choose a toy face from the gallery or upload an image and its label map")
    image = None if picture.image is None else from_uint8(picture.image)[None]  # [1, 3, H, W]
    return image, torch.from_numpy(picture.labels.astype(np.int64))[None]  # [1, H, W]


def _run_edit(model, mapping, source: Picture, reference: Picture | None, *, mode: str, classes: Sequence[str] | None,
              label_set: LabelSet, alpha: float, seed: int, attention: bool):
    """Dispatch one editor mode to its function in :mod:`attnsynth.sis.edits`."""
    from attnsynth.sis import edits

    image, labels = _tensors(source, "source")
    if image is None and mode != "random styles":
        raise ValueError("source has a label map but no image; upload the image too (random styles need only the map)")
    if mode == "reconstruct":
        return edits.reconstruct(model, image, labels, return_attention=attention)
    if mode == "random styles":
        if mapping is None:
            raise ValueError("random styles need a mapping network: this checkpoint has none (attnsynth sis train-mapping)")
        return edits.sample(model, mapping, labels, n=RANDOM_STYLE_SAMPLES, seed=seed, return_attention=attention)
    ref_image, ref_labels = _tensors(reference, "reference")
    common = {"label_set": label_set, "return_attention": attention}
    if mode == "transfer styles":
        if ref_image is None:
            raise ValueError("reference has no image; a style transfer takes the styles from the reference image")
        return edits.transfer(model, image, labels, ref_image, ref_labels, classes=classes or None, **common)
    if mode == "swap shape":
        if not classes:
            raise ValueError("swap shape needs at least one class (e.g. hair): tick the classes whose shape to take")
        return edits.swap_shape(model, image, labels, ref_labels, classes=list(classes), **common)
    if mode in ("interpolate shape", "interpolate style"):
        what = mode.split()[1]
        if what == "style" and ref_image is None:
            raise ValueError("reference has no image; interpolating style needs the reference image")
        return edits.interpolate(model, image, labels, ref_image, ref_labels, what=what, alpha=alpha,
                                 classes=classes or None, **common)
    raise ValueError(f"mode {mode!r} is unknown; expected one of {', '.join(SIS_MODES)}")


def face_scores(mode: str, images: np.ndarray, source: Picture, reference: Picture | None, class_ids: Sequence[int],
                alpha: float) -> str:
    """The toy-face oracles' verdict on an edit's outputs ([N, H, W, 3] uint8), or why there is none."""
    from attnsynth.toyworld import faces

    if source.record is None:
        return "oracle: only for toy faces from the gallery (an upload has no ground truth)"
    if mode in ("swap shape", "interpolate shape"):
        return "oracle: none for shape edits (the new shape has no drawn mask to score against)"
    labels = source.labels
    consistency = ", ".join(f"{faces.global_consistency(image, labels):.2f}" for image in images)
    parts = [f"global consistency {consistency} (1 = one light explains every class)"]
    first = images[0]
    if mode == "reconstruct":
        parts.insert(0, f"style error {faces.style_error(first, labels, source.record):.3f} (0 = exact)")
    elif mode in ("transfer styles", "interpolate style"):
        if reference is None or reference.record is None:
            return "oracle: needs a reference from the gallery too"
        if mode == "interpolate style" or not class_ids:
            chosen = class_ids or None  # interpolate without classes = all; global transfer = all
            to_source = faces.style_error(first, labels, source.record, chosen)
            to_reference = faces.style_error(first, labels, reference.record, chosen)
            parts.insert(0, f"style error to source {to_source:.3f}, to reference {to_reference:.3f}"
                            + (f" at α = {alpha:.2f}" if mode == "interpolate style" else ""))
        else:
            accuracy = faces.transfer_accuracy(first, labels, source.record, reference.record, list(class_ids))
            parts.insert(0, f"transfer accuracy {accuracy:.2f} (share of classes showing the expected style)")
    return "oracle: " + "; ".join(parts)


def sis_edit(models: SISModels, source: Picture | None, reference: Picture | None, *, mode: str,
             classes: Sequence[str] | None = None, alpha: float = 0.5, seed: int = 0) -> SISResult:
    """Run one edit with the CA²-SIS model (and the SPADE run, when loaded) and score it on toy faces.

    ``classes``: class or preset names (empty/None = every class, i.e. a global transfer).
    """
    from attnsynth.sis.edits import resolve_classes
    from attnsynth.sis.visuals import attention_probabilities
    from attnsynth.t2i.figures import heatmap

    if mode not in SIS_MODES:
        raise ValueError(f"mode {mode!r} is unknown; expected one of {', '.join(SIS_MODES)}")
    alpha = check_float(alpha, "alpha", 0.0, 1.0)
    seed = check_int(seed, "seed", 0, MAX_SEED)
    classes = [c for c in (classes or []) if str(c).strip()]
    num_classes = models.model.config.num_classes
    class_ids = list(resolve_classes(classes, models.label_set, num_classes)) if classes else []
    common = {"mode": mode, "classes": classes, "label_set": models.label_set, "alpha": alpha, "seed": seed}
    result = _run_edit(models.model, models.mapping, source, reference, attention=models.model.config.arch == "ca2sis", **common)
    images = np.stack([to_uint8(image) for image in result.images])  # [N, H, W, 3]
    overlays = []
    if result.attention:  # per-class softmax over the layers [C, H, W], each map on its own colour range, over the image
        probs = attention_probabilities([layer[:1] for layer in result.attention], tuple(result.images.shape[-2:]))[0]
        base = images[0].astype(np.float32)
        overlays = [(np.round(0.35 * base + 0.65 * heatmap(probs[c].numpy())).astype(np.uint8),
                     f"{models.label_set.class_names[c]} (p ≤ {float(probs[c].max()):.2f})")
                    for c in sorted(int(c) for c in np.unique(source.labels))]
    spade_image = spade_caption = None
    if models.spade is not None:
        spade = _run_edit(models.spade, None, source, reference, attention=False, **common) if mode != "random styles" else None
        if spade is None:
            spade_caption = "SPADE: random styles need a mapping network, which the SPADE baseline has none of"
        else:
            spade_images = np.stack([to_uint8(image) for image in spade.images])
            spade_image = np.concatenate(list(spade_images), axis=1)
            spade_caption = face_scores(mode, spade_images, source, reference, class_ids, alpha)
    return SISResult(image=np.concatenate(list(images), axis=1), caption=face_scores(mode, images, source, reference, class_ids, alpha),
                     overlays=overlays, spade_image=spade_image, spade_caption=spade_caption)


# ---- AI-T2I -----------------------------------------------------------------------------------------
def recommended(t2i: T2IModel, method: str) -> dict[str, Any]:
    """The model's recommended step size, guided steps, steps and CFG for ``method`` (library defaults else)."""
    from attnsynth.t2i import recommended_for
    from attnsynth.t2i.schedule import GuidanceSchedule

    steps = int(t2i.defaults.get("num_inference_steps", 50))
    guided = method if method != "none" else "ait2i"
    schedule = GuidanceSchedule.for_method(guided, num_inference_steps=steps)
    step_size = recommended_for(t2i.defaults, "step_size", guided)
    guided_steps = t2i.defaults.get("guided_steps")
    return {
        "step_size": float(step_size if step_size is not None else schedule.step_size),
        "guided_steps": int(min(guided_steps if guided_steps is not None else schedule.guided_steps, steps)),
        "steps": steps,
        "guidance_scale": float(t2i.defaults.get("guidance_scale", 7.5)),
    }


def _subject_spec(subjects: str | None) -> Any:
    from attnsynth.cli.t2i import parse_subjects  # 'cat,dog' / 'cat/kitten,dog' / 'auto' — one parser for CLI and UI

    return parse_subjects(subjects)


def subject_groups(t2i: T2IModel, prompt: str, subjects: str | None) -> list[tuple[str, list[str]]]:
    """The subjects resolved through the pipeline's tokenizer: (group name, its tokens as text)."""
    from attnsynth.t2i.subjects import resolve_subjects

    prompt = check_prompt(prompt)
    spec = _subject_spec(subjects)
    if spec is None:
        return []
    return _named_tokens(t2i, prompt, resolve_subjects(prompt, spec, t2i.pipe.tokenizer))


def _named_tokens(t2i: T2IModel, prompt: str, groups: Sequence[Any]) -> list[tuple[str, list[str]]]:
    """(group name, the text of its tokens) for resolved :class:`~attnsynth.t2i.subjects.SubjectGroup` s."""
    tokenizer = t2i.pipe.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
    return [(group.name, [tokens[i].replace("</w>", "") for i in group.token_indices]) for group in groups]


def format_groups(groups: list[tuple[str, list[str]]]) -> str:
    """Resolved groups as one line each: 'circle ← tokens [circle]'."""
    if not groups:
        return "no subjects (unguided only)"
    return "\n".join(f"{name} ← tokens [{', '.join(tokens)}]" for name, tokens in groups)


@dataclasses.dataclass(frozen=True, eq=False)
class T2IResult:
    unguided: np.ndarray  # [H, W, 3] uint8
    guided: np.ndarray | None  # None when method is "none"
    attention: np.ndarray | None  # subject maps over the steps (None without subjects)
    unguided_caption: str
    guided_caption: str
    groups: str


def shapes_caption(t2i: T2IModel, prompt: str, image: np.ndarray) -> str:
    """The shapes oracle's verdict on ``image`` for ``prompt``, or why there is none."""
    if not t2i.shapes_oracle:
        return "oracle: only for the shapes-world model"
    from attnsynth.toyworld import shapes
    from attnsynth.toyworld.demo_page import shapes_verdict

    try:
        spec = shapes.spec_from_prompt(prompt)
    except ValueError as error:
        return f"oracle: prompt outside the shapes grammar ({error})"
    return "oracle: " + shapes_verdict(shapes.score(image, spec))


def draw_boxes(image: np.ndarray, boxes: dict[str, tuple[float, ...]], *, scale: int = 4) -> np.ndarray:
    """``image`` enlarged ``scale``× with each layout box (x0, y0, x1, y1 in [0, 1]) outlined and named."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for k, (name, (x0, y0, x1, y1)) in enumerate(boxes.items()):
        colour = ("#ff0000", "#0000ff", "#00a000", "#ff00ff")[k % 4]
        w, h = canvas.size
        draw.rectangle([x0 * (w - 1), y0 * (h - 1), x1 * (w - 1), y1 * (h - 1)], outline=colour, width=2)
        draw.text((x0 * (w - 1) + 3, y0 * (h - 1) + 1), name, fill=colour)
    return np.asarray(canvas)


def t2i_generate(t2i: T2IModel, *, prompt: str, subjects: str | None = "auto", method: str = "ait2i",
                 step_size: float | None = None, guided_steps: int | None = None, steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0, boxes: str | None = None,
                 progress: Callable[[float, str], None] | None = None) -> T2IResult:
    """The unguided and the guided image of one seed, the subjects' attention over the steps, oracle verdicts.

    None for a setting = the model's recommended value (:func:`recommended`). ``boxes`` is
    'name=x0,y0,x1,y1;…' and used by the layout method only. ``progress(fraction, text)`` is
    called after every denoising step of both runs.
    """
    from attnsynth.cli.t2i import parse_boxes
    from attnsynth.t2i.figures import attention_steps_figure

    prompt = check_prompt(prompt)
    if method not in T2I_METHODS:
        raise ValueError(f"method {method!r} is unknown; expected one of {', '.join(T2I_METHODS)}")
    preset = recommended(t2i, method)
    steps = check_int(steps if steps is not None else preset["steps"], "steps", 1, MAX_STEPS)
    guided_steps = check_int(guided_steps if guided_steps is not None else min(preset["guided_steps"], steps), "guided steps", 0, steps)
    step_size = check_float(step_size if step_size is not None else preset["step_size"], "step size", 0.0, 1000.0)
    guidance_scale = check_float(guidance_scale if guidance_scale is not None else preset["guidance_scale"], "CFG scale", 0.0, 50.0)
    seed = check_int(seed, "seed", 0, MAX_SEED)
    spec = _subject_spec(subjects)
    box_spec = parse_boxes(boxes) if method == "layout" else None
    common: dict[str, Any] = {"num_inference_steps": steps, "guidance_scale": guidance_scale, "output_type": "np",
                              "return_attention_maps": spec is not None}
    if "height" in t2i.defaults:
        common.update(height=int(t2i.defaults["height"]), width=int(t2i.defaults["width"]))
    if "attention_res" in t2i.defaults:
        common["attention_res"] = tuple(int(v) for v in t2i.defaults["attention_res"])
    guided = method != "none"
    runs = 2 if guided else 1

    def run(index: int, **extra: Any):
        def on_step(pipe, i, t, tensors):
            if progress is not None:
                progress((index * steps + i + 1) / (runs * steps), f"{'guided' if index else 'unguided'}: step {i + 1}/{steps}")
            return tensors

        generator = torch.Generator("cpu").manual_seed(seed)
        return t2i.pipe(prompt, subjects=spec, generator=generator, callback_on_step_end=on_step, **common, **extra)

    plain = run(0, method=None)
    unguided = np.round(plain.images[0] * 255).astype(np.uint8)
    guided_image, guided_caption = None, ""
    figure_runs = {"unguided": (unguided, plain.attention_maps)}
    if guided:
        out = run(1, method=method, guided_steps=guided_steps, step_size=step_size, boxes=box_spec)
        guided_image = np.round(out.images[0] * 255).astype(np.uint8)
        guided_caption = shapes_caption(t2i, prompt, guided_image)
        figure_runs[method] = (guided_image, out.attention_maps)
        if box_spec:
            guided_caption += "; boxes drawn on the image"
            guided_image = draw_boxes(guided_image, box_spec)
    groups = (plain.subjects or [()])[0]
    figure = None
    if groups and spec is not None:
        figure = attention_steps_figure({k: (image, maps[:, 0]) for k, (image, maps) in figure_runs.items()}, groups)
    group_text = format_groups(_named_tokens(t2i, prompt, groups))
    return T2IResult(unguided=unguided, guided=guided_image, attention=figure,
                     unguided_caption=shapes_caption(t2i, prompt, unguided), guided_caption=guided_caption, groups=group_text)

