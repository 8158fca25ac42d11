"""Training CA²-SIS (and the SPADE baseline) with 🤗 Accelerate: CPU, one GPU or many.

``train(TrainConfig)`` runs the GAN stage with the paper's recipe — TTUR Adam β = (0, 0.9),
lr_G 1e-4 / lr_D 4e-4 constant for the first half then linearly to 0, L_G = hinge + 10·FM +
10·VGG (only with local VGG19 weights) + 1·L_att (CA²-SIS only) + 0·L1 (every weight a ``--lambda-*`` flag), hinge L_D, an EMA of G.
``train_mapping(MappingTrainConfig)`` then trains the random-style mapping network with G frozen.

A run directory holds::

    train_config.json   resolved options (+ model config, label set, processes)
    log.jsonl           statistics every ``log_every`` steps: loss/G/total, loss/G/att, loss/D/total, lr/G …
    eval.jsonl          the learning curve (with ``eval_every``): held-out PSNR, oracle style error, transfer accuracy …
    samples/            sample grids (mask | real | reconstruction | style transfer), EMA generator
    checkpoint/         the latest resumable state (see :mod:`attnsynth.sis.checkpoint`)
    config.json, model.safetensors (EMA G), generator.safetensors (raw G), discriminator.safetensors,
    labelset.json       the final model: ``SISModel.from_pretrained(RUN)``

**Exact resume.** Everything random is a function of (seed, step): the data order and each
sample's augmentation (:class:`~attnsynth.data.sampler.StepBatchSampler`) and the torch RNG,
re-seeded at the start of every step from (seed, step, process). With weights, EMA and
optimiser states restored from the checkpoint, a resumed run retraces the uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.nn.utils import parametrize

from attnsynth.data import PairDataset, load_dataset
from attnsynth.data.sampler import StepBatchSampler, mix_seed
from attnsynth.sis.checkpoint import LABELSET_FILE, MAPPING_WEIGHTS, load_training_state, readable_weights, save_training_state
from attnsynth.sis.run_log import RunLog, read_log
from attnsynth.sis.train_config import MappingTrainConfig, TrainConfig
from attnsynth.utils.distributed import make_accelerator
from attnsynth.utils.io import atomic_save_png, atomic_write_json, read_json

CHECKPOINT_DIR = "checkpoint"
MAPPING_CHECKPOINT_DIR = "mapping_checkpoint"
TRAIN_CONFIG_FILE = "train_config.json"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training call leaves behind: the run directory, the last step and its statistics."""

    out: Path
    step: int
    last_log: dict[str, Any]


