"""The authors' CA²-SIS checkpoints (TFonta/CA2SIS ``latest_net_G.pth`` / ``latest_net_D.pth``) ↔ attnsynth tensors.

Their generator's state dict holds the mask encoder (``encs.*``), the style encoder
(``style_encoder.*``), the mapping network (``noise_encoder.*``) and the decoder (``reshape_conv``,
``res2…``, ``cross2…``, ``out_conv``); the discriminator's holds ``discriminator_<scale>.model<n>.*``
with old-style spectral norm (``weight_orig`` / ``weight_u`` / ``weight_v``). The functions are the
same as attnsynth's ``faithful`` config (checked in ``tests/test_parity_ca2sis.py``); only the layout
differs, by these transforms:

* conv1×1 ``proj_in`` / ``proj_out`` ``[o, i, 1, 1]`` → Linear ``[o, i]``;
* self-attention ``to_q``/``to_k``/``to_v`` → one fused ``to_qkv`` (concatenated on dim 0), cross-attention
  ``to_k``/``to_v`` → ``to_kv``; the block's ``norm1/2/3`` → ``attn1.norm`` / ``attn2.norm`` / ``ff.norm``;
* the style encoder's grouped Conv1d ``out_j`` ``[C·D, w, 1]`` → ``[C, w, D]`` (reshape + transpose), bias
  ``[C·D]`` → ``[C, D]``;
* the mapping network's C per-class heads (``unshared.c.k`` ``[o, i]``) → stacked ``[C, i, o]``;
* spectral norm ``weight_orig`` / ``weight_u`` / ``weight_v`` → ``parametrizations.weight.original`` /
  ``.0._u`` / ``.0._v``.

Files are read with ``torch.load(weights_only=True)``: a pickle carrying code is refused, never run.
Everything is checked before anything is converted: every missing, extra or mis-shaped tensor is
named in one error line.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from attnsynth.sis.configs import SISConfig

WEIGHTS_URL = "https://github.com/TFonta/CA2SIS (README: 'Generating Images Using Pre-trained Models', CelebAMask-HQ)"


@dataclass(frozen=True)
class _Entry:
    """One attnsynth tensor and the official tensor(s) it is made of: ``ours = merge(theirs)``, ``theirs = split(ours)``."""

    ours: str
    theirs: tuple[str, ...]
    merge: Callable[[list[torch.Tensor]], torch.Tensor]
    split: Callable[[torch.Tensor], list[torch.Tensor]]


def _same(ours: str, theirs: str) -> _Entry:
    return _Entry(ours, (theirs,), lambda t: t[0], lambda x: [x])


def _conv1x1(ours: str, theirs: str) -> _Entry:
    return _Entry(ours, (theirs,), lambda t: t[0].flatten(1), lambda x: [x[:, :, None, None]])


def _concat(ours: str, theirs: tuple[str, ...]) -> _Entry:
    parts = len(theirs)
    return _Entry(ours, theirs, lambda t: torch.cat(t, dim=0), lambda x: list(x.chunk(parts, dim=0)))


def _grouped_out(ours_weight: str, ours_bias: str, theirs: str, classes: int) -> list[_Entry]:
    """Grouped Conv1d(C·w → C·D, groups=C) weight [C·D, w, 1] ↔ [C, w, D]; bias [C·D] ↔ [C, D]."""
    def merge_weight(t: list[torch.Tensor]) -> torch.Tensor:
        weight = t[0]
        return weight.reshape(classes, weight.shape[0] // classes, weight.shape[1]).transpose(1, 2)

    def split_weight(x: torch.Tensor) -> list[torch.Tensor]:
        return [x.transpose(1, 2).reshape(-1, x.shape[1], 1)]

    return [_Entry(ours_weight, (f"{theirs}.weight",), merge_weight, split_weight),
            _Entry(ours_bias, (f"{theirs}.bias",), lambda t: t[0].reshape(classes, -1), lambda x: [x.reshape(-1)])]


def _stacked(ours: str, theirs: tuple[str, ...], *, transpose: bool) -> _Entry:
    """C per-class Linear tensors ([o, i] weights or [o] biases) ↔ one [C, i, o] / [C, o] tensor."""
    if transpose:
        return _Entry(ours, theirs, lambda t: torch.stack([w.t() for w in t]), lambda x: [w.t() for w in x.unbind(0)])
    return _Entry(ours, theirs, lambda t: torch.stack(t), lambda x: list(x.unbind(0)))


def generator_entries(config: SISConfig) -> list[_Entry]:
    """The layout of the authors' generator state dict (mapping network included) for `config`.

    Our keys are those of ``SISModel(config).state_dict()`` followed by ``MappingNetwork(config)``'s
    prefixed ``mapping.``."""
    c = config.num_classes
    out: list[_Entry] = [_same(f"mask_embedder.linear.{p}", f"encs.encs.0.{p}") for p in ("weight", "bias")]
    se, ose = "style_encoder", "style_encoder"
    for p in ("weight", "bias"):
        out += [_same(f"{se}.stem.{m}.{p}", f"{ose}.Encoder.first_layer.{m}.{p}") for m in (0, 1)]
    for i in range(config.style_downsamples):
        out += [_same(f"{se}.down.{i}.{m}.{p}", f"{ose}.Encoder.enc_layer_{i}.{m}.{p}") for m in (0, 1) for p in ("weight", "bias")]
    for j in range(config.style_levels):
        out += [_same(f"{se}.up.{j}.{m}.{p}", f"{ose}.Decoder.dec_layer_{j}.{m + 1}.{p}") for m in (0, 1) for p in ("weight", "bias")]
    for j in range(config.style_levels):
        out += _grouped_out(f"{se}.proj_weight.{j}", f"{se}.proj_bias.{j}", f"{ose}.out.out_{j}.0", c)
    out += [_same(f"generator.conv_in.{p}", f"reshape_conv.{p}") for p in ("weight", "bias")]
    channels = config.base_channels
    for i, stage_channels in enumerate(config.stage_channels):
        res, ours = f"res{i + 2}", f"generator.resblocks.{i}"
        for a, b in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3")):
            out += [_same(f"{ours}.{a}.{p}", f"{res}.{b}.{p}") for p in ("weight", "bias")]
        if channels != stage_channels:
            out += [_same(f"{ours}.skip.{p}", f"{res}.skip_connection.{p}") for p in ("weight", "bias")]
        channels = stage_channels
        cross, ours, block = f"cross{i + 2}", f"generator.transformers.{i}", f"cross{i + 2}.transformer_blocks.0"
        out += [_same(f"{ours}.norm.{p}", f"{cross}.norm.{p}") for p in ("weight", "bias")]
        out += [_conv1x1(f"{ours}.proj_in.weight", f"{cross}.proj_in.weight"), _same(f"{ours}.proj_in.bias", f"{cross}.proj_in.bias")]
        if config.self_attention[i]:
            out += [_same(f"{ours}.attn1.norm.{p}", f"{block}.norm1.{p}") for p in ("weight", "bias")]
            out.append(_concat(f"{ours}.attn1.to_qkv.weight", tuple(f"{block}.attn1.to_{x}.weight" for x in "qkv")))
            out += [_same(f"{ours}.attn1.to_out.{p}", f"{block}.attn1.to_out.0.{p}") for p in ("weight", "bias")]
        out += [_same(f"{ours}.attn2.norm.{p}", f"{block}.norm2.{p}") for p in ("weight", "bias")]
        out.append(_same(f"{ours}.attn2.to_q.weight", f"{block}.attn2.to_q.weight"))
        out.append(_concat(f"{ours}.attn2.to_kv.weight", tuple(f"{block}.attn2.to_{x}.weight" for x in "kv")))
        out += [_same(f"{ours}.attn2.to_out.{p}", f"{block}.attn2.to_out.0.{p}") for p in ("weight", "bias")]
        out += [_same(f"{ours}.ff.norm.{p}", f"{block}.norm3.{p}") for p in ("weight", "bias")]
        out += [_same(f"{ours}.ff.proj.{p}", f"{block}.ff.net.0.proj.{p}") for p in ("weight", "bias")]
        out += [_same(f"{ours}.ff.out.{p}", f"{block}.ff.net.2.{p}") for p in ("weight", "bias")]
        out += [_conv1x1(f"{ours}.proj_out.weight", f"{cross}.proj_out.weight"), _same(f"{ours}.proj_out.bias", f"{cross}.proj_out.bias")]
    out += [_same(f"generator.conv_out.{p}", f"out_conv.{p}") for p in ("weight", "bias")]
    for k in range(config.mapping_shared_layers):
        out += [_same(f"mapping.shared.{2 * k}.{p}", f"noise_encoder.shared.{2 * k}.{p}") for p in ("weight", "bias")]
    for k in range(config.mapping_head_layers):
        heads = [f"noise_encoder.unshared.{cls}.{2 * k}" for cls in range(c)]
        out.append(_stacked(f"mapping.heads.{2 * k}.weight", tuple(f"{h}.weight" for h in heads), transpose=True))
        out.append(_stacked(f"mapping.heads.{2 * k}.bias", tuple(f"{h}.bias" for h in heads), transpose=False))
    return out


def discriminator_entries(config: SISConfig) -> list[_Entry]:
    """The layout of the authors' ``MultiscaleDiscriminator`` state dict for `config`."""
    out: list[_Entry] = []
    for s in range(config.disc_scales):
        ours, theirs = f"scales.{s}.blocks", f"discriminator_{s}.model"
        out += [_same(f"{ours}.0.0.{p}", f"{theirs}0.0.{p}") for p in ("weight", "bias")]
        for n in range(1, config.disc_layers):
            sn = f"{ours}.{n}.0.parametrizations.weight"
            out += [_same(f"{sn}.original", f"{theirs}{n}.0.0.weight_orig"), _same(f"{sn}.0._u", f"{theirs}{n}.0.0.weight_u"),
                    _same(f"{sn}.0._v", f"{theirs}{n}.0.0.weight_v")]
        last = config.disc_layers
        out += [_same(f"{ours}.{last}.0.{p}", f"{theirs}{last}.0.{p}") for p in ("weight", "bias")]
    return out


