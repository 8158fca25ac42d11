"""A LoRA-personalised pipeline (diffusers' ``load_lora_weights``, peft) runs through the guided pipeline.

The LoRA is made here with peft on the tiny test UNet (random, non-zero B so it changes the
output), saved in diffusers' LoRA format (``pytorch_lora_weights.safetensors``) and loaded back
into a fresh pipeline, as a user would load a DreamBooth-LoRA checkpoint. peft is a test
dependency (pyproject ``[test]``), so this runs in the default suite.
"""

import pytest
import torch

from attnsynth.t2i.pipeline_sd import AttentionGuidedStableDiffusionPipeline
from attnsynth.t2i.testing import tiny_sd_pipeline

PROMPT = "a red cat and a blue dog"
CALL = dict(num_inference_steps=4, guidance_scale=5.0, output_type="np")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = tiny_sd_pipeline(seed=0)
    torch.manual_seed(123)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    pipe.unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    assert layers and all("lora" in key for key in layers)
    directory = tmp_path_factory.mktemp("tiny_lora")
    StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)
    assert (directory / "pytorch_lora_weights.safetensors").is_file()
    return directory


def _generate(pipe, **kwargs):
    return pipe(PROMPT, generator=torch.Generator().manual_seed(7), **CALL, **kwargs)


def test_lora_pipeline_runs_guided_and_differs_from_base(lora_dir):
    base = tiny_sd_pipeline(seed=0, pipeline_class=AttentionGuidedStableDiffusionPipeline)
    lora = tiny_sd_pipeline(seed=0, pipeline_class=AttentionGuidedStableDiffusionPipeline)
    lora.load_lora_weights(lora_dir)
    guide = dict(method="ait2i", subjects=["cat", "dog"], guided_steps=2, step_size=20.0, return_attention_maps=True)
    out_base, out_lora = _generate(base, **guide), _generate(lora, **guide)
    assert abs(out_lora.images - out_base.images).max() > 1e-3  # the LoRA changes the image
    maps = out_lora.attention_maps  # [steps, B, h, w, T]
    assert maps is not None and maps.shape[0] == len(lora.scheduler.timesteps) and torch.isfinite(maps).all()
    assert torch.allclose(maps.sum(-1), torch.ones(()), atol=1e-4)  # softmax over tokens: real probabilities
    assert not torch.allclose(maps, out_base.attention_maps)  # they are the LoRA model's maps
    losses = out_lora.losses["total"]  # [guided steps, B]
    assert losses.shape[0] >= 2 and torch.isfinite(losses).all()


def test_lora_guidance_changes_the_lora_image_and_unguided_matches_diffusers(lora_dir):
    from diffusers import StableDiffusionPipeline

    lora = tiny_sd_pipeline(seed=0, pipeline_class=AttentionGuidedStableDiffusionPipeline)
    lora.load_lora_weights(lora_dir)
    plain = tiny_sd_pipeline(seed=0, pipeline_class=StableDiffusionPipeline)
    plain.load_lora_weights(lora_dir)
    unguided = _generate(lora).images
    assert torch.equal(torch.from_numpy(unguided), torch.from_numpy(_generate(plain).images))  # method=None is plain SD, LoRA included
    guided = _generate(lora, method="attend-excite", subjects=["cat", "dog"], guided_steps=2, step_size=20.0).images
    assert abs(guided - unguided).max() > 1e-4
