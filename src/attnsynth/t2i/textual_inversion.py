"""Textual inversion for any Stable Diffusion 1.x/2.x pipeline: learn one new token embedding.

Gal et al., "An Image is Worth One Word" (ICLR 2023), as diffusers' ``examples/textual_inversion``
trains it: a placeholder token (``"<heart>"``) is added to the tokenizer, its embedding row is
initialised from an existing word's, and only that row is trained with the standard diffusion
noise-prediction loss ``‖ε − ε_θ(z_t, t, c)‖²`` (or the v target) on a few images of the concept,
with the UNet, VAE and the rest of the text encoder frozen.

One deliberate difference in mechanics, not in the function learned: diffusers trains the whole
embedding matrix and copies the old rows back after every step; here the new row is a separate
parameter ``[D]`` spliced into the embedding output by a forward hook wherever the placeholder id
occurs, so the optimizer state is one vector (not vocab × D) and no other row can move.

Named opt-in variant, ``lora_rank > 0`` ("pivotal tuning", as in DreamBooth-LoRA trainers): a
LoRA of that rank on the UNet's attention projections (``to_q/to_k/to_v/to_out.0``, peft) is
trained together with the embedding, for concepts the frozen UNet cannot draw. Prior images
(``prior_images``/``prior_captions``, DreamBooth's prior preservation) then fill half of every
batch so the model keeps what it knew. The LoRA is saved in diffusers' format
(``pytorch_lora_weights.safetensors``, loaded with ``pipe.load_lora_weights(path)``).

The result is saved in diffusers' textual-inversion format — ``learned_embeds.safetensors``
holding ``{placeholder: Tensor [1, D]}`` — so any pipeline loads it with
``pipe.load_textual_inversion(path, token=placeholder)``. Training is deterministic for a seed
(one CPU generator draws batches, timesteps, noise and latent samples) and resumable from its
atomically written checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "EMBEDS_FILE",
    "LORA_FILE",
    "TextualInversionConfig",
    "TextualInversionResult",
    "add_placeholder_token",
    "images_from_folder",
    "save_learned_embeds",
    "train_textual_inversion",
]

#: File name diffusers' textual-inversion script writes and ``load_textual_inversion`` looks for.
EMBEDS_FILE = "learned_embeds.safetensors"
#: File name of diffusers' LoRA weights (``save_lora_weights`` / ``load_lora_weights``).
LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_CHECKPOINT = "checkpoint.safetensors"
_CHECKPOINT_META = "checkpoint.json"


@dataclass(frozen=True)
class TextualInversionConfig:
    """What to learn and how; saved beside the embedding as ``textual_inversion.json``."""

    placeholder: str = "<concept>"  # the new token, written into prompts as is
    initializer: str = "circle"  # an existing single-token word whose embedding starts the new one
    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 5e-3
    weight_decay: float = 1e-2  # AdamW, as diffusers' script
    seed: int = 0
    checkpoint_every: int = 100  # steps between checkpoints (0: only at the end)
    lora_rank: int = 0  # > 0: also train a UNet LoRA of this rank (named variant, module docstring)
    lora_learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.placeholder, str) or not self.placeholder.strip() or any(c.isspace() for c in self.placeholder):
            raise ValueError(f"placeholder must be one word without spaces, e.g. '<heart>', got {self.placeholder!r}")
        if not isinstance(self.initializer, str) or not self.initializer.strip():
            raise ValueError(f"initializer must be an existing word, got {self.initializer!r}")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be an integer >= 0, got {self.checkpoint_every!r}")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"lora_rank must be an integer >= 0 (0: embedding only), got {self.lora_rank!r}")
        if not self.lora_learning_rate > 0:
            raise ValueError(f"lora_learning_rate must be > 0, got {self.lora_learning_rate}")


@dataclass
class TextualInversionResult:
    """The learned embedding ``[D]``, its token id in the pipeline's tokenizer and the loss per step."""

    embedding: torch.Tensor
    token_id: int
    losses: list[float]
    path: Path | None = None
    lora_path: Path | None = None  # the LoRA file of the lora_rank variant


