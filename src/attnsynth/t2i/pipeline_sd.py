"""Attention-guided Stable Diffusion 1.x/2.x: AI-T2I, Attend-and-Excite, Divide & Bind, layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from diffusers import StableDiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg, retrieve_timesteps

from attnsynth.t2i.guidance import check_guidance_inputs, plan_subjects, prepare_guidance, prompt_batch_size
from attnsynth.t2i.subjects import SubjectGroup

__all__ = ["AttentionGuidedStableDiffusionPipeline", "AttentionGuidedStableDiffusionPipelineOutput"]


@dataclass
class AttentionGuidedStableDiffusionPipelineOutput(StableDiffusionPipelineOutput):
    """diffusers' SD output plus the guidance record.

    losses: ``{part: Tensor [guided steps, B]}`` (``"total"`` included), None without guidance.
    attention_maps: ``Tensor [steps, B, h, w, T]`` of the conditional branch, when requested.
    subjects: the resolved subject groups of each prompt.
    """

    losses: dict[str, torch.Tensor] | None = None
    attention_maps: torch.Tensor | None = None
    subjects: list[tuple[SubjectGroup, ...]] | None = None


class AttentionGuidedStableDiffusionPipeline(StableDiffusionPipeline):
    """``StableDiffusionPipeline`` with test-time attention guidance of the latents.

    Build it like any diffusers pipeline — ``from_pretrained(path_or_id)`` or ``from_pipe(pipe)``
    (so textual-inversion / LoRA-personalised pipelines keep their weights). With ``method=None``
    the output equals ``StableDiffusionPipeline``'s bit for bit for the same seed.

    ``method="attend-excite"`` reproduces diffusers' ``StableDiffusionAttendAndExcitePipeline``
    (same losses, step sizes ``α_i = step_size·√linspace(1, 0.5, len(timesteps))_i``, refinement and
    order of guided update and CFG step), with these deliberate differences:

    * probabilities are computed only on the cross-attention layers at ``attention_res``; every
      other layer keeps its SDPA processor, and the guided forward pass stops after the last
      layer the loss reads (backpropagating only through that part; no parameter gradients);
    * images are guided as one batch (A&E loops over images), each refining on its own;
    * the guided pass sees ``scheduler.scale_model_input(z, t)`` (identical for PNDM/DDIM; A&E
      feeds the unscaled latent, which is wrong for Euler/LMS schedulers);
    * no guided pass at steps that neither update nor refine, and no repeated forward pass at
      the first refinement iteration (A&E recomputes the loss it already has);
    * ``attention_res=None`` derives (H/32, W/32) from the latent (A&E defaults to 16×16);
    * subjects are words resolved to token groups (multi-token words, synonyms) instead of token
      indices.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
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
    ) -> AttentionGuidedStableDiffusionPipelineOutput | tuple:
        """Generate images; the arguments after ``*`` steer the cross-attention.

        subjects: words of the prompt to guide — ``["cat", "dog"]``, synonym groups
            ``[["cat", "kitten"], "dog"]``, ``"auto"``; for a list of prompts, one entry per prompt.
        method: ``"ait2i"``, ``"attend-excite"``, ``"divide-bind"``, ``"layout"`` or None (plain SD).
        guided_steps, step_size, refine_thresholds: the schedule; None keeps the method's default
            (``attnsynth.t2i.schedule.METHOD_DEFAULTS``: 25 steps, 20.0 for ait2i); ``{}`` = no refinement.
        attention_res: map grid ``(h, w)``; None → (H/32, W/32) (16×16 at 512²).
        boxes: ``{subject: (x0, y0, x1, y1)}`` in [0, 1] for ``method="layout"``.
        loss_weights: overrides of ``attnsynth.t2i.losses.DEFAULT_WEIGHTS[method]``.
        token_softmax: tokens of the excitation softmax: ``"all"`` (the authors' ``[1:-1]``) or the
            variant ``"prompt"`` (the prompt's own tokens); see ``attnsynth.t2i.guidance.TOKEN_SOFTMAX``.
        return_attention_maps: also return every step's conditional maps ``[steps, B, h, w, T]``.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)

        # 0. Default height and width to the UNet's sample size.
        sample = self.unet.config.sample_size
        sample = (sample, sample) if isinstance(sample, int) else tuple(sample)
        if not height or not width:
            height, width = sample[0] * self.vae_scale_factor, sample[1] * self.vae_scale_factor
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)

        # 1. Check inputs, the guidance arguments included, before any compute.
        self.check_inputs(
            prompt,
            height,
            width,
            None,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
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
        self._interrupt = False

        # 2. Call parameters.
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        device = self._execution_device
        num_images = batch_size * num_images_per_prompt

        # 3. Encode the prompt; with CFG the batch is [unconditional, conditional].
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs else None
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=self.clip_skip,
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        cond_rows = slice(num_images, 2 * num_images) if self.do_classifier_free_guidance else slice(0, num_images)

        # 4. Subjects → token groups (on the prompt as the text encoder sees it).
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

        # 7. Scheduler kwargs, optional guidance-scale embedding, and the guidance run.
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
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
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        self._num_timesteps = len(timesteps)
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
                        return_dict=False,
                    )[0]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                    if self.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                # 8c. Step-end callback (may replace latents or embeddings).
                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 9. Decode, safety check, post-process.
        if output_type != "latent":
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
        else:
            image, has_nsfw_concept = latents, None
        do_denormalize = [True] * image.shape[0] if has_nsfw_concept is None else [not nsfw for nsfw in has_nsfw_concept]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
        self.maybe_free_model_hooks()

        if not return_dict:
            return image, has_nsfw_concept
        return AttentionGuidedStableDiffusionPipelineOutput(
            images=image,
            nsfw_content_detected=has_nsfw_concept,
            losses=run.losses(),
            attention_maps=run.attention_maps(),
            subjects=[p.groups for p in prompts] or None,
        )