# ---- small pure helpers -----------------------------------------------------------------------------
def lr_factor(step: int, total: int, decay_start: float) -> float:
    """1 for the first ``decay_start`` fraction of steps, then linear to 0 at ``total`` (SPADE's schedule)."""
    start = int(total * decay_start)
    if step < start or total == start:
        return 1.0
    return max(0.0, (total - step) / (total - start))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """ema ← d·ema + (1 − d)·model with d = min(decay, (1 + step)/(10 + step)) (warm-up); buffers copied."""
    d = min(decay, (1 + step) / (10 + step))
    targets = list(ema.parameters())
    sources = [p.detach().to(e.dtype) for e, p in zip(targets, model.parameters())]
    if targets:
        torch._foreach_lerp_(targets, sources, 1.0 - d)  # one multi-tensor kernel (same values as a lerp_ per tensor)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def adam(params, *, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with the multi-tensor (foreach) kernels, which PyTorch only picks by itself for CUDA tensors: bit-identical
    updates, 1.4× faster on a CPU (`small` generator, one thread: 3.7 vs 5.1 ms). (The fused kernel was 5× faster but
    a resumed run no longer retraced an uninterrupted one exactly, so it is not used.)"""
    return torch.optim.Adam(params, lr=lr, betas=tuple(float(b) for b in betas), foreach=True)


def split_outputs(outputs: list[list[torch.Tensor]], n: int) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Discriminator outputs of ``cat([a, b])`` → (outputs of a, outputs of b); ``a`` has ``n`` items."""
    first = [[f[:n] for f in scale] for scale in outputs]
    second = [[f[n:] for f in scale] for scale in outputs]
    return first, second


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc act like a caching allocator: no per-tensor mmap/munmap, no heap trimming.

    Every large tensor otherwise arrives as fresh zero-filled pages (page faults on each use):
    ≈ 10 % of a CPU training step. Same effect as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=…``
    (PyTorch's CPU tuning guide), set from inside the process. Returns False where it is not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h> constants
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _one_line(error: BaseException) -> str:
    """Last meaningful line of an error message (DataLoader workers prepend a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    for prefix in ("ValueError: ", "FileNotFoundError: "):
        last = last.removeprefix(prefix)
    return last


def _batches(loader: torch.utils.data.DataLoader) -> Iterator[dict]:
    """Iterate a DataLoader, turning dataset errors (also from workers) into one-line errors."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except FileNotFoundError as error:
            raise FileNotFoundError(_one_line(error)) from None
        except ValueError as error:
            raise ValueError(_one_line(error)) from None
        yield batch


def _loader(dataset: PairDataset, *, batch_size: int, total_steps: int, start_step: int, seed: int, accelerator,
            num_workers: int) -> torch.utils.data.DataLoader:
    sampler = StepBatchSampler(num_samples=len(dataset), batch_size=batch_size, total_steps=total_steps, start_step=start_step,
                               seed=seed, rank=accelerator.process_index, world_size=accelerator.num_processes)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=accelerator.device.type == "cuda")