def _our_shapes(config: SISConfig, part: str) -> dict[str, torch.Size]:
    """Shapes of attnsynth's tensors (meta device, no memory): 'generator' (model + 'mapping.*') or 'discriminator'."""
    from attnsynth.sis.mapping import MappingNetwork
    from attnsynth.sis.model import SISModel, build_discriminator

    with torch.device("meta"):
        if part == "discriminator":
            return {k: v.shape for k, v in build_discriminator(config).state_dict().items()}
        shapes = {k: v.shape for k, v in SISModel(config).state_dict().items()}
        shapes.update({f"mapping.{k}": v.shape for k, v in MappingNetwork(config).state_dict().items()})
    return shapes


def _entries(config: SISConfig, part: str) -> list[_Entry]:
    if config.arch != "ca2sis" or config.style_levels != config.style_downsamples - 1:
        raise ValueError(f"config {config.name!r} has no official layout: expected arch 'ca2sis' and "
                         "style_levels = style_downsamples - 1, as in the authors' code")
    entries = generator_entries(config) if part == "generator" else discriminator_entries(config)
    ours = _our_shapes(config, part)
    covered = sorted(e.ours for e in entries)
    if covered != sorted(ours):  # the table and the modules must describe the same tensors
        raise RuntimeError(f"official layout table out of date: {sorted(set(ours) ^ set(covered))[:5]}")
    return entries


