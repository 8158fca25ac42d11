"""Train the shapes-world latent diffusion model from scratch, resumably, with 🤗 Accelerate.

Two stages share one run directory:

* ``vae``  — AutoencoderKL on rendered scenes, L1 + MSE reconstruction + a small KL term;
  its latent scaling factor is then measured (1 / std of latents) and stored in its config.
* ``unet`` — UNet2DConditionModel and CLIPTextModel trained jointly (VAE frozen) on
  ``shapes.render(seed)`` captions, DDPM noise, caption dropout for classifier-free guidance,
  EMA of both networks.

Batches, noise and caption dropout are functions of (run seed, step, process), so a resumed
run replays exactly what an uninterrupted one would. Checkpoints are atomic directories of
``save_pretrained`` models, optimiser tensors in safetensors and a JSON state; never pickle.

Run layout::

    RUN/train_config.json  model_config.json  log.jsonl  tokenizer/
    RUN/checkpoints/vae/   {vae/, optimizer.safetensors, state.json}
    RUN/checkpoints/unet/  {unet/, text_encoder/, unet_ema/, text_encoder_ema/, optimizer.safetensors, state.json}
    RUN/samples/step_XXXXXX.png
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from attnsynth.shapes_t2i.model import (
    TOY_T2I_DEFAULTS,
    ToyT2IConfig,
    assemble_pipeline,
    build_noise_scheduler,
    build_sampling_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    count_parameters,
    save_pipeline,
)
from attnsynth.attention.capture import AttentionCapture
from attnsynth.shapes_t2i.grounding import grounding_loss, grounding_targets
from attnsynth.utils.distributed import make_accelerator
from attnsynth.utils.io import atomic_directory, atomic_save_png, atomic_write_json, read_json

LR_SCHEDULES = ("cosine", "constant", "wsd")
STAGES = ("vae", "unet", "all")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run; saved as ``RUN/train_config.json`` and reloaded on ``--resume``."""

    stage: str = "all"  # vae | unet | all (vae then unet)
    steps: int = 6000  # UNet + text-encoder optimisation steps
    vae_steps: int = 800
    batch_size: int = 32  # per process
    vae_batch_size: int = 16
    lr: float = 1e-3
    vae_lr: float = 1e-3
    warmup_steps: int = 200  # UNet stage
    vae_warmup_steps: int = 30
    lr_schedule: str = "cosine"  # after warm-up: cosine (down to min_lr_ratio · lr) | constant | wsd
    decay_steps: int = 0  # wsd ("warm-up, stable, decay"): constant, then linear to min_lr_ratio · lr over the last decay_steps
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    kl_weight: float = 1e-4  # per latent element
    caption_dropout: float = 0.1  # share of empty captions (classifier-free guidance)
    snr_gamma: float | None = 5.0  # Min-SNR-γ loss weighting (Hang et al. 2023; converges faster); None = plain MSE
    grounding_weight: float = 0.0  # weight of the token-grounding loss (attnsynth.shapes_t2i.grounding); 0 = off
    grounding_res: int = 16  # grid of the cross-attention layers it grounds (the guided pipeline's attention_res)
    ema_decay: float = 0.999  # EMA ceiling; warm-up 1 − (1 + step)^(−2/3) below it
    seed: int = 0
    train_seed_start: int = 0  # scenes shapes.render(seed) with seed in [start, start + count)
    train_seed_count: int = 1_000_000
    eval_seed_start: int = 10_000_000  # held-out prompts / scenes for samples and benchmarks
    checkpoint_every_s: float = 300.0
    sample_every: int = 500  # steps between sample grids + oracle scores (0 = never)
    log_every: int = 25
    threads: int = 2
    model: ToyT2IConfig = field(default_factory=ToyT2IConfig)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("steps", "vae_steps", "warmup_steps", "vae_warmup_steps", "decay_steps", "sample_every", "train_seed_start",
                     "eval_seed_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "vae_batch_size", "log_every", "threads", "train_seed_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.vae_lr <= 0:
            raise ValueError(f"lr and vae_lr must be > 0, got {self.lr} and {self.vae_lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule == "wsd" and not 0 < self.decay_steps <= self.steps - self.warmup_steps:
            raise ValueError(f"lr_schedule 'wsd' needs 0 < decay_steps <= steps - warmup_steps "
                             f"({self.steps - self.warmup_steps}), got {self.decay_steps}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be > 0 (or None for plain MSE), got {self.snr_gamma}")
        if self.grounding_weight < 0:
            raise ValueError(f"grounding_weight must be >= 0, got {self.grounding_weight}")
        if self.grounding_res < 1:
            raise ValueError(f"grounding_res must be >= 1, got {self.grounding_res}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.train_seed_start + self.train_seed_count > self.eval_seed_start and self.eval_seed_start >= self.train_seed_start:
            raise ValueError(
                f"train seeds [{self.train_seed_start}, {self.train_seed_start + self.train_seed_count}) overlap the "
                f"held-out seeds from {self.eval_seed_start}"
            )
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ToyT2IConfig.from_dict(self.model))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = {k: v for k, v in asdict(self).items() if k != "model"}
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}")
        data = {"snr_gamma": None, **data}  # runs saved before Min-SNR existed trained with plain MSE
        return cls(**data)


# ----------------------------------------------------------------------------- data


def _step_generator(config: TrainConfig, stage: str, step: int, rank: int) -> torch.Generator:
    """The one random source of a step: a pure function of (seed, stage, step, process)."""
    offset = 0 if stage == "unet" else 7_919
    return torch.Generator().manual_seed(((config.seed * 1_000_003 + offset) * 10_000_019 + step) * 257 + rank)


def render_batch(seeds: list[int], resolution: int) -> tuple[torch.Tensor, list[str], list[Any]]:
    """Scenes ``shapes.render(seed, resolution)`` as images in [-1, 1] ``[B, 3, H, W]``, captions and specs."""
    from attnsynth.toyworld import shapes

    images, captions, specs = [], [], []
    for seed in seeds:
        scene = shapes.render(int(seed), resolution)
        images.append(torch.from_numpy(np.array(scene.image, dtype=np.uint8)))
        captions.append(scene.caption)
        specs.append(scene.spec)
    pixels = torch.stack(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [B, 3, H, W]
    return pixels, captions, specs


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, scheduler, snr_gamma: float | None) -> torch.Tensor:
    """MSE between prediction and target, per sample weighted by Min-SNR-γ when ``snr_gamma`` is set.

    Min-SNR caps the weight of low-noise timesteps (whose ε targets are nearly unlearnable noise)
    at γ/SNR, which speeds up convergence several-fold; for v-prediction the weight is
    min(SNR, γ) / (SNR + 1).
    """
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)  # [B]
    if snr_gamma is None:
        return per_sample.mean()
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps).float()  # [B]
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr)
    return (per_sample * weight).mean()


