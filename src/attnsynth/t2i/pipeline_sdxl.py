"""Attention-guided Stable Diffusion XL: AI-T2I, Attend-and-Excite, Divide & Bind, layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg, retrieve_timesteps
from diffusers.utils.torch_utils import get_module_execution_device

from attnsynth.t2i.guidance import check_guidance_inputs, plan_subjects, prepare_guidance, prompt_batch_size
from attnsynth.t2i.subjects import SubjectGroup

__all__ = ["AttentionGuidedStableDiffusionXLPipeline", "AttentionGuidedStableDiffusionXLPipelineOutput"]


@dataclass
class AttentionGuidedStableDiffusionXLPipelineOutput(StableDiffusionXLPipelineOutput):
    """diffusers' SDXL output plus the guidance record (see the SD pipeline's output)."""

    losses: dict[str, torch.Tensor] | None = None
    attention_maps: torch.Tensor | None = None
    subjects: list[tuple[SubjectGroup, ...]] | None = None


class AttentionGuidedStableDiffusionXLPipeline(StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` with test-time attention guidance of the latents.

    Same guidance as :class:`~attnsynth.t2i.pipeline_sd.AttentionGuidedStableDiffusionPipeline`
    (see its notes on Attend-and-Excite). SDXL specifics: subjects are located with the first
    tokenizer on ``prompt`` (both text encoders see the same token positions; a different
    ``prompt_2`` only changes the features at those positions), and the default map grid is
    (H/32, W/32) — 32×32 at 1024², the lowest-resolution cross-attention level of SDXL's UNet
    (down_blocks.2, the mid block and up_blocks.0). With ``method=None`` the output equals
    ``StableDiffusionXLPipeline``'s bit for bit. IP-Adapter inputs are not supported.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        *,
        subjects: Any = None,
        method: str | None = None,
        guided_steps: int | None = None,
        step_size: float | None = None,
        refine_thresholds: Mapping[int, float] | None = None,
        attention_res: tuple[int, int] | None = None,
        boxes: Any = None,
        loss_weights: Mapping[str, float] | None = None,
        token_softmax: str = "all",
        return_attention_maps: bool = False,
    ) -> AttentionGuidedStableDiffusionXLPipelineOutput | tuple:
        """Generate images; the arguments after ``*`` steer the cross-attention (as in the SD pipeline)."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)

        # 0. Default height, width and micro-conditioning sizes.
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)

        # 1. Check inputs, the guidance arguments included, before any compute.
        self.check_inputs(
            prompt,
            prompt_2,
            height,
            width,
            None,
            negative_prompt,
            negative_prompt_2,
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
            None,
            None,
            callback_on_step_end_tensor_inputs,
        )
        check_guidance_inputs(
            method=method,
            prompt=prompt,
            subjects=subjects,
            tokenizer=self.tokenizer,
            unet=self.unet,
            latent_size=latent_size,
            num_inference_steps=num_inference_steps,
            guided_steps=guided_steps,
            step_size=step_size,
            refine_thresholds=refine_thresholds,
            attention_res=attention_res,
            boxes=boxes,
            loss_weights=loss_weights,
            return_attention_maps=return_attention_maps,
            token_softmax=token_softmax,
        )
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = denoising_end
        self._interrupt = False

        # 2. Call parameters.
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        device = self._execution_device
        num_images = batch_size * num_images_per_prompt

        # 3. Encode the prompt with both text encoders.
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs else None
        (
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
        ) = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=self.clip_skip,
        )

        # 4. Subjects → token groups (first tokenizer, prompt as the text encoder sees it).
        prompts = plan_subjects(
            method=method,
            prompt=self.maybe_convert_prompt(prompt, self.tokenizer) if prompt is not None else None,
            subjects=subjects,
            tokenizer=self.tokenizer,
            boxes=boxes,
            images_per_prompt=num_images_per_prompt,
            token_softmax=token_softmax,
        )

        # 5. Timesteps.
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)

        # 6. Initial latents.
        latents = self.prepare_latents(
            num_images,
            self.unet.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )

        # 7. Scheduler kwargs, SDXL's added conditioning ([unconditional, conditional] with CFG).
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        add_text_embeds = pooled_prompt_embeds
        if self.text_encoder_2 is None:
            text_encoder_projection_dim = int(pooled_prompt_embeds.shape[-1])
        else:
            text_encoder_projection_dim = self.text_encoder_2.config.projection_dim
        add_time_ids = self._get_add_time_ids(
            original_size,
            crops_coords_top_left,
            target_size,
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=text_encoder_projection_dim,
        )
        if negative_original_size is not None and negative_target_size is not None:
            negative_add_time_ids = self._get_add_time_ids(
                negative_original_size,
                negative_crops_coords_top_left,
                negative_target_size,
                dtype=prompt_embeds.dtype,
                text_encoder_projection_dim=text_encoder_projection_dim,
            )
        else:
            negative_add_time_ids = add_time_ids
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
            add_text_embeds = torch.cat([negative_pooled_prompt_embeds, add_text_embeds], dim=0)
            add_time_ids = torch.cat([negative_add_time_ids, add_time_ids], dim=0)
        prompt_embeds = prompt_embeds.to(device)
        add_text_embeds = add_text_embeds.to(device)
        add_time_ids = add_time_ids.to(device).repeat(num_images, 1)
        cond_rows = slice(num_images, 2 * num_images) if self.do_classifier_free_guidance else slice(0, num_images)

        # 7.1 Denoising end, guidance-scale embedding, and the guidance run.
        if self.denoising_end is not None and isinstance(self.denoising_end, float) and 0 < self.denoising_end < 1:
            train_steps = self.scheduler.config.num_train_timesteps
            cutoff = int(round(train_steps - self.denoising_end * train_steps))
            num_inference_steps = len([ts for ts in timesteps if ts >= cutoff])
            timesteps = timesteps[:num_inference_steps]
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(self.guidance_scale - 1).repeat(num_images)
            timestep_cond = self.get_guidance_scale_embedding(scale, embedding_dim=self.unet.config.time_cond_proj_dim)
            timestep_cond = timestep_cond.to(device=device, dtype=latents.dtype)
        run = prepare_guidance(
            method=method,
            unet=self.unet,
            latent_size=latent_size,
            num_timesteps=len(timesteps),
            prompts=prompts,
            guided_steps=guided_steps,
            step_size=step_size,
            refine_thresholds=refine_thresholds,
            attention_res=attention_res,
            loss_weights=loss_weights,
            return_attention_maps=return_attention_maps,
        )

        # 8. Denoising loop: {guided latent update; classifier-free-guided denoising step}.
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        self._num_timesteps = len(timesteps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        with run, self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                # 8a. Guided update of the latents (enable_grad inside, conditional branch only).
                def conditional_forward(z: torch.Tensor) -> None:
                    self.unet(
                        self.scheduler.scale_model_input(z, t),
                        t,
                        encoder_hidden_states=prompt_embeds[cond_rows],
                        timestep_cond=timestep_cond,
                        cross_attention_kwargs=self.cross_attention_kwargs,
                        added_cond_kwargs={"text_embeds": add_text_embeds[cond_rows], "time_ids": add_time_ids[cond_rows]},
                        return_dict=False,
                    )

                latents = run.update(latents, i, conditional_forward)

                # 8b. Ordinary denoising step with classifier-free guidance.
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                with run.denoising_pass(cond_rows):
                    noise_pred = self.unet(
                        latent_model_input,
                        t,
                        encoder_hidden_states=prompt_embeds,
                        timestep_cond=timestep_cond,
                        cross_attention_kwargs=self.cross_attention_kwargs,
                        added_cond_kwargs={"text_embeds": add_text_embeds, "time_ids": add_time_ids},
                        return_dict=False,
                    )[0]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                    if self.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                # 8c. Step-end callback (may replace latents or conditioning).
                if callback_on_step_end is not None:
                    available = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                        "add_text_embeds": add_text_embeds,
                        "add_time_ids": add_time_ids,
                        "negative_pooled_prompt_embeds": negative_pooled_prompt_embeds,
                        "negative_add_time_ids": negative_add_time_ids,
                    }
                    outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    add_text_embeds = outputs.pop("add_text_embeds", add_text_embeds)
                    add_time_ids = outputs.pop("add_time_ids", add_time_ids)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 9. Decode (float32 VAE when it would overflow in float16), watermark, post-process.
        if output_type != "latent":
            image = self._decode(latents)
            if self.watermark is not None:
                image = self.watermark.apply_watermark(image)
            image = self.image_processor.postprocess(image, output_type=output_type)
        else:
            image = latents
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return AttentionGuidedStableDiffusionXLPipelineOutput(
            images=image,
            losses=run.losses(),
            attention_maps=run.attention_maps(),
            subjects=[p.groups for p in prompts] or None,
        )

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images ``[B, 3, H, W]`` in [-1, 1], as ``StableDiffusionXLPipeline`` decodes them."""
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.upcast_vae()
            latents = latents.to(next(iter(self.vae.post_quant_conv.parameters())).dtype)
        mean = getattr(self.vae.config, "latents_mean", None)
        std = getattr(self.vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / self.vae.config.scaling_factor + mean
        else:
            latents = latents / self.vae.config.scaling_factor
        image = self.vae.decode(latents.to(get_module_execution_device(self.vae)), return_dict=False)[0]
        if needs_upcasting:
            self.vae.to(dtype=torch.float16)
        return image
