"""`attnsynth sis …`: CA²-SIS semantic image synthesis (train, edit, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="CA²-SIS semantic image synthesis: train, reconstruct, transfer, swap-shape, interpolate, sample, evaluate, export.", no_args_is_help=True)


@app.command("info")
def info_command(
    config: str = typer.Option("faithful", "--config", help="Model config: small, faithful, spade-small, spade-faithful."),
    classes: int = typer.Option(19, "--classes", help="Number of semantic classes C (incl. background)."),
    resolution: str = typer.Option("256", "--resolution", help="Image size: R (square) or HxW, e.g. 256x512."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the parameter count of each module of a SIS config (built on the meta device, no weights)."""
    import json

    from attnsynth.sis.configs import get_config
    from attnsynth.sis.model import parameter_counts
    from attnsynth.utils.images import parse_resolution

    try:
        size = parse_resolution(resolution)
    except ValueError as error:
        raise ValueError(f"--resolution: {error}") from None
    counts = parameter_counts(get_config(config, num_classes=classes, resolution=size))
    if as_json:
        typer.echo(json.dumps(counts, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{config} · {classes} classes · {size[0]}×{size[1]}")
    table.add_column("module")
    table.add_column("parameters", justify="right")
    table.add_column("millions", justify="right")
    for name, value in counts.items():
        table.add_row(name, f"{value:,}", f"{value / 1e6:.2f} M")
    Console().print(table)


# ---- training, editing and evaluation (thin wrappers around attnsynth.sis.trainer / edits / evaluate) ----
def _resolution(text: str) -> tuple[int, int]:
    from attnsynth.utils.images import parse_resolution

    try:
        return parse_resolution(text)
    except ValueError as error:
        raise ValueError(f"--resolution: {error}") from None


@app.command("train")
def train_command(
    data: str = typer.Option(..., "--data", help="Dataset directory (SEAN/CelebAMask-HQ, ADE20K, images/+labels/) or 'toy-faces'."),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoint/, samples/, log.jsonl, final model)."),
    config: str = typer.Option("small", "--config", help="Model preset: small, faithful, spade-small, spade-faithful."),
    resolution: str = typer.Option("64", "--resolution", help="Training size: R or HxW."),
    steps: int = typer.Option(1000, "--steps", help="Total optimisation steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Batch per process."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    vgg_weights: Optional[Path] = typer.Option(None, "--vgg-weights", help="Local VGG19 weights; without them the perceptual loss is OFF."),
    lr_g: float = typer.Option(1e-4, "--lr-g", help="Generator learning rate (TTUR)."),
    lr_d: float = typer.Option(4e-4, "--lr-d", help="Discriminator learning rate (TTUR)."),
    lambda_fm: float = typer.Option(10.0, "--lambda-fm", help="Weight of discriminator feature matching."),
    lambda_vgg: float = typer.Option(10.0, "--lambda-vgg", help="Weight of the VGG19 perceptual loss (needs --vgg-weights)."),
    lambda_att: float = typer.Option(1.0, "--lambda-att", help="Weight of the attention loss L_att (CA²-SIS only)."),
    lambda_l1: float = typer.Option(0.0, "--lambda-l1", help="Weight of a pixel L1 reconstruction loss (0 in the paper; needs no weights)."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, fp16 or bf16 (GPU)."),
    sample_every: int = typer.Option(500, "--sample-every", help="Sample grid period in steps (0: only at the end)."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Checkpoint period in steps (0: only at the end)."),
    log_every: int = typer.Option(10, "--log-every", help="log.jsonl period in steps."),
    eval_every: int = typer.Option(0, "--eval-every", help="Learning curve: evaluate the EMA generator on held-out data every N steps into eval.jsonl (0: never)."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out dataset of the learning curve (its test split; default: the test split of --data)."),
    eval_n: int = typer.Option(50, "--eval-n", help="Held-out images per learning-curve evaluation."),
    seed: int = typer.Option(0, "--seed", help="Seed of init, data order, augmentation and per-step RNG."),
    toy_n: int = typer.Option(512, "--toy-n", help="Number of scenes for --data toy-faces."),
    layout: str = typer.Option("auto", "--layout", help="Dataset layout: auto, celebamask, ade20k, folder."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader workers per process."),
    no_augment: bool = typer.Option(False, "--no-augment", help="No resize/crop/flip augmentation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved options as JSON and exit."),
) -> None:
    """Train CA²-SIS (or the SPADE baseline); many GPUs: `accelerate launch --multi_gpu "$(which attnsynth)" sis train …`."""
    import json

    from attnsynth.sis.train_config import TrainConfig

    cfg = TrainConfig(data=data, out=str(out), config=config, resolution=_resolution(resolution), steps=steps, batch_size=batch_size,
                      lr_g=lr_g, lr_d=lr_d, lambda_fm=lambda_fm, lambda_vgg=lambda_vgg, lambda_att=lambda_att, lambda_l1=lambda_l1,
                      vgg_weights=str(vgg_weights) if vgg_weights else None, mixed_precision=mixed_precision,
                      sample_every=sample_every, checkpoint_every=checkpoint_every, log_every=log_every,
                      eval_every=eval_every, eval_data=eval_data, eval_n=eval_n, seed=seed, toy_n=toy_n,
                      layout=layout, num_workers=num_workers, augment=not no_augment)
    if dry_run:
        typer.echo(json.dumps(cfg.to_dict(), indent=2))
        return
    from attnsynth.sis.trainer import train

    train(cfg, resume=resume, progress=True)


@app.command("train-mapping")
def train_mapping_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A finished `sis train` run directory."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset (default: the run's)."),
    steps: int = typer.Option(1000, "--steps", help="GAN steps (0 with --token-steps: the token fit alone)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Batch per process."),
    lr: float = typer.Option(1e-4, "--lr", help="Mapping network learning rate."),
    lr_d: float = typer.Option(4e-4, "--lr-d", help="Discriminator learning rate."),
    lambda_div: float = typer.Option(0.0, "--lambda-div", help="Weight of the diversity term (0: off)."),
    lambda_token: float = typer.Option(0.0, "--lambda-token", help="Opt-in, not the authors': weight of a sliced-Wasserstein "
                                       "match of the mapped tokens to real faces' style tokens (0: off)."),
    token_steps: int = typer.Option(0, "--token-steps", help="Opt-in, not the authors': token-only steps (the sliced-Wasserstein "
                                    "match alone, no generator: fast) before the GAN steps."),
    token_bank: int = typer.Option(512, "--token-bank", help="Training faces whose style tokens the token match uses."),
    token_batch: int = typer.Option(64, "--token-batch", help="Mapped / real token sets per token-match step."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/mapping_checkpoint."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, fp16 or bf16 (GPU)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    toy_n: Optional[int] = typer.Option(None, "--toy-n", help="Number of scenes for --data toy-faces (default: the run's)."),
) -> None:
    """Train the random-style mapping network with the run's generator frozen (writes RUN/mapping.safetensors)."""
    from attnsynth.sis.train_config import MappingTrainConfig
    from attnsynth.sis.trainer import train_mapping

    cfg = MappingTrainConfig(run=str(checkpoint), data=data, steps=steps, batch_size=batch_size, lr=lr, lr_d=lr_d,
                             lambda_div=lambda_div, lambda_token=lambda_token, token_steps=token_steps, token_bank=token_bank,
                             token_batch=token_batch, mixed_precision=mixed_precision, seed=seed, toy_n=toy_n)
    train_mapping(cfg, resume=resume, progress=True)


@app.command("export")
def export_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A finished `sis train` run directory."),
    out: Path = typer.Option(..., "--out", help="Directory to write (config, EMA generator, mapping network, discriminator, label set)."),
    dtype: str = typer.Option("fp16", "--dtype", help="Storage dtype of the weights: fp16, bf16 or fp32 (loading casts back to float32)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Copy a finished run into a small directory for shipping (no optimiser state; weights in --dtype)."""
    import torch

    from attnsynth.sis.checkpoint import export_run

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"--dtype {dtype!r} is invalid; expected fp16, bf16 or fp32")
    path = export_run(checkpoint, out, dtype=dtypes[dtype], overwrite=overwrite)
    size = sum(p.stat().st_size for p in path.iterdir())
    typer.echo(f"wrote {path} ({size / 1e6:.2f} MB: {', '.join(sorted(p.name for p in path.iterdir()))})")


def _device(name: Optional[str]):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _check_png(out: Path) -> None:
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must be a .png file")


def _load(checkpoint: Path, device: Optional[str]):
    from attnsynth.sis.edits import load_model

    return load_model(checkpoint, device=_device(device))


def _pair(model, image: Optional[Path], mask: Path):
    from attnsynth.sis.edits import load_pair

    return load_pair(image, mask, resolution=model.config.resolution, num_classes=model.config.num_classes)


def _write(result, out: Path, save_attention: Optional[Path], label_set, masks) -> None:
    """Write the output strip and, if asked, per-class attention overlays (everything was computed first)."""
    import torch

    from attnsynth.sis.visuals import attention_overlays, strip
    from attnsynth.utils.io import atomic_directory, atomic_save_png

    overlays = None
    if save_attention is not None:
        present = sorted(set(torch.cat([m.flatten() for m in masks]).unique().tolist()))
        overlays = attention_overlays(result.images, result.attention or [], present, label_set.class_names)
    atomic_save_png(out, strip(result.images))
    if overlays is not None:
        with atomic_directory(save_attention, overwrite=True) as tmp:
            from attnsynth.utils.io import png_bytes

            for name, array in overlays.items():
                (tmp / name).write_bytes(png_bytes(array))
    typer.echo(f"wrote {out}" + (f" and {len(overlays)} attention overlays in {save_attention}" if overlays else ""))


_CHECKPOINT = typer.Option(..., "--checkpoint", help="Trained run directory (config.json + model.safetensors).")
_IMAGE = typer.Option(..., "--image", help="Input image.")
_MASK = typer.Option(..., "--mask", help="Label map of --image (single-channel PNG of class ids).")
_OUT = typer.Option(..., "--out", help="Output PNG (several results are laid out side by side).")
_ATTENTION = typer.Option(None, "--save-attention", help="Directory for per-class attention overlays (PNG).")
_DEVICE = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu).")


@app.command("reconstruct")
def reconstruct_command(checkpoint: Path = _CHECKPOINT, image: Path = _IMAGE, mask: Path = _MASK, out: Path = _OUT,
                        save_attention: Optional[Path] = _ATTENTION, device: Optional[str] = _DEVICE) -> None:
    """Re-synthesise an image from its own mask and style."""
    from attnsynth.sis.edits import reconstruct

    _check_png(out)
    model, label_set = _load(checkpoint, device)
    pixels, labels = _pair(model, image, mask)
    result = reconstruct(model, pixels, labels, return_attention=save_attention is not None)
    _write(result, out, save_attention, label_set, [labels])


@app.command("transfer")
def transfer_command(checkpoint: Path = _CHECKPOINT, image: Path = _IMAGE, mask: Path = _MASK,
                     reference: Path = typer.Option(..., "--reference", help="Style reference image."),
                     reference_mask: Path = typer.Option(..., "--reference-mask", help="Label map of --reference."),
                     classes: Optional[str] = typer.Option(None, "--classes", help="Classes to transfer: names, ids or presets (hair,skin | 4,5 | eyes); default all."),
                     out: Path = _OUT, save_attention: Optional[Path] = _ATTENTION, device: Optional[str] = _DEVICE) -> None:
    """Transfer the style of some classes (or all) from a reference image."""
    from attnsynth.sis.edits import resolve_classes, transfer

    _check_png(out)
    model, label_set = _load(checkpoint, device)
    if classes is not None:
        resolve_classes(classes, label_set, model.config.num_classes)  # reject unknown names before reading images
    pixels, labels = _pair(model, image, mask)
    ref_pixels, ref_labels = _pair(model, reference, reference_mask)
    result = transfer(model, pixels, labels, ref_pixels, ref_labels, classes=classes, label_set=label_set, return_attention=save_attention is not None)
    _write(result, out, save_attention, label_set, [labels])


@app.command("swap-shape")
def swap_shape_command(checkpoint: Path = _CHECKPOINT, image: Path = _IMAGE, mask: Path = _MASK,
                       donor_mask: Path = typer.Option(..., "--donor-mask", help="Label map whose class shapes are taken."),
                       classes: str = typer.Option(..., "--classes", help="Classes whose shape tokens are swapped (names, ids or presets)."),
                       out: Path = _OUT, save_attention: Optional[Path] = _ATTENTION, device: Optional[str] = _DEVICE) -> None:
    """Give some classes the shape they have in a donor mask, without redrawing the mask."""
    from attnsynth.sis.edits import resolve_classes, swap_shape

    _check_png(out)
    model, label_set = _load(checkpoint, device)
    resolve_classes(classes, label_set, model.config.num_classes)
    pixels, labels = _pair(model, image, mask)
    _, donor = _pair(model, None, donor_mask)
    result = swap_shape(model, pixels, labels, donor, classes=classes, label_set=label_set, return_attention=save_attention is not None)
    _write(result, out, save_attention, label_set, [labels, donor])


def _parse_alphas(alpha: Optional[float], alphas: Optional[str]) -> list[float]:
    if alphas is None:
        return [0.5 if alpha is None else alpha]
    if alpha is not None:
        raise ValueError("give either --alpha or --alphas, not both")
    try:
        return [float(a) for a in alphas.split(",")]
    except ValueError:
        raise ValueError(f"--alphas {alphas!r} must be comma-separated numbers, e.g. 0,0.25,0.5") from None


@app.command("interpolate")
def interpolate_command(checkpoint: Path = _CHECKPOINT, image: Path = _IMAGE, mask: Path = _MASK,
                        other_mask: Path = typer.Option(..., "--other-mask", help="Label map to blend towards."),
                        other_image: Optional[Path] = typer.Option(None, "--other-image", help="Image of --other-mask (needed for --what style)."),
                        what: str = typer.Option("shape", "--what", help="Blend 'shape' or 'style' tokens."),
                        alpha: Optional[float] = typer.Option(None, "--alpha", help="One blend weight (default 0.5)."),
                        alphas: Optional[str] = typer.Option(None, "--alphas", help="Several weights, e.g. 0,0.25,0.5,0.75,1."),
                        classes: Optional[str] = typer.Option(None, "--classes", help="Classes to blend (default all)."),
                        out: Path = _OUT, save_attention: Optional[Path] = _ATTENTION, device: Optional[str] = _DEVICE) -> None:
    """Morph shape tokens or style tokens towards another image's: (1 − α)·own + α·other."""
    from attnsynth.sis.edits import interpolate, resolve_classes

    _check_png(out)
    if what not in ("shape", "style"):
        raise ValueError(f"--what {what!r} is invalid; expected shape or style")
    if what == "style" and other_image is None:
        raise ValueError("--what style needs --other-image (the style source)")
    weights = _parse_alphas(alpha, alphas)
    model, label_set = _load(checkpoint, device)
    if classes is not None:
        resolve_classes(classes, label_set, model.config.num_classes)
    pixels, labels = _pair(model, image, mask)
    other_pixels, other_labels = _pair(model, other_image, other_mask)
    result = interpolate(model, pixels, labels, other_pixels, other_labels, what=what, alpha=weights, classes=classes, label_set=label_set, return_attention=save_attention is not None)
    _write(result, out, save_attention, label_set, [labels, other_labels])


@app.command("sample")
def sample_command(checkpoint: Path = _CHECKPOINT, mask: Path = _MASK,
                   n: int = typer.Option(4, "--n", help="Number of random styles."),
                   seed: int = typer.Option(0, "--seed", help="Seed of the style noise."),
                   out: Path = _OUT, save_attention: Optional[Path] = _ATTENTION, device: Optional[str] = _DEVICE) -> None:
    """Random styles for one mask through the mapping network (train it with `sis train-mapping`)."""
    from attnsynth.sis.edits import load_mapping, sample

    _check_png(out)
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    model, label_set = _load(checkpoint, device)
    mapping = load_mapping(checkpoint, model)
    _, labels = _pair(model, None, mask)
    result = sample(model, mapping, labels, n=n, seed=seed, return_attention=save_attention is not None)
    _write(result, out, save_attention, label_set, [labels])


@app.command("evaluate")
def evaluate_command(
    checkpoint: Path = _CHECKPOINT,
    data: str = typer.Option(..., "--data", help="Dataset directory or 'toy-faces' (exact oracles)."),
    n: int = typer.Option(100, "--n", help="Number of test images."),
    split: str = typer.Option("test", "--split", help="test (CelebAMask-HQ, toy) or val (ADE20K)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
    noise_levels: str = typer.Option("0,0.05,0.1,0.2", "--noise-levels", help="Mask-noise levels (fractions of pixels changed)."),
    transfer: str = typer.Option("hair;skin;eyes;mouth;background", "--transfer-groups", help="Toy faces: class groups to transfer, ';'-separated."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="Local TorchScript FID Inception-v3; FID is off without it."),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help="Local TorchScript LPIPS module; LPIPS is off without it."),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="Local TorchScript segmenter for mIoU; off without it."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    seed: int = typer.Option(0, "--seed", help="Seed of toy scenes and mask noise."),
    device: Optional[str] = _DEVICE,
) -> None:
    """Reconstruction PSNR/SSIM (+ FID/LPIPS/mIoU with local weights), toy-face oracles, mask-noise table."""
    from attnsynth.sis.evaluate import EvalConfig, evaluate, format_report, to_json

    try:
        levels = tuple(float(v) for v in noise_levels.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--noise-levels {noise_levels!r} must be comma-separated fractions, e.g. 0,0.05,0.1") from None
    cfg = EvalConfig(checkpoint=str(checkpoint), data=data, n=n, split=split, batch_size=batch_size, noise_levels=levels,
                     transfer_groups=tuple(g.strip() for g in transfer.split(";") if g.strip()),
                     inception_weights=str(inception_weights) if inception_weights else None,
                     lpips_weights=str(lpips_weights) if lpips_weights else None,
                     segmenter=str(segmenter) if segmenter else None, seed=seed, device=device)
    report = evaluate(cfg, progress=not as_json)
    typer.echo(to_json(report) if as_json else format_report(report))

from attnsynth.cli import sis_official  # noqa: E402,F401  (registers `sis import-official`)
