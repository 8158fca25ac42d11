"""Evaluating a trained SIS model: reconstruction quality, optional FID/LPIPS/mIoU, toy-face oracles, mask noise.

``evaluate(EvalConfig)`` (a checkpoint on disk) and ``evaluate_model`` (a model in memory, e.g. the
trainer's EMA generator for its learning curve) return one JSON-able report:

* ``reconstruction`` — PSNR and SSIM (11×11 Gaussian, σ 1.5) of the model's reconstruction of each
  test image from its own mask and style; FID (reconstructions vs real test images), LPIPS and mIoU
  only when their networks are given locally, otherwise listed under ``off`` with the reason;
* ``toy`` (toy faces only, exact oracles of :mod:`attnsynth.toyworld.faces`) — reconstruction
  style error, global consistency of reconstructions and of local transfers (real images for
  reference; ``global_consistency/transfer`` after the first group's transfer,
  ``global_consistency/transfer/<group>`` after each group's), and per-group style-transfer
  accuracy: transferred classes must take the reference style, the other classes keep theirs;
* ``mask_noise`` — the same metrics with masks perturbed at each noise level
  (:func:`attnsynth.data.mask_noise.perturb_labels`), as rows of a table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from attnsynth.utils.images import to_uint8

DEFAULT_NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2)
DEFAULT_TRANSFER_GROUPS = ("hair", "skin", "eyes", "mouth", "background")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Options of ``attnsynth sis evaluate``."""

    checkpoint: str  # trained run directory
    data: str  # dataset directory or "toy-faces"
    n: int = 100  # number of test images (fewer if the split is smaller)
    split: str = "test"  # "test" (CelebAMask-HQ, toy) or "val" (ADE20K)
    batch_size: int = 8
    noise_levels: tuple[float, ...] = DEFAULT_NOISE_LEVELS
    transfer_groups: tuple[str, ...] = DEFAULT_TRANSFER_GROUPS  # toy faces: class groups to transfer
    inception_weights: str | None = None  # TorchScript FID Inception (pt_inception-2015-12-05*.pth)
    lpips_weights: str | None = None  # TorchScript LPIPS module: (x, y) in [-1, 1] → distances [B]
    segmenter: str | None = None  # TorchScript segmenter: image in [-1, 1] → logits [B, C, H, W]
    layout: str = "auto"
    seed: int = 0  # toy-faces scenes and mask noise
    device: str | None = None  # default: cuda if available, else cpu

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_levels", tuple(float(v) for v in self.noise_levels))
        object.__setattr__(self, "transfer_groups", tuple(self.transfer_groups))
        for name in ("n", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EvalConfig.{name}={value!r} is invalid: expected an integer >= 1")
        if any(not 0.0 <= v <= 1.0 for v in self.noise_levels):
            raise ValueError(f"EvalConfig.noise_levels={self.noise_levels!r} is invalid: expected fractions in [0, 1]")
        for name in ("inception_weights", "lpips_weights", "segmenter"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"--{name.replace('_', '-')} {path} does not exist")


def _load_script(path: str, device: torch.device, what: str) -> Callable:
    """A local TorchScript module (no pickle of arbitrary Python objects)."""
    try:
        return torch.jit.load(path, map_location=device).eval()
    except RuntimeError as error:
        raise ValueError(f"{what} {path} is not a TorchScript file: {str(error).splitlines()[0]}") from None


def _toy_records(dataset, indices: list[int]):
    """Ground-truth records of toy faces (on-the-fly scenes or an export with ``records/``), else None."""
    from attnsynth.data.toy import ToyFaces

    if isinstance(dataset, ToyFaces):
        return [dataset.scene(i).record for i in indices]
    pairs = getattr(dataset, "pairs", None)
    if not pairs:
        return None
    paths = [pairs[i][1].parent.parent / "records" / f"{pairs[i][1].stem}.json" for i in indices]
    if not all(p.is_file() for p in paths):
        return None
    from attnsynth.toyworld import faces

    return [faces.load_record(p) for p in paths]


def _batches(items: list[int], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Quality:
    """Accumulates PSNR/SSIM (+ FID, LPIPS, mIoU when available) over batches."""

    def __init__(self, *, fid_features, lpips, segmenter, num_classes: int) -> None:
        from attnsynth.metrics import FID, MeanIoU

        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.lpips_values: list[float] = []
        self.lpips = lpips
        self.segmenter = segmenter
        self.fid = FID(fid_features) if fid_features is not None else None
        self.miou = MeanIoU(num_classes=num_classes) if segmenter is not None else None

    @torch.no_grad()
    def update(self, fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor) -> None:
        from attnsynth.metrics import psnr, ssim

        fake, real = fake.float().clamp(-1, 1), real.float()
        self.psnr += psnr(fake, real).tolist()
        if min(real.shape[-2:]) >= 11:
            self.ssim += ssim(fake, real).tolist()
        if self.lpips is not None:
            self.lpips_values += self.lpips(fake, real).flatten().float().tolist()
        if self.fid is not None:
            self.fid.update(real, real=True)
            self.fid.update(fake, real=False)
        if self.miou is not None:
            self.miou.update(self.segmenter(fake).argmax(dim=1), labels)

    def report(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {"psnr": _mean(self.psnr), "ssim": _mean(self.ssim) if self.ssim else None}
        if self.lpips is not None:
            out["lpips"] = _mean(self.lpips_values)
        if self.fid is not None:
            out["fid"] = self.fid.compute() if self.fid.real.count >= 2 else None
        if self.miou is not None:
            out["miou"] = self.miou.compute()
        return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    if len(finite) < len(values):  # identical images give inf PSNR; report it rather than hide it
        return float("inf")
    return float(np.mean(values)) if values else float("nan")


@torch.no_grad()
def evaluate(config: EvalConfig, *, progress: bool = False) -> dict[str, Any]:
    """Run every available metric on ``config.n`` test images; see the module docstring."""
    from attnsynth.data import load_dataset
    from attnsynth.sis import edits

    # 1. model, data, optional networks
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, label_set = edits.load_model(config.checkpoint, device=device)
    resolution = model.config.resolution
    dataset = load_dataset(config.data, split=config.split, resolution=resolution, augment=False, layout=config.layout, toy_n=config.n, seed=config.seed)
    if dataset.num_classes != model.config.num_classes:
        raise ValueError(f"--data has {dataset.num_classes} classes but the model in {config.checkpoint} has {model.config.num_classes}")
    off: dict[str, str] = {}
    fid_features = None
    if config.inception_weights:
        from attnsynth.metrics.fid import load_inception

        fid_features = load_inception(config.inception_weights, device=device)
    else:
        off["fid"] = "no --inception-weights (a local TorchScript FID Inception-v3) given"
    lpips = _load_script(config.lpips_weights, device, "--lpips-weights") if config.lpips_weights else None
    if lpips is None:
        off["lpips"] = "no --lpips-weights (a local TorchScript LPIPS module) given"
    segmenter = _load_script(config.segmenter, device, "--segmenter") if config.segmenter else None
    if segmenter is None:
        off["miou"] = "no --segmenter (a local TorchScript segmentation network) given"
    report = evaluate_model(model, label_set, dataset, n=config.n, batch_size=config.batch_size, noise_levels=config.noise_levels,
                            transfer_groups=config.transfer_groups, seed=config.seed, fid_features=fid_features, lpips=lpips,
                            segmenter=segmenter, progress=progress)
    report = {"checkpoint": str(config.checkpoint), "data": str(config.data), "split": config.split, **report}
    report["off"] = {**off, **report["off"]}
    return report


@torch.no_grad()
def evaluate_model(model, label_set, dataset, *, n: int, batch_size: int = 8, noise_levels: tuple[float, ...] = DEFAULT_NOISE_LEVELS,
                   transfer_groups: tuple[str, ...] = DEFAULT_TRANSFER_GROUPS, seed: int = 0, fid_features=None, lpips=None,
                   segmenter=None, progress: bool = False, per_image: bool = False) -> dict[str, Any]:
    """The report of :func:`evaluate` for an in-memory ``model`` on the first ``n`` items of ``dataset``.

    The trainer calls it on its EMA generator for the learning curve. ``per_image`` adds
    ``per_image``: each face's reconstruction PSNR, style error and global consistencies and each
    group's transfer verdicts (for bootstrap intervals over faces).
    """
    from attnsynth.data.mask_noise import perturb_labels
    from attnsynth.sis.model import labels_to_onehot

    device = model.device
    was_training = model.training
    model.eval()
    resolution = model.config.resolution
    indices = list(range(min(n, len(dataset))))
    off: dict[str, str] = {}
    records = _toy_records(dataset, indices)
    if records is None:
        off["toy"] = "not toy faces (no ground-truth records)"

    # 2. loop over batches: clean reconstruction, then every noise level
    levels = tuple(dict.fromkeys((0.0, *noise_levels)))
    quality = {level: _Quality(fid_features=fid_features if level == 0.0 else None, lpips=lpips, segmenter=segmenter, num_classes=model.config.num_classes) for level in levels}
    toy: dict[str, list[float]] = {}
    noise_changed: dict[float, list[float]] = {level: [] for level in levels}
    noise_style: dict[float, list[float]] = {level: [] for level in levels}
    transfer_stats: dict[str, dict[str, list[bool]]] = {g: {"transferred": [], "kept": []} for g in transfer_groups}
    transfer_per_image: dict[str, list[dict[str, float]]] = {g: [] for g in transfer_groups}
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("sis evaluate", total=len(indices))
    try:
        for batch_indices in _batches(indices, batch_size):
            items = [dataset[i] for i in batch_indices]
            image = torch.stack([it["image"] for it in items]).to(device)
            labels = torch.stack([it["labels"] for it in items]).to(device)
            batch_records = [records[indices.index(i)] for i in batch_indices] if records else None
            for level in levels:
                generator = torch.Generator().manual_seed(seed * 7919 + int(level * 1e6))
                noisy = labels if level == 0.0 else torch.stack([perturb_labels(l, level, generator=generator) for l in labels])
                fake = model(image.to(model.dtype), labels_to_onehot(noisy, model.config.num_classes, dtype=model.dtype))
                quality[level].update(fake, image, labels)
                noise_changed[level] += (noisy != labels).float().flatten(1).mean(1).tolist()
                if batch_records:
                    from attnsynth.toyworld import faces

                    for k, record in enumerate(batch_records):
                        noise_style[level].append(faces.style_error(to_uint8(fake[k]), noisy[k].cpu().numpy(), record))
                        if level == 0.0:
                            toy.setdefault("global_consistency/reconstruction", []).append(faces.global_consistency(to_uint8(fake[k]), labels[k].cpu().numpy()))
                            toy.setdefault("global_consistency/real", []).append(faces.global_consistency(to_uint8(image[k]), labels[k].cpu().numpy()))
            if batch_records and len(indices) > 1:
                _transfer_scores(model, dataset, indices, batch_indices, image, labels, records, transfer_groups, label_set, transfer_stats, toy,
                                 transfer_per_image)
            if bar is not None:
                bar.update(task, advance=len(batch_indices))
    finally:
        if bar is not None:
            bar.stop()
        model.train(was_training)

    # 3. the report
    report: dict[str, Any] = {
        "n": len(indices),
        "resolution": list(resolution),
        "arch": model.config.arch,
        "reconstruction": quality[0.0].report(),
        "off": off,
    }
    if records:
        report["toy"] = {
            "style_error/reconstruction": _mean(noise_style[0.0]),
            **{k: _mean(v) for k, v in toy.items()},
        }
        if len(indices) > 1:
            report["toy"]["transfer_accuracy"] = {g: {k: (float(np.mean(v)) if v else None) for k, v in s.items()} for g, s in transfer_stats.items()}
        else:
            off["transfer_accuracy"] = "needs n >= 2 (each image takes styles from the next)"
    rows = []
    for level in noise_levels:
        row = {"level": level, "changed_pixels": _mean(noise_changed[level]), **{k: v for k, v in quality[level].report().items() if k != "fid"}}
        if records:
            row["style_error"] = _mean(noise_style[level])
        rows.append(row)
    report["mask_noise"] = rows
    if per_image:
        report["per_image"] = {
            "psnr": {str(level): quality[level].psnr for level in levels},
            "style_error": {str(level): noise_style[level] for level in levels},
            **{k: v for k, v in toy.items()},
            "transfer": transfer_per_image,
        }
    return report


def _transfer_scores(model, dataset, indices, batch_indices, image, labels, records, groups, label_set, stats, toy, per_image) -> None:
    """Toy faces: transfer each class group from the next test image; score with the exact oracle."""
    from attnsynth.sis import edits
    from attnsynth.toyworld import faces

    positions = [indices.index(i) for i in batch_indices]
    partners = [indices[(p + 1) % len(indices)] for p in positions]
    ref_items = [dataset[j] for j in partners]
    reference = torch.stack([it["image"] for it in ref_items]).to(image.device)
    reference_labels = torch.stack([it["labels"] for it in ref_items]).to(image.device)
    for group in groups:
        ids = set(label_set.resolve(group))
        result = edits.transfer(model, image, labels, reference, reference_labels, classes=group, label_set=label_set)
        for k, p in enumerate(positions):
            out, lab = to_uint8(result.images[k]), labels[k].cpu().numpy()
            original, reference_record = records[p], records[(p + 1) % len(indices)]
            verdicts = faces.per_class_transfer(out, lab, original, reference_record, sorted(ids))
            for c, ok in verdicts.items():
                stats[group]["transferred" if c in ids else "kept"].append(ok)
            moved = [ok for c, ok in verdicts.items() if c in ids]
            kept = [ok for c, ok in verdicts.items() if c not in ids]
            per_image[group].append({"transferred": float(np.mean(moved)) if moved else float("nan"),
                                     "kept": float(np.mean(kept)) if kept else float("nan"),
                                     "n_transferred": len(moved), "n_kept": len(kept)})
            consistency = faces.global_consistency(out, lab)
            toy.setdefault(f"global_consistency/transfer/{group}", []).append(consistency)
            if group == groups[0]:
                toy.setdefault("global_consistency/transfer", []).append(consistency)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable tables of an :func:`evaluate` report."""
    lines = [f"{report['arch']} model {report['checkpoint']} on {report['data']} ({report['split']}, n={report['n']}, {report['resolution'][0]}×{report['resolution'][1]})", ""]
    lines.append("reconstruction")
    for key, value in report["reconstruction"].items():
        lines.append(f"  {key:<12} {_fmt(value)}")
    if "toy" in report:
        lines += ["", "toy-face oracles"]
        for key, value in report["toy"].items():
            if key != "transfer_accuracy":
                lines.append(f"  {key:<36} {_fmt(value)}")
        if "transfer_accuracy" in report["toy"]:
            lines += ["", "  style-transfer accuracy   transferred   kept"]
            for group, values in report["toy"]["transfer_accuracy"].items():
                lines.append(f"  {group:<25} {_fmt(values['transferred']):>11}   {_fmt(values['kept']):>6}")
    columns = [k for k in report["mask_noise"][0] if k != "level"] if report["mask_noise"] else []
    if columns:
        lines += ["", "mask-noise robustness", "  " + "  ".join(f"{c:>14}" for c in ["level", *columns])]
        for row in report["mask_noise"]:
            lines.append("  " + "  ".join(f"{_fmt(row[c]):>14}" for c in ["level", *columns]))
    if report["off"]:
        lines += ["", "off"]
        lines += [f"  {key}: {reason}" for key, reason in report["off"].items()]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:.4f}"
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def to_json(report: dict[str, Any]) -> str:
    """The report as strict JSON (inf → "inf", NaN → null)."""
    return json.dumps(_plain(report), indent=2)