def official_shapes(config: SISConfig, part: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of the authors' state dict for `config`; `part` is 'generator' or 'discriminator'."""
    ours = _our_shapes(config, part)
    shapes: dict[str, tuple[int, ...]] = {}
    for entry in _entries(config, part):
        for key, tensor in zip(entry.theirs, entry.split(torch.empty(ours[entry.ours], device="meta"))):
            shapes[key] = tuple(tensor.shape)
    return shapes


def check_layout(state: Mapping[str, torch.Tensor], config: SISConfig, part: str, *, name: str) -> None:
    """Raise one ValueError naming every missing, extra and mis-shaped tensor of `state` (`name`: the file, for the message)."""
    expected = official_shapes(config, part)
    missing = [k for k in expected if k not in state]
    extra = sorted(k for k in state if k not in expected)
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)}: {', '.join(missing)}")
        if extra:
            problems.append(f"extra {len(extra)}: {', '.join(extra)}")
        if wrong:
            problems.append(f"mis-shaped {len(wrong)}: {', '.join(wrong)}")
        raise ValueError(f"{name} does not match the authors' CA²-SIS {part} for {config.num_classes} classes at "
                         f"{config.resolution[0]}×{config.resolution[1]} — " + "; ".join(problems))


def to_attnsynth(state: Mapping[str, torch.Tensor], config: SISConfig, part: str) -> dict[str, torch.Tensor]:
    """The authors' state dict (layout already checked) → attnsynth's tensors (same dtype, contiguous)."""
    return {e.ours: e.merge([state[k] for k in e.theirs]).contiguous() for e in _entries(config, part)}


def to_official(tensors: Mapping[str, torch.Tensor], config: SISConfig, part: str) -> dict[str, torch.Tensor]:
    """Inverse of `to_attnsynth`: attnsynth's tensors → a state dict in the authors' layout."""
    state: dict[str, torch.Tensor] = {}
    for entry in _entries(config, part):
        for key, tensor in zip(entry.theirs, entry.split(tensors[entry.ours])):
            state[key] = tensor.contiguous().clone()
    return state


