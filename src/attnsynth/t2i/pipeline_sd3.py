"""Attention-guided Stable Diffusion 3 / 3.5 (MMDiT): AI-T2I, Attend-and-Excite, Divide & Bind, layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps

from attnsynth.t2i.guidance import prompt_batch_size
from attnsynth.t2i.mmdit import check_joint_guidance_inputs, plan_stream_subjects, prepare_joint_guidance, text_segments
from attnsynth.t2i.subjects import TextStreamGroup

__all__ = ["AttentionGuidedStableDiffusion3Pipeline", "AttentionGuidedStableDiffusion3PipelineOutput"]


@dataclass
class AttentionGuidedStableDiffusion3PipelineOutput(StableDiffusion3PipelineOutput):
    """diffusers' SD3 output plus the guidance record.

    losses: ``{part: Tensor [guided steps, B]}`` (``"total"`` included), None without guidance.
    attention_maps: ``Tensor [steps, B, h, w, T]`` of the conditional rows, T = the text stream
        (77 CLIP rows, then ``max_sequence_length`` T5 rows), when requested.
    subjects: each prompt's groups in text-stream rows (a word's CLIP and T5 rows together).
    """

    losses: dict[str, torch.Tensor] | None = None
    attention_maps: torch.Tensor | None = None
    subjects: list[tuple[TextStreamGroup, ...]] | None = None


class AttentionGuidedStableDiffusion3Pipeline(StableDiffusion3Pipeline):
    """``StableDiffusion3Pipeline`` (SD3, SD3.5) with test-time attention guidance of the latents.

    Build it with ``from_pretrained(path_or_id)`` or ``from_pipe(pipe)`` (LoRA weights loaded with
    ``load_lora_weights`` stay). With ``method=None`` the output equals ``StableDiffusion3Pipeline``'s
    bit for bit for the same seed; the capture never changes a block's output, so the ordinary
    denoising steps of a guided run are the plain pipeline's too.

    The maps are image-query × text-key joint-attention probabilities (softmax over all keys),
    averaged over heads and ``attention_blocks`` (default: every joint block, as FOCUS). The
    guided update runs the conditional branch only, stopped after the last captured block, and
    moves the latent ``z ← z − α_i ∇_z L`` before the step's ordinary CFG prediction, with the
    flow-matching schedule of :func:`attnsynth.t2i.mmdit.flow_matching_schedule`.

    Not supported here (use the plain pipeline): IP-Adapter images, skip-layer guidance, and a
    ``prompt_2``/``prompt_3`` different from ``prompt`` together with guidance.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 256,
        mu: float | None = None,
        *,
        subjects: Any = None,
        method: str | None = None,
        guided_steps: int | None = None,
        step_size: float | None = None,
        refine_thresholds: Mapping[int, float] | None = None,
        attention_res: tuple[int, int] | None = None,
        attention_blocks: Sequence[str] | None = None,
        boxes: Any = None,
        loss_weights: Mapping[str, float] | None = None,
        return_attention_maps: bool = False,
    ) -> AttentionGuidedStableDiffusion3PipelineOutput | tuple:
        """Generate images; the arguments after ``*`` steer the joint attention.

        subjects, method, guided_steps, step_size, refine_thresholds, boxes, loss_weights: as
            ``AttentionGuidedStableDiffusionPipeline`` (schedule defaults fitted to flow matching).
        attention_res: map grid ``(h, w)`` dividing the image-token grid; None → the token grid
            halved ((H/32, W/32) for SD3's VAE and 2×2 patches).
        attention_blocks: joint blocks to read, e.g. ``["transformer_blocks.10.attn"]``; None → all.
        return_attention_maps: also return every step's conditional maps ``[steps, B, h, w, T]``.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)

        # 0. Default size, the image-token grid and the text stream's layout.
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        grid = (height // self.vae_scale_factor // self.patch_size, width // self.vae_scale_factor // self.patch_size)
        segments = text_segments(
            clip_tokenizer=self.tokenizer,
            clip_rows=self.tokenizer_max_length,
            t5_tokenizer=self.tokenizer_3 if self.text_encoder_3 is not None else None,
            t5_rows=max_sequence_length,
        )
        text_tokens = self.tokenizer_max_length + (max_sequence_length if self.text_encoder_3 is not None else self.tokenizer_max_length)

        # 1. Check inputs, the guidance arguments included, before any compute.
        self.check_inputs(
            prompt,
            prompt_2,
            prompt_3,
            height,
            width,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
        )
        if method is not None and any(p is not None and p != prompt for p in (prompt_2, prompt_3)):
            raise ValueError("prompt_2/prompt_3 differ from prompt; attention guidance resolves subjects in one prompt for all encoders")
        check_joint_guidance_inputs(
            method=method,
            prompt=prompt,
            subjects=subjects,
            segments=segments,
            transformer=self.transformer,
            grid=grid,
            text_tokens=text_tokens,
            num_inference_steps=num_inference_steps,
            guided_steps=guided_steps,
            step_size=step_size,
            refine_thresholds=refine_thresholds,
            attention_res=attention_res,
            attention_blocks=attention_blocks,
            boxes=boxes,
            loss_weights=loss_weights,
            return_attention_maps=return_attention_maps,
        )
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._joint_attention_kwargs = joint_attention_kwargs
        self._interrupt = False

        # 2. Call parameters.
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        device = self._execution_device
        num_images = batch_size * num_images_per_prompt

        # 3. Encode the prompt; with CFG the batch is [unconditional, conditional].
        lora_scale = joint_attention_kwargs.get("scale") if joint_attention_kwargs else None
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            prompt_3=prompt_3,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            device=device,
            clip_skip=self.clip_skip,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
            lora_scale=lora_scale,
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
            pooled_prompt_embeds = torch.cat([negative_pooled_prompt_embeds, pooled_prompt_embeds], dim=0)
        cond_rows = slice(num_images, 2 * num_images) if self.do_classifier_free_guidance else slice(0, num_images)

        # 4. Subjects → text-stream rows (CLIP and T5 rows of each word together).
        prompts = plan_stream_subjects(
            method=method, prompt=prompt, subjects=subjects, segments=segments, boxes=boxes, images_per_prompt=num_images_per_prompt
        )

        # 5. Initial latents.
        latents = self.prepare_latents(
            num_images, self.transformer.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents
        )

        # 6. Timesteps (resolution-dependent shift where the scheduler asks for it).
        scheduler_kwargs = {}
        if self.scheduler.config.get("use_dynamic_shifting", None) and mu is None:
            image_seq_len = grid[0] * grid[1]
            mu = calculate_shift(
                image_seq_len,
                self.scheduler.config.get("base_image_seq_len", 256),
                self.scheduler.config.get("max_image_seq_len", 4096),
                self.scheduler.config.get("base_shift", 0.5),
                self.scheduler.config.get("max_shift", 1.16),
            )
        if mu is not None:
            scheduler_kwargs["mu"] = mu
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, sigmas=sigmas, **scheduler_kwargs)
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        self._num_timesteps = len(timesteps)

        # 7. The guidance run (capture installed only when guidance or maps are wanted).
        run = prepare_joint_guidance(
            method=method,
            transformer=self.transformer,
            grid=grid,
            text_tokens=prompt_embeds.shape[1],
            num_timesteps=len(timesteps),
            prompts=prompts,
            num_images=num_images,
            guided_steps=guided_steps,
            step_size=step_size,
            refine_thresholds=refine_thresholds,
            attention_res=attention_res,
            attention_blocks=attention_blocks,
            loss_weights=loss_weights,
            return_attention_maps=return_attention_maps,
        )

        # 8. Denoising loop: {guided latent update; classifier-free-guided flow-matching step}.
        with run, self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                # 8a. Guided update of the latents (enable_grad inside, conditional rows only).
                def conditional_forward(z: torch.Tensor) -> None:
                    self.transformer(
                        hidden_states=z,
                        timestep=t.expand(z.shape[0]),
                        encoder_hidden_states=prompt_embeds[cond_rows],
                        pooled_projections=pooled_prompt_embeds[cond_rows],
                        joint_attention_kwargs=self.joint_attention_kwargs,
                        return_dict=False,
                    )

                latents = run.update(latents, i, conditional_forward)

                # 8b. Ordinary step, exactly as StableDiffusion3Pipeline takes it.
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                with run.denoising_pass(cond_rows):
                    noise_pred = self.transformer(
                        hidden_states=latent_model_input,
                        timestep=t.expand(latent_model_input.shape[0]),
                        encoder_hidden_states=prompt_embeds,
                        pooled_projections=pooled_prompt_embeds,
                        joint_attention_kwargs=self.joint_attention_kwargs,
                        return_dict=False,
                    )[0]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                # 8c. Step-end callback (may replace latents or embeddings).
                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled_prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    pooled_prompt_embeds = outputs.pop("pooled_prompt_embeds", pooled_prompt_embeds)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 9. Decode and post-process.
        if output_type == "latent":
            image = latents
        else:
            latents = (latents / self.vae.config.scaling_factor) + self.vae.config.shift_factor
            image = self.vae.decode(latents, return_dict=False)[0]
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return AttentionGuidedStableDiffusion3PipelineOutput(
            images=image,
            losses=run.losses(),
            attention_maps=run.attention_maps(),
            subjects=[p.groups for p in prompts] or None,
        )