def batch_seeds(config: TrainConfig, step: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Training-scene seeds of one step on one process (consecutive, wrapping in the train range)."""
    first = (step * world + rank) * batch_size
    return [config.train_seed_start + (first + i) % config.train_seed_count for i in range(batch_size)]


def learning_rate(config: TrainConfig, base: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant, cosine decay to ``min_lr_ratio · base``, or
    "wsd": constant until the last ``decay_steps``, then linear to ``min_lr_ratio · base`` — its end can
    be chosen when resuming, so a run can train at full rate for as long as time allows and then cool down."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if config.lr_schedule == "constant" or total <= warmup:
        return base
    if config.lr_schedule == "wsd":
        decay = min(config.decay_steps, total - warmup)  # a shorter stage (the VAE's) decays over all of it at most
        progress = min(1.0, max(0, step - (total - decay)) / decay)
        return base * (1.0 - (1.0 - config.min_lr_ratio) * progress)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- checkpoint I/O


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Optimiser state as safetensors tensors + JSON param groups (no pickle)."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {f"{pid}/{name}": value.detach().clone().contiguous() for pid, entry in state["state"].items() for name, value in entry.items()}
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    save_file(tensors, str(path), metadata={"param_groups": json.dumps(groups)})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Inverse of :func:`save_optimizer`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key in f.keys():
            pid, name = key.split("/", 1)
            state.setdefault(int(pid), {})[name] = f.get_tensor(key)
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _with_ema(emas: list, modules: list[torch.nn.Module], fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the EMA weights swapped into ``modules``, then restore the live weights."""
    for ema, module in zip(emas, modules):
        ema.store(module.parameters())
        ema.copy_to(module.parameters())
    try:
        return fn()
    finally:
        for ema, module in zip(emas, modules):
            ema.restore(module.parameters())


class _Autoencode(torch.nn.Module):
    """VAE round trip as one module, so Accelerate/DDP sees encoder and decoder in one forward."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction ``[B, 3, H, W]`` from a reparameterised sample, and the KL per latent element."""
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * noise  # [B, 4, h, w]
        return self.vae.decode(latents).sample, posterior.kl().mean() / latents[0].numel()


# ----------------------------------------------------------------------------- runner


class Trainer:
    """One run directory: prepares it, trains the requested stages, checkpoints, resumes, exports."""

    def __init__(self, run_dir: str | Path, config: TrainConfig, *, resume: bool = False, init_from: str | Path | None = None,
                 device: str | None = None, echo: Callable[[str], None] = print):
        self.run_dir = Path(run_dir)
        self.echo = echo
        torch.set_num_threads(config.threads)
        config_path = self.run_dir / "train_config.json"
        if resume:
            if not config_path.is_file():
                raise FileNotFoundError(f"--resume: {config_path} not found; start the run without --resume")
            saved = TrainConfig.from_dict(read_json(config_path, "run config"))
            if saved.model != config.model:
                raise ValueError(f"--resume: model config in {config_path} differs from the requested one")
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise FileExistsError(f"run directory {self.run_dir} is not empty; pass --resume to continue it")
        self.config = config
        self.init_from = Path(init_from) if init_from is not None else None
        if self.init_from is not None and not (self.init_from / "model_index.json").is_file():
            raise FileNotFoundError(f"--init-from {self.init_from} is not a diffusers pipeline directory (no model_index.json)")
        self.accelerator = make_accelerator(cpu=device == "cpu")
        self.accelerator.wait_for_everyone()  # every process has checked the run directory before main writes to it
        self.is_main = self.accelerator.is_main_process
        if not self.is_main:  # one progress line per step, not one per process
            self.echo = lambda message: None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(config_path, config.to_dict())
            atomic_write_json(self.run_dir / "model_config.json", config.model.to_dict())
        self.tokenizer = self._tokenizer()

    # -- helpers --------------------------------------------------------------------------

    def _tokenizer(self):
        from transformers import CLIPTokenizer

        path = self.run_dir / "tokenizer"
        saved = (path / "tokenizer_config.json").is_file()
        # Every process looks before main may write: otherwise a slower process sees main's fresh save, skips
        # the barrier below that main is waiting in, and both hang (seen on a fresh 2-process run).
        self.accelerator.wait_for_everyone()
        if saved:
            return CLIPTokenizer.from_pretrained(path)
        if self.init_from is not None:
            tokenizer = CLIPTokenizer.from_pretrained(self.init_from / "tokenizer")
        else:
            from attnsynth.toyworld import shapes

            tokenizer = build_tokenizer(shapes.vocabulary(), max_length=self.config.model.max_length)
        if self.is_main:
            with atomic_directory(path, overwrite=True) as tmp:
                tokenizer.save_pretrained(tmp)
        self.accelerator.wait_for_everyone()
        return tokenizer

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to ``RUN/log.jsonl`` (main process only)."""
        if self.is_main:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def _checkpoint_due(self, last_save: float) -> bool:
        """Whether ``checkpoint_every_s`` has passed, decided by the main process for all of them.

        Every process must agree (a save starts with a barrier); clocks read at slightly different
        moments would otherwise send one process into the barrier and the other into the next
        gradient all-reduce — a deadlock.
        """
        due = torch.tensor([float(time.time() - last_save > self.config.checkpoint_every_s)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            due = broadcast(due, from_process=0)
        return bool(due.item())

    def _write_on_main(self, write: Callable[[], None]) -> None:
        """``write()`` on the main process between two barriers: every process has finished the step before,
        and none reads the checkpoint (e.g. the next stage loading the finished VAE) before it exists."""
        self.accelerator.wait_for_everyone()
        if self.is_main:
            write()
        self.accelerator.wait_for_everyone()

    def _checkpoint_dir(self, stage: str) -> Path:
        return self.run_dir / "checkpoints" / stage

    def _state(self, stage: str) -> dict[str, Any] | None:
        path = self._checkpoint_dir(stage) / "state.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(captions, padding="max_length", max_length=self.config.model.max_length,
                              truncation=True, return_tensors="pt").input_ids  # [B, L]

    # -- VAE stage ------------------------------------------------------------------------

    def load_vae(self):
        """The trained (frozen) VAE of this run, or of ``--init-from``."""
        from diffusers import AutoencoderKL

        if self.init_from is not None and self._state("vae") is None:
            return AutoencoderKL.from_pretrained(self.init_from / "vae", dtype=torch.float32)
        state = self._state("vae")
        if state is None or not state.get("finished"):
            raise FileNotFoundError(f"{self._checkpoint_dir('vae')} holds no finished VAE; run --stage vae first")
        return AutoencoderKL.from_pretrained(self._checkpoint_dir("vae") / "vae")

    def train_vae(self) -> None:
        """Stage 1: the autoencoder, then its latent scaling factor."""
        from diffusers import AutoencoderKL

        cfg, acc = self.config, self.accelerator
        state = self._state("vae")
        if state is not None and state.get("finished") and state["step"] >= cfg.vae_steps:
            self.echo(f"vae: finished at step {state['step']}, skipping")
            return
        if state is not None:
            vae = AutoencoderKL.from_pretrained(self._checkpoint_dir("vae") / "vae")
        else:
            torch.manual_seed(cfg.seed)
            vae = build_vae(cfg.model)
        optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        if state is not None:
            load_optimizer(optimizer, self._checkpoint_dir("vae") / "optimizer.safetensors")
        step = state["step"] if state else 0
        self.echo(f"vae: {count_parameters(vae) / 1e6:.2f} M params, from step {step} to {cfg.vae_steps}")
        autoencoder, optimizer = acc.prepare(_Autoencode(vae), optimizer)
        autoencoder.train()
        last_save, t_log, running = time.time(), time.time(), []
        while step < cfg.vae_steps:
            gen = _step_generator(cfg, "vae", step, acc.process_index)
            pixels, _, _ = render_batch(batch_seeds(cfg, step, cfg.vae_batch_size, acc.process_index, acc.num_processes), cfg.model.resolution)
            pixels = pixels.to(acc.device)
            for g in optimizer.param_groups:
                g["lr"] = learning_rate(cfg, cfg.vae_lr, step, cfg.vae_steps, cfg.vae_warmup_steps)
            noise = torch.randn((len(pixels), cfg.model.latent_channels, cfg.model.latent_size, cfg.model.latent_size), generator=gen)
            recon, kl = autoencoder(pixels, noise.to(acc.device))
            loss = F.l1_loss(recon, pixels) + F.mse_loss(recon, pixels) + cfg.kl_weight * kl
            acc.backward(loss)
            acc.clip_grad_norm_(autoencoder.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running.append(loss.item())
            if step % cfg.log_every == 0 or step == cfg.vae_steps:
                dt = (time.time() - t_log) / len(running)
                self.echo(f"vae step {step}/{cfg.vae_steps} loss {np.mean(running):.4f} ({dt:.2f} s/step)")
                self.log({"stage": "vae", "step": step, "loss": float(np.mean(running)), "s_per_step": dt, "time": time.time()})
                running, t_log = [], time.time()
            if self._checkpoint_due(last_save) and step < cfg.vae_steps:
                self._save_vae(vae, optimizer, step, finished=False)
                last_save = time.time()
        vae.eval()
        self._calibrate_scaling(vae)
        self._save_vae(vae, optimizer, step, finished=True)

    @torch.no_grad()
    def _calibrate_scaling(self, vae) -> None:
        """Set ``scaling_factor`` = 1 / std of latents of held-out scenes (as SD's 0.18215)."""
        cfg = self.config
        seeds = list(range(cfg.eval_seed_start, cfg.eval_seed_start + 64))
        pixels, _, _ = render_batch(seeds, cfg.model.resolution)
        std = vae.encode(pixels.to(self.accelerator.device)).latent_dist.mean.float().std().item()
        recon = vae.decode(vae.encode(pixels.to(self.accelerator.device)).latent_dist.mean).sample.clamp(-1, 1)
        mae = (recon.cpu() - pixels).abs().mean().item() * 127.5
        vae.register_to_config(scaling_factor=1.0 / std)
        self.echo(f"vae: latent std {std:.4f} → scaling_factor {1.0 / std:.4f}; held-out reconstruction MAE {mae:.2f}/255")
        self.log({"stage": "vae", "latent_std": std, "scaling_factor": 1.0 / std, "heldout_mae_255": mae})

    def _save_vae(self, vae, optimizer, step: int, *, finished: bool) -> None:
        def write() -> None:
            with atomic_directory(self._checkpoint_dir("vae"), overwrite=True) as tmp:
                vae.save_pretrained(tmp / "vae", safe_serialization=True)
                save_optimizer(optimizer, tmp / "optimizer.safetensors")
                atomic_write_json(tmp / "state.json", {"step": step, "finished": finished, "time": time.time()})
            self.echo(f"vae: checkpoint at step {step}{' (finished)' if finished else ''}")

        self._write_on_main(write)

    # -- UNet stage -----------------------------------------------------------------------

    def _load_unet_modules(self, state: dict[str, Any] | None):
        """(unet, text_encoder, ema_unet_source, ema_text_source) for a fresh, warm or resumed run."""
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        if state is not None:
            d = self._checkpoint_dir("unet")
            return (UNet2DConditionModel.from_pretrained(d / "unet"), CLIPTextModel.from_pretrained(d / "text_encoder"),
                    UNet2DConditionModel.from_pretrained(d / "unet_ema"), CLIPTextModel.from_pretrained(d / "text_encoder_ema"))
        if self.init_from is not None:
            unet = UNet2DConditionModel.from_pretrained(self.init_from / "unet", dtype=torch.float32)
            text = CLIPTextModel.from_pretrained(self.init_from / "text_encoder", dtype=torch.float32)
            return unet, text, unet, text
        torch.manual_seed(self.config.seed + 1)
        unet = build_unet(self.config.model)
        text = build_text_encoder(self.config.model, self.tokenizer)
        return unet, text, unet, text

    def train_unet(self) -> None:
        """Stage 2: UNet + text encoder on captions, VAE frozen, EMA of both networks."""
        from diffusers.training_utils import EMAModel

        cfg, acc = self.config, self.accelerator
        state = self._state("unet")
        step = state["step"] if state else 0
        if step >= cfg.steps:
            self.echo(f"unet: already at step {step} >= {cfg.steps}, nothing to train")
            return
        vae = self.load_vae().to(acc.device).eval().requires_grad_(False)
        scaling = vae.config.scaling_factor
        unet, text_encoder, ema_unet_src, ema_text_src = self._load_unet_modules(state)
        ema_kwargs = dict(decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3)
        ema_unet = EMAModel(ema_unet_src.parameters(), **ema_kwargs)
        ema_text = EMAModel(ema_text_src.parameters(), **ema_kwargs)
        if state is not None:
            ema_unet.optimization_step = ema_text.optimization_step = state["ema_step"]
        del ema_unet_src, ema_text_src
        params = list(unet.parameters()) + list(text_encoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if state is not None:
            load_optimizer(optimizer, self._checkpoint_dir("unet") / "optimizer.safetensors")
        noise_scheduler = build_noise_scheduler(cfg.model)
        self.echo(f"unet: {count_parameters(unet) / 1e6:.2f} M params, text encoder {count_parameters(text_encoder) / 1e6:.2f} M, "
                  f"vae {count_parameters(vae) / 1e6:.2f} M (frozen); from step {step} to {cfg.steps}, "
                  f"batch {cfg.batch_size} × {acc.num_processes} process(es)")
        unet, text_encoder, optimizer = acc.prepare(unet, text_encoder, optimizer)
        ema_unet.to(acc.device)
        ema_text.to(acc.device)
        empty_ids = self._tokenize([""])
        capture = None
        if cfg.grounding_weight > 0:
            grid = (cfg.grounding_res, cfg.grounding_res)
            capture = AttentionCapture(acc.unwrap_model(unet), latent_size=(cfg.model.latent_size,) * 2, resolution=grid).install()
        last_save, t_log, running, running_ground = time.time(), time.time(), [], []
        while step < cfg.steps:
            unet.train()
            text_encoder.train()
            gen = _step_generator(cfg, "unet", step, acc.process_index)
            pixels, captions, specs = render_batch(batch_seeds(cfg, step, cfg.batch_size, acc.process_index, acc.num_processes),
                                                   cfg.model.resolution)
            ids = self._tokenize(captions)
            drop = torch.rand(len(captions), generator=gen) < cfg.caption_dropout
            ids[drop] = empty_ids  # [B, L]
            noise_latent = torch.randn((len(captions), cfg.model.latent_channels, cfg.model.latent_size, cfg.model.latent_size), generator=gen)
            noise = torch.randn(noise_latent.shape, generator=gen)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(captions),), generator=gen)
            pixels, ids, noise_latent, noise, timesteps = (t.to(acc.device) for t in (pixels, ids, noise_latent, noise, timesteps))
            with torch.no_grad():
                posterior = vae.encode(pixels).latent_dist
                latents = (posterior.mean + posterior.std * noise_latent) * scaling  # [B, 4, h, w]
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            target = noise if cfg.model.prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
            for g in optimizer.param_groups:
                g["lr"] = learning_rate(cfg, cfg.lr, step, cfg.steps, cfg.warmup_steps)
            hidden = text_encoder(ids)[0]  # [B, L, D]
            if capture is None:
                pred = unet(noisy, timesteps, hidden).sample
                loss = denoising = diffusion_loss(pred, target, timesteps, noise_scheduler, cfg.snr_gamma)
            else:
                targets = grounding_targets(self.tokenizer, captions, specs, size=cfg.grounding_res, max_length=cfg.model.max_length,
                                            skip=drop.tolist()).to(acc.device)
                with capture.guiding():
                    pred = unet(noisy, timesteps, hidden).sample
                    ground = grounding_loss(capture.maps(), targets)  # maps [B, g, g, L] keep their graph
                denoising = diffusion_loss(pred, target, timesteps, noise_scheduler, cfg.snr_gamma)
                loss = denoising + cfg.grounding_weight * ground
                running_ground.append(ground.item())
            acc.backward(loss)
            acc.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema_unet.step(acc.unwrap_model(unet).parameters())
            ema_text.step(acc.unwrap_model(text_encoder).parameters())
            step += 1
            running.append(denoising.item())
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = (time.time() - t_log) / len(running)
                grounded = {"grounding": float(np.mean(running_ground))} if running_ground else {}
                self.echo(f"unet step {step}/{cfg.steps} loss {np.mean(running):.4f}"
                          + (f" grounding {grounded['grounding']:.3f}" if grounded else "")
                          + f" lr {optimizer.param_groups[0]['lr']:.2e} ({dt:.2f} s/step)")
                self.log({"stage": "unet", "step": step, "loss": float(np.mean(running)), **grounded, "lr": optimizer.param_groups[0]["lr"],
                          "s_per_step": dt, "time": time.time()})
                running, running_ground, t_log = [], [], time.time()
            modules = [acc.unwrap_model(unet), acc.unwrap_model(text_encoder)]
            if cfg.sample_every and step % cfg.sample_every == 0 and self.is_main:
                _with_ema([ema_unet, ema_text], modules, lambda: self.sample_and_score(vae, *modules, step=step))
                t_log = time.time()
            if step == cfg.steps or self._checkpoint_due(last_save):
                self._save_unet(modules, [ema_unet, ema_text], optimizer, step)
                last_save = time.time()
        if capture is not None:
            capture.restore()

    def _save_unet(self, modules: list[torch.nn.Module], emas: list, optimizer, step: int) -> None:
        unet, text_encoder = modules

        def write() -> None:
            with atomic_directory(self._checkpoint_dir("unet"), overwrite=True) as tmp:
                unet.save_pretrained(tmp / "unet", safe_serialization=True)
                text_encoder.save_pretrained(tmp / "text_encoder")
                _with_ema(emas, modules, lambda: (unet.save_pretrained(tmp / "unet_ema", safe_serialization=True),
                                                  text_encoder.save_pretrained(tmp / "text_encoder_ema")))
                save_optimizer(optimizer, tmp / "optimizer.safetensors")
                atomic_write_json(tmp / "state.json", {"step": step, "ema_step": emas[0].optimization_step, "time": time.time()})
            self.echo(f"unet: checkpoint at step {step}")

        self._write_on_main(write)

    # -- samples, export --------------------------------------------------------------------

    def pipeline(self, vae, unet, text_encoder):
        """A StableDiffusionPipeline around the given modules, with the shipped DDIM sampler."""
        pipe = assemble_pipeline(tokenizer=self.tokenizer, text_encoder=text_encoder, vae=vae, unet=unet,
                                 scheduler=build_sampling_scheduler(self.config.model))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def sample_and_score(self, vae, unet, text_encoder, *, step: int, n_prompts: int = 12) -> dict[str, float]:
        """Sample held-out 1- and 2-subject prompts, write a PNG grid and log the oracle's rates."""
        from attnsynth.toyworld import shapes

        unet.eval()
        text_encoder.eval()
        pipe = self.pipeline(vae, unet, text_encoder)
        record: dict[str, Any] = {"stage": "samples", "step": step}
        rows = []
        for n in (1, 2):
            prompts = [shapes.sample_prompt(self.config.eval_seed_start + i, n) for i in range(n_prompts)]
            gen = torch.Generator().manual_seed(self.config.seed)
            images = pipe([p for p, _ in prompts], height=self.config.model.resolution, width=self.config.model.resolution,
                          num_inference_steps=TOY_T2I_DEFAULTS["num_inference_steps"], guidance_scale=TOY_T2I_DEFAULTS["guidance_scale"],
                          generator=gen, output_type="np").images
            images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)  # [B, H, W, 3]
            scores = [shapes.score(img, spec) for img, (_, spec) in zip(images, prompts)]
            record[f"n{n}_all_present"] = float(np.mean([s["all_present"] for s in scores]))
            binding = [s["colour_binding_rate"] for s in scores if s["colour_binding_rate"] is not None]
            record[f"n{n}_colour_binding"] = float(np.mean(binding)) if binding else float("nan")
            rows.append(np.concatenate(list(images), axis=1))
        if self.is_main:
            atomic_save_png(self.run_dir / "samples" / f"step_{step:06d}.png", np.concatenate(rows, axis=0))
        self.echo(f"samples step {step}: " + " ".join(f"{k} {v:.2f}" for k, v in record.items() if k.startswith("n")))
        self.log({**record, "time": time.time()})
        return record

    def export(self, out_dir: str | Path, *, fp16: bool = True) -> Path:
        """Save the EMA weights of the latest UNet checkpoint (+ VAE, tokenizer) as a diffusers pipeline."""
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        d = self._checkpoint_dir("unet")
        if self._state("unet") is None:
            raise FileNotFoundError(f"{d} holds no UNet checkpoint to export; train --stage unet first")
        pipe = self.pipeline(self.load_vae(), UNet2DConditionModel.from_pretrained(d / "unet_ema"),
                             CLIPTextModel.from_pretrained(d / "text_encoder_ema"))
        return save_pipeline(pipe, out_dir, defaults=TOY_T2I_DEFAULTS, fp16=fp16)

    def run(self) -> None:
        """Train the configured stage(s)."""
        if self.config.stage in ("vae", "all") and self.init_from is None:
            self.train_vae()
        if self.config.stage in ("unet", "all"):
            self.train_unet()


def train_t2i(run_dir: str | Path, config: TrainConfig, *, resume: bool = False, init_from: str | Path | None = None,
              export_to: str | Path | None = None, device: str | None = None, echo: Callable[[str], None] = print) -> Trainer:
    """Train (or resume) a run and optionally export its EMA pipeline; returns the trainer."""
    trainer = Trainer(run_dir, config, resume=resume, init_from=init_from, device=device, echo=echo)
    trainer.run()
    if export_to is not None and trainer.is_main:
        path = trainer.export(export_to)
        echo(f"exported pipeline to {path}")
    return trainer


def export_t2i(run_dir: str | Path, out_dir: str | Path, *, init_from: str | Path | None = None,
               echo: Callable[[str], None] = print) -> Path:
    """Export a run's latest EMA weights as a diffusers pipeline without training (e.g. while it still runs).

    ``init_from`` is needed when the run was warm-started from a pipeline (its VAE lives there).
    """
    config_path = Path(run_dir) / "train_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {run_dir} is not a train-t2i run directory")
    config = TrainConfig.from_dict(read_json(config_path, "run config"))
    trainer = Trainer(run_dir, config, resume=True, init_from=init_from, device="cpu", echo=echo)
    return trainer.export(out_dir)