def read_state_dict(path: str | Path, *, argument: str) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` dict from a ``torch.save`` file, never executing code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{argument} {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{argument} {path} is not a plain tensor state dict (refused to unpickle it: {reason[:200]})") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{argument} {path} holds a {type(state).__name__}, not a plain {{name: tensor}} state dict")
    return dict(state)


def import_checkpoint(generator: str | Path, *, out: str | Path, config: SISConfig, discriminator: str | Path | None = None,
                      data: str | None = None, seed: int = 0, say: Callable[[str], None] = print) -> Path:
    """Convert the authors' ``latest_net_G.pth`` (+ ``latest_net_D.pth``) into a run directory `out`.

    `out` gets ``config.json`` + ``model.safetensors`` (style encoder, mask embedder, decoder),
    ``mapping.safetensors`` (their ``noise_encoder.*``), ``discriminator.safetensors`` (with `discriminator`) and
    ``labelset.json``: what the editing commands, ``sample``, ``evaluate`` and ``train-mapping`` read. With
    `data` it also gets ``train_config.json`` and a step-0 ``checkpoint/`` (fresh Adam states, EMA = the imported
    generator, a freshly initialised discriminator when none is given), so ``attnsynth sis train --data DATA
    --out OUT --config NAME --resolution R --resume --steps N`` fine-tunes it. Every input is read and checked
    before anything is written; the directory appears atomically.
    """
    from attnsynth.sis.checkpoint import LABELSET_FILE, load_labelset, save_training_state
    from attnsynth.sis.mapping import MappingNetwork
    from attnsynth.sis.model import SISModel, build_discriminator
    from attnsynth.utils.io import atomic_directory, atomic_write_json

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new run directory")
    g_state = read_state_dict(generator, argument="--generator")
    check_layout(g_state, config, "generator", name=f"--generator {generator}")
    d_state = None
    if discriminator is not None:
        d_state = read_state_dict(discriminator, argument="--discriminator")
        check_layout(d_state, config, "discriminator", name=f"--discriminator {discriminator}")
    train_config = label_set = None
    if data is not None:  # check the fine-tuning options now, not after writing
        from attnsynth.data import load_dataset
        from attnsynth.sis.train_config import TrainConfig

        train_config = TrainConfig(data=data, out=str(out), config=config.name, resolution=config.resolution, seed=seed)
        dataset = load_dataset(data, split="train", resolution=config.resolution, layout=train_config.layout,
                               toy_n=train_config.toy_n, seed=seed)
        if dataset.num_classes != config.num_classes:
            raise ValueError(f"--data {data} has {dataset.num_classes} classes; the checkpoint has {config.num_classes}")
        label_set = dataset.label_set
    tensors = to_attnsynth(g_state, config, "generator")
    model = SISModel(config)
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("mapping.")})
    mapping = MappingNetwork(config)
    mapping.load_state_dict({k.removeprefix("mapping."): v for k, v in tensors.items() if k.startswith("mapping.")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        disc = build_discriminator(config)  # fresh (seeded) unless the authors' weights are loaded below
    if d_state is not None:
        disc.load_state_dict(to_attnsynth(d_state, config, "discriminator"))
    extra = {"mapping": mapping.state_dict()}
    if d_state is not None:
        extra["discriminator"] = disc.state_dict()
    label_set = label_set or load_labelset(out, config.num_classes)  # no labelset.json yet: CelebAMask-HQ for 19 classes
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, extra_state_dicts=extra, overwrite=True)
        atomic_write_json(tmp / LABELSET_FILE, label_set.to_dict())
        if train_config is not None:
            _write_resumable(tmp, model=model, discriminator=disc, train_config=train_config, label_set=label_set,
                             save_training_state=save_training_state)
    if d_state is None and train_config is not None:
        say("note: no --discriminator given: fine-tuning starts from a freshly initialised discriminator")
    return out


def _write_resumable(run: Path, *, model, discriminator, train_config, label_set, save_training_state) -> None:
    """``train_config.json`` + a step-0 ``checkpoint/`` in the layout `attnsynth.sis.trainer.train` resumes from."""
    import copy

    from attnsynth.sis.trainer import CHECKPOINT_DIR, TRAIN_CONFIG_FILE, adam
    from attnsynth.utils.io import atomic_write_json

    opt_g = adam(model.parameters(), lr=train_config.lr_g, betas=train_config.betas)
    opt_d = adam(discriminator.parameters(), lr=train_config.lr_d, betas=train_config.betas)
    ema = copy.deepcopy(model).requires_grad_(False)
    save_training_state(run / CHECKPOINT_DIR, modules={"generator": model, "discriminator": discriminator, "ema": ema},
                        optimizers={"generator": opt_g, "discriminator": opt_d},
                        state={"step": 0, "seed": train_config.seed, "processes": 1, "scaler": None})
    atomic_write_json(run / TRAIN_CONFIG_FILE, {
        "train": train_config.to_dict(), "model": model.config.to_dict(), "label_set": label_set.to_dict(),
        "processes": 1, "perceptual_loss": False, "imported_from": "TFonta/CA2SIS checkpoint",
    })
