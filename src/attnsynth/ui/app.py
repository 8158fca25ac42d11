"""The gradio app: one ``gr.Blocks`` with a CA²-SIS editor tab and an AI-T2I playground tab.

Widgets only: every button calls a function of :mod:`attnsynth.ui.handlers` and turns its
``ValueError`` into a ``gr.Error`` message (the server keeps serving). Two events are public API
endpoints for ``gradio_client`` scripts — ``/t2i_generate`` and ``/sis_transfer``; the editor's
other events are private (callable by the page only). :func:`launch` sets the safety limits of
:mod:`attnsynth.ui.limits`: one queue, concurrency 1, bounded size, capped uploads.
"""

from __future__ import annotations

import functools
import html
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attnsynth.ui import handlers
from attnsynth.ui.handlers import Picture, SISModels, T2IModel
from attnsynth.ui.limits import CONCURRENCY, MAX_UPLOAD_BYTES, QUEUE_SIZE
from attnsynth.utils.images import colorize_labels

TITLE = "attnsynth — CA²-SIS and AI-T2I"
GALLERY_FACES = 8  # toy faces offered in each gallery
PAINT_SCALE = 6  # the label map is painted enlarged this many times
VIEW_SCALE = 3  # pictures in the page are shown enlarged this many times (nearest: pixels stay visible)
DEFAULT_PROMPT = "a red circle and a blue square"
# Small model outputs are shown enlarged with visible pixels; the API still returns them at their own size.
CSS = "img { image-rendering: pixelated; } .attnsynth-fill img { width: 100% !important; height: 100% !important; object-fit: contain; }"
PRIVATE = {"api_visibility": "private"}
MODEL_QUEUE = {"concurrency_id": "model"}  # every event that runs a model shares ONE concurrency limit (CONCURRENCY)


def user_errors(fn: Callable) -> Callable:
    """Run ``fn``; a ValueError/FileNotFoundError (bad input) becomes a one-line ``gr.Error`` in the page."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(" ".join(str(error).split()) or type(error).__name__) from None

    return wrapper


def _big(array: np.ndarray | None) -> np.ndarray | None:
    """``array`` enlarged VIEW_SCALE× (small model outputs stay legible); None stays None."""
    return None if array is None else handlers.enlarge(array, VIEW_SCALE)


def _view(picture: Picture | None, num_classes: int) -> np.ndarray | None:
    """Image and coloured label map side by side (a label map alone when there is no image), enlarged."""
    if picture is None:
        return None
    colours = colorize_labels(picture.labels, num_classes)
    return _big(colours if picture.image is None else np.concatenate([picture.image, colours], axis=1))


def _labels_file(picture: Picture | None) -> str | None:
    """The picture's label map written as a PNG of class ids into a fresh temporary folder (for the download button)."""
    if picture is None:
        return None
    from attnsynth.utils.io import atomic_write_bytes

    path = Path(tempfile.mkdtemp(prefix="attnsynth_ui_")) / "labels.png"
    atomic_write_bytes(path, handlers.labels_png_bytes(picture.labels))
    return str(path)


def _legend(sis: SISModels) -> str:
    swatches = "".join(
        f'<span style="display:inline-block;margin:2px 6px"><span style="display:inline-block;width:14px;height:14px;'
        f'background:{colour};border:1px solid #888;vertical-align:middle"></span> {c}: {html.escape(name)}</span>'
        for c, (name, colour) in enumerate(handlers.palette_legend(sis.label_set))
    )
    return f"<div>{swatches}</div>"