def add_placeholder_token(tokenizer: Any, text_encoder: Any, placeholder: str, initializer: str) -> tuple[int, torch.Tensor]:
    """Add ``placeholder`` to the tokenizer and the text encoder's embeddings: ``(token id, initial row [D])``.

    The new row is a copy of ``initializer``'s (which must be one token). Raises ValueError if the
    placeholder is already a token or the initializer is not a single token.
    """
    if placeholder in tokenizer.get_vocab():
        raise ValueError(f"placeholder {placeholder!r} is already a token of this tokenizer; pick a new one such as '<my-concept>'")
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ValueError(f"initializer {initializer!r} must be a single token, got {len(init_ids)} tokens")
    tokenizer.add_tokens([placeholder])
    token_id = tokenizer.convert_tokens_to_ids(placeholder)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new row is overwritten below
    weight = text_encoder.get_input_embeddings().weight  # [V, D]
    with torch.no_grad():
        weight[token_id] = weight[init_ids[0]]
    return int(token_id), weight[token_id].detach().clone()


def save_learned_embeds(directory: str | Path, placeholder: str, embedding: torch.Tensor) -> Path:
    """Write ``{placeholder: embedding [1, D]}`` to ``directory/learned_embeds.safetensors`` atomically."""
    from safetensors.torch import save_file

    from attnsynth.utils.io import atomic_path

    path = Path(directory) / EMBEDS_FILE
    with atomic_path(path) as tmp:
        save_file({placeholder: embedding.detach().to("cpu", torch.float32).reshape(1, -1).contiguous()}, str(tmp))
    return path


def images_from_folder(directory: str | Path, resolution: int) -> torch.Tensor:
    """Every PNG/JPEG in ``directory`` (sorted by name), centre-cropped square and resized → ``[N, 3, R, R]`` in [-1, 1]."""
    import numpy as np
    from PIL import Image

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"images directory {directory} does not exist")
    files = sorted(f for f in directory.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ValueError(f"images directory {directory} holds no .png/.jpg/.jpeg files")
    arrays = []
    for file in files:
        with Image.open(file) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
            arrays.append(np.asarray(im))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _encode_latents(vae: Any, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``[N, C, h, w]`` of the VAE posterior of every image (frozen VAE: done once)."""
    means, stds = [], []
    for start in range(0, images.shape[0], batch_size):
        dist = vae.encode(images[start : start + batch_size].to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def _save_checkpoint(directory: Path, step: int, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, losses: list[float], config: TextualInversionConfig) -> None:
    """Everything needed to continue bit for bit: the trained tensors, AdamW moments, the generator state, the losses."""
    from safetensors.torch import save_file

    from attnsynth.utils.io import atomic_path, atomic_write_json

    tensors = {"generator_state": generator.get_state()}
    adam_steps = {}
    for name, param in params.items():
        tensors[f"param/{name}"] = param.detach().cpu().contiguous()
        state = optimizer.state.get(param)
        if state:
            tensors[f"exp_avg/{name}"] = state["exp_avg"].cpu().contiguous()
            tensors[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].cpu().contiguous()
            adam_steps[name] = float(state["step"])
    with atomic_path(directory / _CHECKPOINT) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(directory / _CHECKPOINT_META, {"step": step, "adam_steps": adam_steps, "losses": losses, "config": asdict(config)})


def _load_checkpoint(directory: Path, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, config: TextualInversionConfig) -> tuple[int, list[float]]:
    """Restore a checkpoint written by :func:`_save_checkpoint`; returns ``(step, losses)``."""
    from safetensors.torch import load_file

    from attnsynth.utils.io import read_json

    meta = read_json(directory / _CHECKPOINT_META, "textual-inversion checkpoint")
    saved = dict(meta.get("config", {}))
    mine = asdict(config)
    changed = sorted(k for k in mine if k not in ("steps", "checkpoint_every") and saved.get(k) != mine[k])
    if changed:
        raise ValueError(f"{directory}: its checkpoint was trained with other settings ({', '.join(changed)}); "
                         "use a new output directory or the same settings to resume")
    tensors = load_file(str(directory / _CHECKPOINT))
    generator.set_state(tensors["generator_state"])
    for name, param in params.items():
        with torch.no_grad():
            param.copy_(tensors[f"param/{name}"].to(param.device, param.dtype))
        if name in meta["adam_steps"]:
            optimizer.state[param] = {
                "step": torch.tensor(meta["adam_steps"][name]),
                "exp_avg": tensors[f"exp_avg/{name}"].to(param.device),
                "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].to(param.device),
            }
    return int(meta["step"]), list(meta["losses"])


def _add_lora(unet: Any, rank: int, seed: int) -> dict[str, torch.nn.Parameter]:
    """Add a peft LoRA (rank ``rank``, alpha = rank, B = 0 so training starts from the model) to the UNet's attention."""
    from peft import LoraConfig

    torch.manual_seed(seed)  # peft draws the A matrices from torch's global generator
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)))
    return {name: param for name, param in unet.named_parameters() if "lora_" in name}