def _reduce_stats(accelerator, stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each statistic over processes (one collective)."""
    keys = sorted(stats)
    values = torch.stack([stats[k].detach().float().reshape(()) for k in keys])
    values = accelerator.reduce(values, reduction="mean")
    return {k: float(v) for k, v in zip(keys, values.cpu())}


def _progress(enabled: bool, total: int, start: int, description: str):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), transient=True)
    progress.start()
    progress.add_task(description, total=total, completed=start, info="")
    return progress


# ---- the run directory ------------------------------------------------------------------------------
def _prepare_run(config: TrainConfig, resume: bool) -> tuple[Path, bool]:
    """Check ``config.out`` against ``resume``; return (run dir, whether a checkpoint will be loaded)."""
    out = Path(config.out)
    has_checkpoint = (out / CHECKPOINT_DIR / "state.json").is_file()
    if resume and not has_checkpoint:
        raise FileNotFoundError(f"--resume: {out / CHECKPOINT_DIR / 'state.json'} does not exist, nothing to resume in --out {out} "
                                "(drop --resume to start a new run)")
    if has_checkpoint and not resume:
        raise FileExistsError(f"--out {out} already holds a training run; pass --resume to continue it or choose another --out")
    if not has_checkpoint and not resume and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty; choose another --out")
    if has_checkpoint:
        saved_path = out / TRAIN_CONFIG_FILE
        if not saved_path.is_file():
            raise FileNotFoundError(f"{saved_path} is missing: cannot check that --resume uses the same options")
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text(encoding="utf-8"))["train"])
        config.check_resume(saved)
    return out, has_checkpoint


def _save_final_model(out: Path, model, *, extra: dict[str, dict[str, torch.Tensor]], label_set) -> None:
    """``save_pretrained`` into a temporary sibling, then move its files into ``out`` one by one (atomic each)."""
    tmp = Path(tempfile.mkdtemp(prefix=".final.", dir=out))
    try:
        model.save_pretrained(tmp / "model", extra_state_dicts=extra)
        files = sorted((tmp / "model").iterdir(), key=lambda p: p.name == "config.json")  # config last
        for path in files:
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(out / LABELSET_FILE, label_set.to_dict())


# ---- samples ----------------------------------------------------------------------------------------
@torch.no_grad()
def sample_grid(model, dataset: PairDataset, *, count: int = 4, device: torch.device) -> "np.ndarray":  # noqa: F821
    """One row per fixed sample: mask | real | reconstruction | style transfer from the next sample."""
    from attnsynth.sis.model import labels_to_onehot
    from attnsynth.sis.visuals import grid
    from attnsynth.utils.images import colorize_labels, to_uint8

    items = [dataset[i] for i in range(min(count, len(dataset)))]
    image = torch.stack([it["image"] for it in items]).to(device, model.dtype)
    labels = torch.stack([it["labels"] for it in items]).to(device)
    onehot = labels_to_onehot(labels, dataset.num_classes, dtype=model.dtype)
    was_training = model.training
    model.eval()
    recon = model(image, onehot)
    style = model.encode_style(image.roll(1, 0), onehot.roll(1, 0))
    transfer = model.decode(model.embed_shape(onehot), style)
    model.train(was_training)
    rows = [[colorize_labels(labels[i], dataset.num_classes), to_uint8(image[i]), to_uint8(recon[i]), to_uint8(transfer[i])] for i in range(len(items))]
    return grid(rows)


def learning_curve_record(model, label_set, dataset, *, n: int, step: int) -> dict[str, Any]:
    """One ``eval.jsonl`` record: :func:`~attnsynth.sis.evaluate.evaluate_model` of ``model`` on ``n`` held-out items, flattened."""
    from attnsynth.sis.evaluate import evaluate_model

    report = evaluate_model(model, label_set, dataset, n=n, noise_levels=())
    record: dict[str, Any] = {"step": step, "n": report["n"], **{f"reconstruction/{k}": v for k, v in report["reconstruction"].items()}}
    for key, value in report.get("toy", {}).items():
        if key == "transfer_accuracy":
            record.update({f"transfer/{group}/{kind}": v for group, kinds in value.items() for kind, v in kinds.items()})
        else:
            record[f"toy/{key}"] = value
    return record


# ---- the GAN stage ----------------------------------------------------------------------------------
class _GANStep:
    """One iteration of the main stage: a G update (hinge + FM + VGG + L_att), then a D update (hinge)."""

    def __init__(self, *, accelerator, generator, discriminator, opt_g, opt_d, vgg, config: TrainConfig, use_attention: bool) -> None:
        self.accelerator = accelerator
        self.generator = generator  # possibly DDP-wrapped
        self.discriminator = discriminator  # possibly DDP-wrapped
        self.plain_discriminator = accelerator.unwrap_model(discriminator)  # G step: no DDP sync, frozen
        self.opt_g, self.opt_d = opt_g, opt_d
        self.vgg = vgg
        self.config = config
        self.use_attention = use_attention

    def __call__(self, image: torch.Tensor, onehot: torch.Tensor) -> dict[str, torch.Tensor]:
        from attnsynth.sis.losses import attention_loss, feature_matching_loss, hinge_d_loss, hinge_g_loss, l1_loss

        cfg, acc = self.config, self.accelerator
        n = image.shape[0]
        both_masks = torch.cat([onehot, onehot])
        # 1. generator update; D is frozen and called without its DDP wrapper. D(fake ⊕ real) is one batch in the
        #    authors' code; here the two halves are two calls with the same spectrally normalised weights (one power
        #    iteration, `parametrize.cached`) — D is per-image, so the outputs are the same — and the real half runs
        #    without autograd: its features are FM targets only, so the backward through D now covers the fake half
        #    alone instead of the whole doubled batch.
        self.plain_discriminator.requires_grad_(False)
        with acc.autocast():
            fake, logits = self.generator(image, onehot, return_attention=True)
            with parametrize.cached():
                fake_out = self.plain_discriminator(fake, onehot)
                with torch.no_grad():
                    real_out = self.plain_discriminator(image, onehot)
            stats = {"loss/G/gan": hinge_g_loss(fake_out), "loss/G/fm": feature_matching_loss(fake_out, real_out)}
            total = stats["loss/G/gan"] + cfg.lambda_fm * stats["loss/G/fm"]
            if self.vgg is not None:
                stats["loss/G/vgg"] = self.vgg(fake.float(), image.float())
                total = total + cfg.lambda_vgg * stats["loss/G/vgg"]
            if cfg.lambda_l1:
                stats["loss/G/l1"] = l1_loss(fake.float(), image.float())
                total = total + cfg.lambda_l1 * stats["loss/G/l1"]
            if self.use_attention:
                stats["loss/G/att"] = attention_loss([l.float() for l in logits], onehot)
                total = total + cfg.lambda_att * stats["loss/G/att"]
        stats["loss/G/total"] = total
        self.opt_g.zero_grad(set_to_none=True)
        acc.backward(total)
        self.opt_g.step()
        # 2. discriminator update on the same fake (detached): one forward of real ⊕ fake
        self.plain_discriminator.requires_grad_(True)
        with acc.autocast():
            fake_out, real_out = split_outputs(self.discriminator(torch.cat([fake.detach(), image]), both_masks), n)
            loss_d = hinge_d_loss(real_out, fake_out)
        self.opt_d.zero_grad(set_to_none=True)
        acc.backward(loss_d)
        self.opt_d.step()
        stats["loss/D/total"] = loss_d
        stats["D/real_logit"] = torch.stack([s[-1].float().mean() for s in real_out]).mean()
        stats["D/fake_logit"] = torch.stack([s[-1].float().mean() for s in fake_out]).mean()
        return {k: v.detach() for k, v in stats.items()}


def _build_vgg(config: TrainConfig, device, say: Callable[[str], None]):
    """The VGG19 perceptual loss, or None (with a clear message) when no weights are given."""
    if config.lambda_vgg == 0:
        say("perceptual (VGG) loss is OFF: lambda_vgg = 0")
        return None
    if config.vgg_weights is None:
        say("perceptual (VGG) loss is OFF: no --vgg-weights given (a local VGG19 weights file enables the paper's 10·L_VGG)")
        return None
    from attnsynth.sis.losses import VGGPerceptualLoss

    return VGGPerceptualLoss(config.vgg_weights, device=device)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = False, callback: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a SIS model as ``config`` says (resuming ``config.out`` when ``resume``); see the module docstring.

    ``callback`` receives ``{"step": done, "stats": {name: tensor}, "models": {"generator",
    "discriminator", "ema"}}`` (unwrapped modules of this process) after every step — for progress
    displays, previews, or stopping early by raising.
    """
    from attnsynth.sis.configs import get_config
    from attnsynth.sis.model import build_discriminator, build_model, labels_to_onehot

    # 1. check inputs before any compute
    out, load = _prepare_run(config, resume)
    if config.vgg_weights is not None and not Path(config.vgg_weights).is_file():
        raise FileNotFoundError(f"--vgg-weights {config.vgg_weights} does not exist")
    data_args = dict(split="train", resolution=config.resolution, layout=config.layout, toy_n=config.toy_n, seed=config.seed)
    dataset = load_dataset(config.data, augment=config.augment, **data_args)
    preview = load_dataset(config.data, augment=False, **data_args)  # fixed, un-augmented samples for the grids
    dataset[0]  # fail fast on an unreadable first sample
    held_out = None
    if config.eval_every:
        held_out = load_dataset(config.eval_data or config.data, **{**data_args, "split": "test", "toy_n": config.eval_n})
        held_out[0]
    model_config = get_config(config.config, num_classes=dataset.num_classes, resolution=config.resolution)

    # 2. processes, models, optimisers
    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    accelerator.wait_for_everyone()  # every process has checked --out before the main one writes to it
    say = accelerator.print
    torch.manual_seed(config.seed)
    if accelerator.device.type == "cpu":
        tune_cpu_allocator()
    # channels-last weights and activations: oneDNN (CPU) and cuDNN (GPU, bf16) convolutions skip layout reorders
    generator = build_model(model_config).to(memory_format=torch.channels_last)
    discriminator = build_discriminator(model_config).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(generator).requires_grad_(False).eval()
    opt_g = adam(generator.parameters(), lr=config.lr_g, betas=config.betas)
    opt_d = adam(discriminator.parameters(), lr=config.lr_d, betas=config.betas)
    start_step = 0
    if load:
        state = load_training_state(out / CHECKPOINT_DIR, modules={"generator": generator, "discriminator": discriminator, "ema": ema},
                                    optimizers={"generator": opt_g, "discriminator": opt_d})
        start_step = int(state["step"])
        if state.get("processes") != accelerator.num_processes:
            say(f"note: the checkpoint was written with {state.get('processes')} processes, now {accelerator.num_processes}: "
                "the data order differs from an uninterrupted run")
        say(f"resuming {out} from step {start_step}")
    generator, discriminator, opt_g, opt_d = accelerator.prepare(generator, discriminator, opt_g, opt_d)
    ema.to(accelerator.device)
    plain_g = accelerator.unwrap_model(generator)
    vgg = _build_vgg(config, accelerator.device, say)
    step_fn = _GANStep(accelerator=accelerator, generator=generator, discriminator=discriminator, opt_g=opt_g, opt_d=opt_d, vgg=vgg,
                       config=config, use_attention=model_config.arch == "ca2sis" and config.lambda_att > 0)

    # 3. the run directory
    log = eval_log = None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / TRAIN_CONFIG_FILE, {
            "train": config.to_dict(), "model": model_config.to_dict(), "label_set": dataset.label_set.to_dict(),
            "processes": accelerator.num_processes, "perceptual_loss": vgg is not None,
        })
        log = RunLog(out / "log.jsonl", keep_until_step=start_step if load else None)
        eval_log = RunLog(out / "eval.jsonl", keep_until_step=start_step if load else None) if held_out is not None else None
    accelerator.wait_for_everyone()

    def save_checkpoint(step: int) -> None:
        if accelerator.is_main_process:
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            save_training_state(out / CHECKPOINT_DIR,
                                modules={"generator": plain_g, "discriminator": accelerator.unwrap_model(discriminator), "ema": ema},
                                optimizers={"generator": opt_g, "discriminator": opt_d},
                                state={"step": step, "seed": config.seed, "processes": accelerator.num_processes, "scaler": scaler})
        accelerator.wait_for_everyone()

    if load and accelerator.scaler is not None:
        saved_scaler = json.loads((out / CHECKPOINT_DIR / "state.json").read_text())["state"].get("scaler")
        if saved_scaler:
            accelerator.scaler.load_state_dict(saved_scaler)

    # 4. the loop
    loader = _loader(dataset, batch_size=config.batch_size, total_steps=config.steps, start_step=start_step, seed=config.seed,
                     accelerator=accelerator, num_workers=config.num_workers)
    bar = _progress(progress and accelerator.is_main_process, config.steps, start_step, "sis train")
    last: dict[str, Any] = {}
    final_step = start_step
    tick = time.perf_counter()
    try:
        for step, batch in enumerate(_batches(loader), start=start_step):
            torch.manual_seed(mix_seed(config.seed, 0x57E9, step, accelerator.process_index))
            factor = lr_factor(step, config.steps, config.decay_start)
            set_lr(opt_g, config.lr_g * factor)
            set_lr(opt_d, config.lr_d * factor)
            image = batch["image"].to(accelerator.device).contiguous(memory_format=torch.channels_last)
            onehot = labels_to_onehot(batch["labels"].to(accelerator.device), dataset.num_classes).contiguous(memory_format=torch.channels_last)
            stats = step_fn(image, onehot)
            ema_update(ema, plain_g, step, config.ema_decay)
            done = final_step = step + 1
            if callback is not None:
                callback({"step": done, "stats": stats, "models": {"generator": plain_g, "discriminator": step_fn.plain_discriminator, "ema": ema}})
            if done % config.log_every == 0 or done == config.steps:
                values = _reduce_stats(accelerator, stats)
                last = {"step": done, **values, "lr/G": config.lr_g * factor, "lr/D": config.lr_d * factor,
                        "time/sec_per_step": (time.perf_counter() - tick) / config.log_every}
                tick = time.perf_counter()
                if log is not None:
                    log.write(last)
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=done, info=f"G {values['loss/G/total']:.3f} D {values['loss/D/total']:.3f}")
            if config.eval_every and done % config.eval_every == 0 and done != config.steps and eval_log is not None:
                eval_log.write(learning_curve_record(ema, dataset.label_set, held_out, n=config.eval_n, step=done))
            if config.sample_every and done % config.sample_every == 0 and accelerator.is_main_process:
                atomic_save_png(out / "samples" / f"step_{done:07d}.png", sample_grid(ema, preview, device=accelerator.device))
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done != config.steps:
                save_checkpoint(done)
    finally:
        if bar is not None:
            bar.stop()

    # 5. final checkpoint, sample grid and model
    save_checkpoint(final_step)
    if accelerator.is_main_process:
        atomic_save_png(out / "samples" / f"step_{final_step:07d}.png", sample_grid(ema, preview, device=accelerator.device))
        if eval_log is not None:
            eval_log.write(learning_curve_record(ema, dataset.label_set, held_out, n=config.eval_n, step=final_step))
        extra = {"generator": plain_g.state_dict(), "discriminator": accelerator.unwrap_model(discriminator).state_dict()}
        _save_final_model(out, ema, extra=extra, label_set=dataset.label_set)
        say(f"trained to step {final_step}: model in {out}")
    accelerator.wait_for_everyone()
    if not last:
        records = read_log(out / "log.jsonl")
        last = records[-1] if records else {"step": final_step}
    return TrainResult(out=out, step=final_step, last_log=last)