def _sis_tab(gr: Any, sis: SISModels, upload_root: str | None) -> None:
    num_classes = sis.model.config.num_classes
    resolution = sis.resolution
    faces = [handlers.gallery_face(k, resolution) for k in range(GALLERY_FACES)] if handlers.faces_fit(sis) else []
    source0 = faces[0] if faces else None
    reference0 = faces[1] if len(faces) > 1 else None
    extras = [f"mapping network: {'yes (random styles)' if sis.mapping is not None else 'none (no random styles)'}"]
    if sis.spade is not None:
        extras.append(f"SPADE baseline beside it: `{sis.spade_name}`")
    gr.Markdown(f"**CA²-SIS** semantic image synthesis — checkpoint `{sis.name}` ({sis.model.config.arch}, "
                f"{resolution[0]}×{resolution[1]}, {num_classes} classes, label set `{sis.label_set.name}`); "
                + "; ".join(extras) + ". Pick a source and a reference (gallery or upload), choose an edit, press **Edit**.")
    source_state = gr.State(source0)
    reference_state = gr.State(reference0)
    galleries = []
    with gr.Row():
        for title, state, first in (("Source", source_state, source0), ("Reference / donor", reference_state, reference0)):
            with gr.Column():
                view = gr.Image(_view(first, num_classes), label=f"{title}: image | label map", interactive=False, height=200, format="png",
                                elem_id=f"sis-{title.split()[0].lower()}-view")
                gallery = gr.Gallery([(face.image, face.name) for face in faces], label=f"{title}: toy faces (held out)",
                                     columns=GALLERY_FACES // 2, height=250, allow_preview=False, visible=bool(faces))
                with gr.Accordion(f"{title}: upload an image and its label map", open=False):
                    image_file = gr.File(label="image (PNG/JPEG)", file_types=["image"], type="filepath")
                    mask_file = gr.File(label=f"label map (single-channel PNG, class ids 0..{num_classes - 1})",
                                        file_types=[".png"], type="filepath")
                    use = gr.Button(f"Use uploaded {title.split()[0].lower()}", elem_id=f"sis-{title.split()[0].lower()}-upload")
                galleries.append((state, view, gallery, image_file, mask_file, use))
    with gr.Accordion("Paint the source's label map (colours snap to the nearest class)", open=False, elem_id="sis-paint"):
        gr.HTML(_legend(sis))
        canvas0 = handlers.labels_to_canvas(source0.labels, num_classes, scale=PAINT_SCALE) if source0 is not None else None
        editor = gr.ImageEditor(
            canvas0, type="numpy", image_mode="RGB", format="png", sources=(), transforms=(), layers=False,
            brush=gr.Brush(colors=handlers.palette_hex(num_classes), color_mode="fixed", default_size=PAINT_SCALE * 2),
            canvas_size=(resolution[1] * PAINT_SCALE, resolution[0] * PAINT_SCALE), label="label map", elem_id="sis-editor",
        )
        with gr.Row():
            apply_paint = gr.Button("Use the painted map", elem_id="sis-apply-paint")
            download = gr.DownloadButton("Download the label map (PNG of class ids)", _labels_file(source0), elem_id="sis-download")
    with gr.Row():
        with gr.Column(scale=2):
            mode = gr.Radio(list(handlers.SIS_MODES), value=handlers.SIS_MODES[0], label="Edit", elem_id="sis-mode")
            classes = gr.CheckboxGroup(list(sis.label_set.class_names), label="Classes (none ticked = every class: global transfer)",
                                       elem_id="sis-classes")
            gr.Markdown("Presets (tick their classes):")
            with gr.Row():
                preset_buttons = [(gr.Button(name, size="sm"), ids) for name, ids in sorted(sis.label_set.presets.items())]
                clear = gr.Button("none (global)", size="sm")
        with gr.Column(scale=1):
            alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="α (interpolations: 0 = own, 1 = reference)")
            seed = gr.Number(0, precision=0, minimum=0, label="seed (random styles)")
            run = gr.Button("Edit", variant="primary", elem_id="sis-run")
    with gr.Row():
        with gr.Column():
            result = gr.Image(label="CA²-SIS", interactive=False, height=256, format="png", elem_id="sis-result")
            caption = gr.Markdown(elem_id="sis-caption")
        with gr.Column(visible=sis.spade is not None):
            spade_result = gr.Image(label="SPADE", interactive=False, height=256, format="png", elem_id="sis-spade-result")
            spade_caption = gr.Markdown(elem_id="sis-spade-caption")
    overlays = gr.Gallery(label="Per-class attention over the CA²-SIS result: where each class's style token is read "
                          "(each map on its own range, bright = high; p = its largest probability)",
                          columns=8, height="auto", format="png", elem_id="sis-overlays")

    # -- events --------------------------------------------------------------------------------------
    def canvas(picture: Picture | None):
        return None if picture is None else handlers.labels_to_canvas(picture.labels, num_classes, scale=PAINT_SCALE)

    def chooser(is_source: bool):
        """The gallery-select and upload callbacks of one side (the source also refreshes the paint canvas)."""

        def shown(picture: Picture):
            return (picture, _view(picture, num_classes)) + ((canvas(picture),) if is_source else ())

        def pick(evt):
            return shown(faces[evt.index])

        pick.__annotations__["evt"] = gr.SelectData  # a real class (this module's annotations are strings): gradio injects it

        @user_errors
        def upload(image_path: str | None, mask_path: str | None):
            return shown(handlers.read_uploaded_pair(image_path, mask_path, resolution=resolution, num_classes=num_classes,
                                                     upload_root=upload_root, what="source" if is_source else "reference"))

        return pick, upload

    for index, (state, view, gallery, image_file, mask_file, use) in enumerate(galleries):
        pick, upload = chooser(index == 0)
        outputs = [state, view] + ([editor] if index == 0 else [])
        picked = gallery.select(pick, None, outputs, **PRIVATE)
        uploaded = use.click(upload, [image_file, mask_file], outputs, **PRIVATE)
        if index == 0:  # the download button always holds the source's current map
            for event in (picked, uploaded):
                event.success(_labels_file, [source_state], [download], **PRIVATE)

    @user_errors
    def apply(painted: dict | None, picture: Picture | None):
        if picture is None:
            raise ValueError("source: choose a toy face or upload a source before painting its map")
        if painted is None or painted.get("composite") is None:
            raise ValueError("label map: nothing painted yet")
        labels = handlers.canvas_to_labels(painted["composite"], num_classes, resolution)
        edited = picture.with_labels(labels)
        return edited, _view(edited, num_classes)

    apply_paint.click(apply, [editor, source_state], [source_state, galleries[0][1]], **PRIVATE).success(
        _labels_file, [source_state], [download], **PRIVATE)

    for button, ids in preset_buttons:
        button.click(lambda ids=ids: [sis.label_set.class_names[i] for i in ids], None, [classes], **PRIVATE)
    clear.click(lambda: [], None, [classes], **PRIVATE)

    @user_errors
    def edit(source: Picture | None, reference: Picture | None, mode: str, classes: list[str], alpha: float, seed: float):
        out = handlers.sis_edit(sis, source, reference, mode=mode, classes=classes, alpha=alpha, seed=seed)
        overlays = [(_big(array), name) for array, name in out.overlays]
        return _big(out.image), out.caption, _big(out.spade_image), out.spade_caption or "", overlays

    run.click(edit, [source_state, reference_state, mode, classes, alpha, seed],
              [result, caption, spade_result, spade_caption, overlays], **PRIVATE, **MODEL_QUEUE)

    # -- the public /sis_transfer endpoint (files in, edited image out; no widgets of its own) -----------
    api_inputs = [gr.File(visible=False, type="filepath") for _ in range(4)] + [gr.Textbox(visible=False)]
    api_output = gr.Image(visible=False, format="png")

    @user_errors
    def sis_transfer(image: str, mask: str, reference: str, reference_mask: str, classes: str) -> np.ndarray:
        """Per-class style transfer: `classes` like 'hair,eyes' (names, ids or presets); empty = every class."""
        own = handlers.read_uploaded_pair(image, mask, resolution=resolution, num_classes=num_classes,
                                          upload_root=upload_root, what="image")
        other = handlers.read_uploaded_pair(reference, reference_mask, resolution=resolution, num_classes=num_classes,
                                            upload_root=upload_root, what="reference")
        names = [c.strip() for c in (classes or "").split(",") if c.strip()]
        return handlers.sis_edit(sis, own, other, mode="transfer styles", classes=names).image

    gr.Button(visible=False).click(sis_transfer, api_inputs, api_output, api_name="sis_transfer", **MODEL_QUEUE)


