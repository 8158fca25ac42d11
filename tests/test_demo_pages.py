"""Demo sections render from a checkpoint/toy data and every figure they reference exists."""

import re

import torch

from attnsynth.sis import demo_page as sis_demo
from attnsynth.sis.configs import get_config
from attnsynth.sis.model import build_model
from attnsynth.toyworld import demo_page as toy_demo


def _referenced_files_exist(html, out_dir):
    names = re.findall(r'src="([^"]+)"', html)
    assert names, "section references no figure"
    for name in names:
        assert (out_dir / name).is_file(), name
    return names


def test_toyworld_section(tmp_path):
    html = toy_demo.render(tmp_path)
    names = _referenced_files_exist(html, tmp_path)
    assert any(n.startswith("faces_") for n in names) and any(n.startswith("shapes_") for n in names)
    assert "style err" in html and "oracle:" in html


def test_sis_section_on_a_saved_small_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_config("small", num_classes=19, resolution=32))
    model.save_pretrained(tmp_path / "ckpt")
    html = sis_demo.render(tmp_path / "out", checkpoint=tmp_path / "ckpt", pairs=1)
    names = _referenced_files_exist(html, tmp_path / "out")
    assert {"sis_0_recon.png", "sis_0_hair.png", "sis_0_swap.png", "sis_0_att_hair.png"} <= set(names)
    assert re.search(r"transfer acc \d\.\d\d", html)


def test_t2i_section_on_a_tiny_pipeline(tmp_path):
    from attnsynth.shapes_t2i import demo_page as t2i_demo
    from attnsynth.t2i.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.attnsynth_defaults = {"num_inference_steps": 4, "guided_steps": 2, "step_size": 20.0}
    prompts = t2i_demo.demo_prompts((2,))
    assert prompts == t2i_demo.demo_prompts((2,))  # a rule, not a pick: the first validation prompt
    html = t2i_demo.render(tmp_path, pipe=pipe, prompts=prompts, seeds=(0,), concept=None)
    names = _referenced_files_exist(html, tmp_path)
    assert {"t2i_0_none.png", "t2i_0_attend-excite.png", "t2i_0_ait2i.png", "t2i_0_attention.png",
            "t2i_layout_none.png", "t2i_layout_layout+ait2i.png"} <= set(names)
    assert "unguided" in html and "AI-T2I" in html and "Attend-and-Excite" in html and "box IoU" in html


def test_draw_boxes_outlines_each_box():
    import numpy as np

    from attnsynth.shapes_t2i.demo_page import SCALE, draw_boxes

    image = np.full((16, 16, 3), 255, np.uint8)
    drawn = draw_boxes(image, {"circle": (0.0, 0.0, 0.5, 0.5)})
    assert drawn.shape == (16 * SCALE, 16 * SCALE, 3)
    assert tuple(drawn[10, 0]) != (255, 255, 255) and tuple(drawn[40, 40]) == (255, 255, 255)  # the edge is drawn, outside is not


def test_shipped_sis_checkpoint_loads_offline_and_uses_the_given_style():
    import numpy as np

    from attnsynth.metrics import psnr
    from attnsynth.sis import edits
    from attnsynth.toyworld import faces
    from attnsynth.utils.images import from_uint8

    model, label_set = edits.load_model(sis_demo.TOY_CHECKPOINT)
    assert model.config.arch == "ca2sis" and model.config.resolution == (64, 64)
    assert label_set.resolve("eyes") == label_set.resolve("l_eye,r_eye")  # edit presets ship with it
    scenes = [faces.render(sis_demo.HELD_OUT_SEED + k, 64) for k in range(4)]
    images = torch.stack([from_uint8(s.image) for s in scenes])
    labels = torch.stack([torch.from_numpy(s.labels.astype(np.int64)) for s in scenes])
    recon = edits.reconstruct(model, images, labels).images
    # every held-out face is reconstructed closer to itself than to another face
    assert bool((psnr(recon, images) > psnr(recon, images.roll(1, 0))).all())


def test_attention_steps_figure_shows_the_spread_of_sharp_maps():
    import numpy as np
    import pytest

    from attnsynth.t2i.figures import attention_steps_figure
    from attnsynth.t2i.subjects import SubjectGroup

    maps = torch.zeros(2, 4, 4, 3)
    maps[:, 0, 0, 1], maps[:, 1, 1, 1] = 0.81, 0.01  # one strong cell, one weak one (ratio 81, 9 after sqrt)
    runs = {"run": (np.zeros((8, 8, 3), np.uint8), maps)}
    group = [SubjectGroup(name="cat", token_indices=(1,))]
    linear = attention_steps_figure(runs, group, cell=4, gamma=1.0, overlay=0.0)
    root = attention_steps_figure(runs, group, cell=4, gamma=0.5, overlay=0.0)
    weak = (16 + 1, 150 + 4 + 1)  # the weak cell of the first step column
    assert root[weak].sum() > linear[weak].sum()  # the weak cell is visible with gamma 0.5
    with pytest.raises(ValueError, match="gamma"):
        attention_steps_figure(runs, group, gamma=0.0)
    white = {"run": (np.full((8, 8, 3), 255, np.uint8), maps)}  # the image shows through where the map is 0
    over = attention_steps_figure(white, group, cell=4, overlay=0.4)
    assert tuple(over[16 + 3, 150 + 4 + 3]) == (102, 102, 104) and tuple(root[16 + 3, 150 + 4 + 3]) == (0, 0, 4)


def test_t2i_personalisation_row_uses_the_shipped_concept(tmp_path):
    from attnsynth.shapes_t2i import demo_page as t2i_demo
    from attnsynth.shapes_t2i import load_t2i_pipeline
    from attnsynth.shapes_t2i.personalize import PLACEHOLDER, load_concept

    pipe = load_concept(load_t2i_pipeline(), t2i_demo.CONCEPT_DIR, PLACEHOLDER)
    assert PLACEHOLDER in pipe.tokenizer.get_vocab()
    html = t2i_demo._personalisation_row(pipe, tmp_path, seed=0)
    assert set(_referenced_files_exist(html, tmp_path)) == {"t2i_concept_none.png", "t2i_concept_ait2i.png"}
    assert "&lt;heart&gt;" in html and "known shapes" in html