def _save_lora(directory: Path, unet: Any) -> Path:
    """The UNet's LoRA in diffusers' format, written atomically."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from attnsynth.utils.io import atomic_directory

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    staging = directory / ".lora"
    with atomic_directory(staging, overwrite=True) as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
    (staging / LORA_FILE).replace(directory / LORA_FILE)
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    return directory / LORA_FILE


def train_textual_inversion(
    pipe: Any,
    images: torch.Tensor,
    captions: Sequence[str],
    config: TextualInversionConfig,
    *,
    prior_images: torch.Tensor | None = None,
    prior_captions: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TextualInversionResult:
    """Learn ``config.placeholder``'s embedding from ``images`` [N, 3, H, W] in [-1, 1] and their ``captions``.

    Every caption must contain the placeholder. ``pipe`` is any StableDiffusionPipeline; its
    tokenizer and text encoder gain the placeholder (so after training ``pipe`` generates with
    it), nothing else of it changes. The noise schedule is DDPM built from ``pipe.scheduler``'s
    config (betas and prediction type of the model). With ``out_dir`` the checkpoint is written
    every ``config.checkpoint_every`` steps and at the end, training resumes from one found
    there, and ``learned_embeds.safetensors`` plus ``textual_inversion.json`` are written at the end.
    ``on_step(step, loss)`` is called after every step. ``prior_images`` [P, 3, H, W] with their
    ``prior_captions`` (no placeholder) fill half of every batch (prior preservation; meant for the
    ``lora_rank`` variant, whose LoRA is also written to ``out_dir`` and stays active in ``pipe``).
    """
    from diffusers import DDPMScheduler

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"images must be a tensor [N, 3, H, W] with N >= 1, got {getattr(images, 'shape', type(images).__name__)}")
    if float(images.min()) < -1.0 - 1e-6 or float(images.max()) > 1.0 + 1e-6:
        raise ValueError(f"images must be scaled to [-1, 1], got values in [{float(images.min()):.3f}, {float(images.max()):.3f}]")
    captions = list(captions)
    if len(captions) != images.shape[0]:
        raise ValueError(f"captions must hold one caption per image ({images.shape[0]}), got {len(captions)}")
    missing = [c for c in captions if config.placeholder not in c.split()]
    if missing:
        raise ValueError(f"every caption must contain the placeholder {config.placeholder!r} as a word, got {missing[0]!r}")
    if (prior_images is None) != (prior_captions is None):
        raise ValueError("prior_images and prior_captions go together; pass both or neither")
    if prior_images is not None:
        if not isinstance(prior_images, torch.Tensor) or prior_images.ndim != 4 or prior_images.shape[1:] != images.shape[1:]:
            raise ValueError(f"prior_images must be a tensor [P, 3, H, W] shaped like images {tuple(images.shape[1:])}, "
                             f"got {getattr(prior_images, 'shape', type(prior_images).__name__)}")
        prior_captions = list(prior_captions)
        if len(prior_captions) != prior_images.shape[0]:
            raise ValueError(f"prior_captions must hold one caption per prior image ({prior_images.shape[0]}), got {len(prior_captions)}")
        if config.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 with prior images (half of each batch), got {config.batch_size}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} exists and is not a directory")

    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    device = unet.device
    token_id, initial = add_placeholder_token(tokenizer, text_encoder, config.placeholder, config.initializer)
    for module in (text_encoder, unet, vae):
        module.requires_grad_(False)
        module.eval()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = noise_scheduler.alphas_cumprod.to(device)  # [T]

    vector = torch.nn.Parameter(initial.float().to(device))  # [D]: the only trained tensor (LoRA aside)
    params: dict[str, torch.nn.Parameter] = {"embedding": vector}
    groups: list[dict[str, Any]] = [{"params": [vector], "lr": config.learning_rate}]
    if config.lora_rank:
        lora = _add_lora(unet, config.lora_rank, config.seed)
        params.update({f"lora/{name}": param for name, param in lora.items()})
        groups.append({"params": list(lora.values()), "lr": config.lora_learning_rate})
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=config.weight_decay, eps=1e-8)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    embedding = text_encoder.get_input_embeddings()

    def splice(_module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        mask = (inputs[0] == token_id).unsqueeze(-1)  # [B, L, 1]
        return torch.where(mask, vector.to(output.dtype), output)  # [B, L, D]

    start, losses = 0, []
    if out is not None and (out / _CHECKPOINT_META).is_file():
        start, losses = _load_checkpoint(out, params, optimizer, generator, config)

    def tokens(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids

    with torch.no_grad():
        ids = tokens(captions)  # [N, L]
        mean, std = _encode_latents(vae, images, config.batch_size)  # [N, C, h, w]
        if prior_images is not None:
            prior_ids = tokens(prior_captions)  # [P, L]
            prior_mean, prior_std = _encode_latents(vae, prior_images, config.batch_size)
    n_prior = config.batch_size // 2 if prior_images is not None else 0
    scale = float(getattr(vae.config, "scaling_factor", 1.0))
    hook = embedding.register_forward_hook(splice)
    try:
        for step in range(start, config.steps):
            pick = torch.randint(0, images.shape[0], (config.batch_size - n_prior,), generator=generator)  # [B - B_prior]
            batch_mean, batch_std, batch_ids = mean[pick], std[pick], ids[pick]
            if n_prior:
                prior_pick = torch.randint(0, prior_images.shape[0], (n_prior,), generator=generator)  # [B_prior]
                batch_mean = torch.cat([batch_mean, prior_mean[prior_pick]])
                batch_std = torch.cat([batch_std, prior_std[prior_pick]])
                batch_ids = torch.cat([batch_ids, prior_ids[prior_pick]])
            eps_latent = torch.randn(batch_mean.shape, generator=generator)
            latents = ((batch_mean + batch_std * eps_latent) * scale).to(device)  # [B, C, h, w]
            noise = torch.randn(latents.shape, generator=generator).to(device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            states = text_encoder(batch_ids.to(device))[0]  # [B, L, D]
            pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=states.to(unet.dtype)).sample.float()
            if noise_scheduler.config.prediction_type == "v_prediction":
                a = alphas[t].sqrt().view(-1, 1, 1, 1)
                target = a * noise - (1 - alphas[t]).sqrt().view(-1, 1, 1, 1) * latents
            else:
                target = noise
            loss = F.mse_loss(pred, target)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"textual-inversion loss became {value} at step {step}; lower learning_rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(value)
            if on_step is not None:
                on_step(step + 1, value)
            if out is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                out.mkdir(parents=True, exist_ok=True)
                _save_checkpoint(out, step + 1, params, optimizer, generator, losses, config)
    finally:
        hook.remove()
    with torch.no_grad():
        embedding.weight[token_id] = vector.detach().to(embedding.weight.dtype)
    learned = vector.detach().cpu().clone()
    path = lora_path = None
    if out is not None:
        from attnsynth.utils.io import atomic_write_json

        out.mkdir(parents=True, exist_ok=True)
        _save_checkpoint(out, config.steps, params, optimizer, generator, losses, config)
        path = save_learned_embeds(out, config.placeholder, learned)
        if config.lora_rank:
            lora_path = _save_lora(out, unet)
        atomic_write_json(out / "textual_inversion.json", {**asdict(config), "images": int(images.shape[0]),
                                                           "final_loss": losses[-1] if losses else None})
    return TextualInversionResult(embedding=learned, token_id=token_id, losses=losses, path=path, lora_path=lora_path)