def _t2i_tab(gr: Any, t2i: T2IModel) -> tuple[Callable, list, list]:
    preset = handlers.recommended(t2i, "ait2i")
    gr.Markdown(f"**AI-T2I** attention-guided text-to-image — model: {t2i.name}. The same seed is sampled without "
                "and with guidance. Settings start at the model's recommended values"
                + (" (the shapes oracle judges each image)." if t2i.shapes_oracle else "."))
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", elem_id="t2i-prompt")
            subjects = gr.Textbox("auto", label="Subjects: 'auto', or words of the prompt, e.g. 'circle,square' "
                                  "('/' joins synonyms)", elem_id="t2i-subjects")
            groups = gr.Textbox(label="Resolved token groups", interactive=False, lines=2, elem_id="t2i-groups")
            boxes = gr.Textbox("", label="Boxes for the layout method: subject=x0,y0,x1,y1 in [0, 1], ';'-separated",
                               placeholder="circle=0,0,0.5,1;square=0.5,0,1,1", elem_id="t2i-boxes")
        with gr.Column(scale=2):
            method = gr.Radio(list(handlers.T2I_METHODS), value="ait2i", label="Method", elem_id="t2i-method")
            with gr.Row():
                step_size = gr.Number(preset["step_size"], label="step size α", minimum=0)
                guided_steps = gr.Number(preset["guided_steps"], precision=0, minimum=0, label="guided steps")
            with gr.Row():
                steps = gr.Number(preset["steps"], precision=0, minimum=1, label="steps")
                guidance_scale = gr.Number(preset["guidance_scale"], minimum=0, label="CFG scale")
                seed = gr.Number(0, precision=0, minimum=0, label="seed")
            run = gr.Button("Generate", variant="primary", elem_id="t2i-run")
    with gr.Row():
        with gr.Column():
            unguided = gr.Image(label="unguided", interactive=False, height=256, format="png", elem_id="t2i-unguided",
                                elem_classes=["attnsynth-fill"])
            unguided_caption = gr.Markdown(elem_id="t2i-unguided-caption")
        with gr.Column():
            guided = gr.Image(label="guided (same seed)", interactive=False, height=256, format="png", elem_id="t2i-guided",
                              elem_classes=["attnsynth-fill"])
            guided_caption = gr.Markdown(elem_id="t2i-guided-caption")
    attention = gr.Image(label="subjects' attention over the denoising steps (one row per run and subject)",
                         interactive=False, format="png", elem_id="t2i-attention")

    def preview(prompt_text: str, subjects_text: str) -> str:
        try:
            return handlers.format_groups(handlers.subject_groups(t2i, prompt_text, subjects_text))
        except ValueError as error:
            return f"⚠ {' '.join(str(error).split())}"

    gr.on([prompt.submit, prompt.blur, subjects.submit, subjects.blur], preview, [prompt, subjects], [groups], **PRIVATE)

    def settings_for(method_name: str):
        values = handlers.recommended(t2i, method_name)
        return values["step_size"], values["guided_steps"]

    method.change(settings_for, [method], [step_size, guided_steps], **PRIVATE)

    @user_errors
    def t2i_generate(prompt: str, subjects: str, method: str, seed: float, step_size: float, guided_steps: float,
                     steps: float, guidance_scale: float, boxes: str, progress=gr.Progress()):
        """Unguided and guided image of one seed, the subjects' attention figure, oracle captions, token groups."""
        out = handlers.t2i_generate(t2i, prompt=prompt, subjects=subjects, method=method, step_size=step_size,
                                    guided_steps=guided_steps, steps=steps, guidance_scale=guidance_scale, seed=seed,
                                    boxes=boxes, progress=lambda fraction, text: progress(fraction, desc=text))
        return out.unguided, out.guided, out.attention, out.unguided_caption, out.guided_caption, out.groups

    run.click(t2i_generate, [prompt, subjects, method, seed, step_size, guided_steps, steps, guidance_scale, boxes],
              [unguided, guided, attention, unguided_caption, guided_caption, groups], api_name="t2i_generate", **MODEL_QUEUE)
    return preview, [prompt, subjects], [groups]  # also run when the page loads (build_app)


def build_app(sis: SISModels, t2i: T2IModel, *, upload_root: str | None = None):
    """The Blocks app on loaded models; ``upload_root`` is the only folder uploads may come from
    (default: gradio's upload folder)."""
    import gradio as gr
    from gradio.utils import get_upload_folder

    upload_root = upload_root if upload_root is not None else get_upload_folder()
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}")
        with gr.Tabs():
            with gr.Tab("CA²-SIS", id="sis", elem_id="tab-sis"):
                _sis_tab(gr, sis, upload_root)
            with gr.Tab("AI-T2I", id="t2i", elem_id="tab-t2i"):
                on_load = _t2i_tab(gr, t2i)
        app.load(*on_load, **PRIVATE)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return app


def launch(app, *, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True):
    """Serve ``app`` with the upload cap; ``port=None`` takes a free one; ``block=False`` returns at once
    (tests, benchmarks) with gradio's ``(app, local_url, share_url)``."""
    return app.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD_BYTES, prevent_thread_lock=not block,
                      quiet=not block, css=CSS, footer_links=["api"], ssr_mode=False)