# ---- the mapping (random style) stage -----------------------------------------------------------
@torch.no_grad()
def _real_token_bank(model, dataset, count: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Style tokens [N, C, D] (absent classes 0, as the mapping network writes them) and presence [N, C] of the first
    ``count`` training faces (frozen encoder, batches of 16)."""
    from attnsynth.sis.model import labels_to_onehot, present_classes

    tokens, present = [], []
    indices = list(range(min(count, len(dataset))))
    for start in range(0, len(indices), 16):
        items = [dataset[i] for i in indices[start:start + 16]]
        image = torch.stack([item["image"] for item in items]).to(device)
        onehot = labels_to_onehot(torch.stack([item["labels"] for item in items]).to(device), dataset.num_classes)
        is_present = present_classes(onehot)
        tokens.append(model.encode_style(image, onehot).float() * is_present.unsqueeze(-1))
        present.append(is_present)
    return torch.cat(tokens), torch.cat(present)


def _token_match(mapping, bank_tokens: torch.Tensor, bank_present: torch.Tensor, batch: int, latent_dim: int) -> torch.Tensor:
    """SW₂² between the mapped tokens of ``batch`` bank faces (their presence, fresh z) and those faces' real tokens."""
    from attnsynth.sis.losses import sliced_wasserstein

    pick = torch.randint(0, bank_tokens.shape[0], (batch,), device=bank_tokens.device)
    mapped = mapping(torch.randn(batch, latent_dim, device=bank_tokens.device), bank_present[pick])
    return sliced_wasserstein(mapped.flatten(1).float(), bank_tokens[pick].flatten(1))


def _fit_tokens(mapping, bank_tokens: torch.Tensor, bank_present: torch.Tensor, config: MappingTrainConfig) -> None:
    """``config.token_steps`` steps of `_token_match` alone (no generator, so ~100× cheaper than a GAN step);
    deterministic for ``config.seed``."""
    optimizer = adam(mapping.parameters(), lr=config.token_lr, betas=config.betas)
    for step in range(config.token_steps):
        torch.manual_seed(mix_seed(config.seed, 0x70CE, step, 0))
        loss = _token_match(mapping, bank_tokens, bank_present, config.token_batch, mapping.config.mapping_latent_dim)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def train_mapping(config: MappingTrainConfig, *, resume: bool = False, progress: bool = False) -> TrainResult:
    """Train the mapping network z → style tokens with the run's EMA generator frozen.

    Losses: G side hinge + λ_att·L_att − λ_div·|G(z₁) − G(z₂)|₁ (on the mapping network), D side
    hinge (the discriminator continues from the run's final one) — the authors' stage. Opt-in
    ``lambda_token`` adds λ_token·SW₂²(M(z, present), s(x)): the mapped tokens of ``token_batch`` faces
    against the style encoder's tokens of the same faces (present classes only, flattened per face),
    drawn from a bank of ``token_bank`` training faces encoded once — a direct pull towards the tokens
    the frozen generator was trained on, which the image GAN alone reaches slowly. Writes
    ``RUN/mapping.safetensors``, ``RUN/mapping_log.jsonl`` and a resumable ``RUN/mapping_checkpoint/``.
    """
    from attnsynth.sis.losses import attention_loss, hinge_d_loss, hinge_g_loss
    from attnsynth.sis.mapping import MappingNetwork
    from attnsynth.sis.model import SISModel, build_discriminator, labels_to_onehot, load_safetensors, present_classes, save_safetensors

    run = Path(config.run)
    if not (run / "config.json").is_file() or not (run / "discriminator.safetensors").is_file():
        raise FileNotFoundError(f"--checkpoint {run} is not a finished `sis train` run (config.json, model.safetensors, discriminator.safetensors)")
    has_checkpoint = (run / MAPPING_CHECKPOINT_DIR / "state.json").is_file()
    if (run / MAPPING_WEIGHTS).exists() and not resume:
        raise FileExistsError(f"{run / MAPPING_WEIGHTS} exists; pass --resume to continue the mapping stage")
    if resume and not has_checkpoint:
        raise FileNotFoundError(f"--resume: {run / MAPPING_CHECKPOINT_DIR / 'state.json'} does not exist, nothing to resume "
                                "(drop --resume to start the mapping stage)")
    saved = TrainConfig.from_dict(read_json(run / TRAIN_CONFIG_FILE, "training options of the run")["train"])
    dataset = load_dataset(config.data or saved.data, split="train", resolution=saved.resolution, augment=saved.augment,
                           layout=config.layout or saved.layout, toy_n=config.toy_n or saved.toy_n, seed=config.seed)

    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    with readable_weights(run / "model.safetensors"):
        generator = SISModel.from_pretrained(run, device=accelerator.device, dtype=torch.float32).requires_grad_(False).eval()
    if generator.config.num_classes != dataset.num_classes:
        raise ValueError(f"--data has {dataset.num_classes} classes but the model in {run} has {generator.config.num_classes}")
    torch.manual_seed(config.seed)
    mapping = MappingNetwork(generator.config)
    with readable_weights(run / "discriminator.safetensors"):
        discriminator = load_safetensors(build_discriminator(generator.config), run / "discriminator.safetensors")
    opt_m = adam(mapping.parameters(), lr=config.lr, betas=config.betas)
    opt_d = adam(discriminator.parameters(), lr=config.lr_d, betas=config.betas)
    start_step = 0
    if resume:
        state = load_training_state(run / MAPPING_CHECKPOINT_DIR, modules={"mapping": mapping, "discriminator": discriminator},
                                    optimizers={"mapping": opt_m, "discriminator": opt_d})
        start_step = int(state["step"])
    mapping, discriminator, opt_m, opt_d = accelerator.prepare(mapping, discriminator, opt_m, opt_d)
    plain_d = accelerator.unwrap_model(discriminator)
    use_attention = generator.config.arch == "ca2sis" and config.lambda_att > 0
    log = RunLog(run / "mapping_log.jsonl", keep_until_step=start_step if start_step else None) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        atomic_write_json(run / "mapping_config.json", config.to_dict())

    def save_checkpoint(step: int) -> None:
        if accelerator.is_main_process:
            save_training_state(run / MAPPING_CHECKPOINT_DIR, modules={"mapping": accelerator.unwrap_model(mapping), "discriminator": plain_d},
                                optimizers={"mapping": opt_m, "discriminator": opt_d},
                                state={"step": step, "seed": config.seed, "processes": accelerator.num_processes})
        accelerator.wait_for_everyone()

    loader = _loader(dataset, batch_size=config.batch_size, total_steps=config.steps, start_step=start_step, seed=config.seed,
                     accelerator=accelerator, num_workers=config.num_workers)
    bar = _progress(progress and accelerator.is_main_process, config.steps, start_step, "sis mapping")
    latent = generator.config.mapping_latent_dim
    bank_tokens = bank_present = None
    if config.lambda_token or config.token_steps:
        bank_tokens, bank_present = _real_token_bank(generator, dataset, config.token_bank, accelerator.device)
    if config.token_steps and start_step == 0:  # token-only warm start (a resumed stage has done it already)
        _fit_tokens(accelerator.unwrap_model(mapping), bank_tokens, bank_present, config)
    last: dict[str, Any] = {}
    final_step = start_step
    try:
        for step, batch in enumerate(_batches(loader), start=start_step):
            torch.manual_seed(mix_seed(config.seed, 0x3A99, step, accelerator.process_index))
            image = batch["image"].to(accelerator.device)
            onehot = labels_to_onehot(batch["labels"].to(accelerator.device), dataset.num_classes)
            n = image.shape[0]
            present = present_classes(onehot)
            shape = generator.embed_shape(onehot)
            plain_d.requires_grad_(False)
            with accelerator.autocast():
                z = torch.randn(n * (2 if config.lambda_div else 1), latent, device=accelerator.device)
                style = mapping(z, present.repeat(2 if config.lambda_div else 1, 1))
                copies = 2 if config.lambda_div else 1  # shape: tokens [B, C', D] (CA²-SIS) or the one-hot [B, C, H, W] (SPADE)
                fake, logits = generator.decode(shape.repeat(copies, *[1] * (shape.ndim - 1)), style, return_attention=True)
                fake_out = plain_d(fake[:n], onehot)
                stats = {"loss/M/gan": hinge_g_loss(fake_out)}
                total = stats["loss/M/gan"]
                if use_attention:
                    stats["loss/M/att"] = attention_loss([l[:n].float() for l in logits], onehot)
                    total = total + config.lambda_att * stats["loss/M/att"]
                if config.lambda_div:
                    stats["loss/M/diversity"] = (fake[:n] - fake[n:]).abs().mean()
                    total = total - config.lambda_div * stats["loss/M/diversity"]
                if config.lambda_token:
                    stats["loss/M/token"] = _token_match(mapping, bank_tokens, bank_present, config.token_batch, latent)
                    total = total + config.lambda_token * stats["loss/M/token"]
            stats["loss/M/total"] = total
            opt_m.zero_grad(set_to_none=True)
            accelerator.backward(total)
            opt_m.step()
            plain_d.requires_grad_(True)
            with accelerator.autocast():
                fake_out, real_out = split_outputs(discriminator(torch.cat([fake[:n].detach(), image]), torch.cat([onehot, onehot])), n)
                loss_d = hinge_d_loss(real_out, fake_out)
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(loss_d)
            opt_d.step()
            stats["loss/D/total"] = loss_d
            final_step = step + 1
            if final_step % config.log_every == 0 or final_step == config.steps:
                last = {"step": final_step, **_reduce_stats(accelerator, {k: v.detach() for k, v in stats.items()})}
                if log is not None:
                    log.write(last)
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=final_step)
            if config.checkpoint_every and final_step % config.checkpoint_every == 0 and final_step != config.steps:
                save_checkpoint(final_step)
    finally:
        if bar is not None:
            bar.stop()
    save_checkpoint(final_step)
    if accelerator.is_main_process:
        save_safetensors(accelerator.unwrap_model(mapping), run / MAPPING_WEIGHTS)
        accelerator.print(f"mapping network trained to step {final_step}: {run / MAPPING_WEIGHTS}")
    accelerator.wait_for_everyone()
    return TrainResult(out=run, step=final_step, last_log=last)
