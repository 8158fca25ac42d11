"""Attention-guided FLUX.1 (MMDiT): AI-T2I, Attend-and-Excite, Divide & Bind, layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

from attnsynth.t2i.guidance import prompt_batch_size
from attnsynth.t2i.mmdit import check_joint_guidance_inputs, plan_stream_subjects, prepare_joint_guidance, text_segments
from attnsynth.t2i.subjects import TextStreamGroup

__all__ = ["AttentionGuidedFluxPipeline", "AttentionGuidedFluxPipelineOutput"]


@dataclass
class AttentionGuidedFluxPipelineOutput(FluxPipelineOutput):
    """diffusers' FLUX output plus the guidance record.

    losses: ``{part: Tensor [guided steps, B]}`` (``"total"`` included), None without guidance.
    attention_maps: ``Tensor [steps, B, h, w, T]`` of the (conditional) prompt, T = the
        ``max_sequence_length`` T5 rows, when requested.
    subjects: each prompt's groups in T5 rows (row 0 is the prompt's first token: T5 has no BOS).
    """

    losses: dict[str, torch.Tensor] | None = None
    attention_maps: torch.Tensor | None = None
    subjects: list[tuple[TextStreamGroup, ...]] | None = None


class AttentionGuidedFluxPipeline(FluxPipeline):
    """``FluxPipeline`` with test-time attention guidance of the (packed) latents.

    Build it with ``from_pretrained(path_or_id)`` or ``from_pipe(pipe)`` (LoRA weights loaded with
    ``load_lora_weights`` stay). With ``method=None`` the output equals ``FluxPipeline``'s bit for
    bit for the same seed. The maps are image-query × T5-key joint-attention probabilities
    (softmax over all keys, after FLUX's q/k norms and rotary embedding), averaged over heads and
    ``attention_blocks`` — by default the double-stream blocks (as FOCUS), so a guided forward
    pass stops before the single-stream blocks. The guided update runs the prompt's forward pass,
    then moves the latent ``z ← z − α_i ∇_z L`` before the step's ordinary prediction, with the
    flow-matching schedule of :func:`attnsynth.t2i.mmdit.flow_matching_schedule`.

    Not supported here (use the plain pipeline): IP-Adapter images, and a ``prompt_2`` different
    from ``prompt`` together with guidance.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        true_cfg_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 3.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 512,
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
    ) -> AttentionGuidedFluxPipelineOutput | tuple:
        """Generate images; the arguments after ``*`` steer the joint attention.

        subjects, method, guided_steps, step_size, refine_thresholds, boxes, loss_weights: as
            ``AttentionGuidedStableDiffusionPipeline`` (schedule defaults fitted to flow matching).
        attention_res: map grid ``(h, w)`` dividing the image-token grid; None → the token grid
            halved ((H/32, W/32) for FLUX's VAE and 2×2 packing).
        attention_blocks: joint blocks to read, e.g. ``["single_transformer_blocks.0.attn"]``;
            None → every double-stream block.
        return_attention_maps: also return every step's prompt maps ``[steps, B, h, w, T]``.
        """
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)

        # 0. Default size and the image-token grid (packed 2×2 latent patches).
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        grid = (height // (self.vae_scale_factor * 2), width // (self.vae_scale_factor * 2))
        segments = text_segments(clip_tokenizer=None, clip_rows=0, t5_tokenizer=self.tokenizer_2, t5_rows=max_sequence_length)

        # 1. Check inputs, the guidance arguments included, before any compute.
        self.check_inputs(
            prompt,
            prompt_2,
            height,
            width,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
        )
        if method is not None and prompt_2 is not None and prompt_2 != prompt:
            raise ValueError("prompt_2 differs from prompt; attention guidance resolves subjects in the T5 prompt, pass it as prompt")
        check_joint_guidance_inputs(
            method=method,
            prompt=prompt,
            subjects=subjects,
            segments=segments,
            transformer=self.transformer,
            grid=grid,
            text_tokens=max_sequence_length,
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
        self._joint_attention_kwargs = joint_attention_kwargs or {}
        self._current_timestep = None
        self._interrupt = False

        # 2. Call parameters.
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        device = self._execution_device
        num_images = batch_size * num_images_per_prompt

        # 3. Encode the prompt (and the negative prompt for true CFG).
        lora_scale = self.joint_attention_kwargs.get("scale")
        do_true_cfg = true_cfg_scale > 1 and (negative_prompt is not None or negative_prompt_embeds is not None)
        prompt_embeds, pooled_prompt_embeds, text_ids = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
            lora_scale=lora_scale,
        )
        if do_true_cfg:
            negative_prompt_embeds, negative_pooled_prompt_embeds, negative_text_ids = self.encode_prompt(
                prompt=negative_prompt,
                prompt_2=negative_prompt_2,
                prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=negative_pooled_prompt_embeds,
                device=device,
                num_images_per_prompt=num_images_per_prompt,
                max_sequence_length=max_sequence_length,
                lora_scale=lora_scale,
            )

        # 4. Subjects → T5 rows.
        prompts = plan_stream_subjects(
            method=method, prompt=prompt, subjects=subjects, segments=segments, boxes=boxes, images_per_prompt=num_images_per_prompt
        )

        # 5. Initial (packed) latents and their position ids.
        latents, latent_image_ids = self.prepare_latents(
            num_images, self.transformer.config.in_channels // 4, height, width, prompt_embeds.dtype, device, generator, latents
        )

        # 6. Timesteps (resolution-dependent shift) and the distilled guidance embedding.
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas
        if getattr(self.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(
            latents.shape[1],
            self.scheduler.config.get("base_image_seq_len", 256),
            self.scheduler.config.get("max_image_seq_len", 4096),
            self.scheduler.config.get("base_shift", 0.5),
            self.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        self._num_timesteps = len(timesteps)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(latents.shape[0])

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

        # 8. Denoising loop: {guided latent update; flow-matching step (true CFG if asked)}.
        self.scheduler.set_begin_index(0)
        with run, self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                timestep = t.expand(latents.shape[0]).to(latents.dtype)

                def predict(z: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
                    return self.transformer(
                        hidden_states=z,
                        timestep=timestep / 1000,
                        guidance=guidance,
                        pooled_projections=pooled,
                        encoder_hidden_states=embeds,
                        txt_ids=ids,
                        img_ids=latent_image_ids,
                        joint_attention_kwargs=self.joint_attention_kwargs,
                        return_dict=False,
                    )[0]

                # 8a. Guided update of the latents (enable_grad inside), on the prompt's prediction.
                latents = run.update(latents, i, lambda z: predict(z, prompt_embeds, pooled_prompt_embeds, text_ids))

                # 8b. Ordinary step, exactly as FluxPipeline takes it.
                with self.transformer.cache_context("cond"), run.denoising_pass(slice(None)):
                    noise_pred = predict(latents, prompt_embeds, pooled_prompt_embeds, text_ids)
                if do_true_cfg:
                    with self.transformer.cache_context("uncond"):
                        neg_noise_pred = predict(latents, negative_prompt_embeds, negative_pooled_prompt_embeds, negative_text_ids)
                    noise_pred = neg_noise_pred + true_cfg_scale * (noise_pred - neg_noise_pred)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                # 8c. Step-end callback (may replace latents or embeddings).
                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()
        self._current_timestep = None

        # 9. Unpack, decode and post-process.
        if output_type == "latent":
            image = latents
        else:
            latents = self._unpack_latents(latents, height, width, self.vae_scale_factor)
            latents = (latents / self.vae.config.scaling_factor) + self.vae.config.shift_factor
            image = self.vae.decode(latents, return_dict=False)[0]
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return AttentionGuidedFluxPipelineOutput(
            images=image,
            losses=run.losses(),
            attention_maps=run.attention_maps(),
            subjects=[p.groups for p in prompts] or None,
        )
