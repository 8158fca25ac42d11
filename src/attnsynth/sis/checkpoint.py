"""Resumable training checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint is a directory written through a temporary sibling and renamed into place, so a
run killed mid-write keeps its previous checkpoint intact::

    checkpoint/
      <module>.safetensors            one per module (generator, discriminator, ema, …)
      optim_<name>.safetensors        optimiser state tensors, keys "state.<param>.<field>"
      state.json                      step, seeds, optimiser hyper-parameters, grad-scaler state

It also names the files of a finished run that edits and evaluation read (:func:`load_labelset`), and
:func:`export_run` copies a finished run into a small shippable directory (fp16 weights).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from attnsynth.data.labelsets import CELEBAMASK_HQ, LabelSet
from attnsynth.sis.model import load_safetensors
from attnsynth.utils.io import atomic_directory, read_json

FORMAT_VERSION = 1
LABELSET_FILE = "labelset.json"  # RUN/labelset.json: class names, flip pairs, presets of the model
MAPPING_WEIGHTS = "mapping.safetensors"  # RUN/mapping.safetensors: the random-style mapping network


@contextlib.contextmanager
def readable_weights(path: str | Path) -> Iterator[None]:
    """Inside this block a damaged safetensors file (truncated, corrupt header) is a one-line ValueError naming ``path``."""
    try:
        yield
    except SafetensorError as error:
        raise ValueError(f"weights file {path} is damaged ({' '.join(str(error).split())}); "
                         "expected a complete .safetensors file — restore or re-create it") from None


def load_labelset(run: str | Path, num_classes: int) -> LabelSet:
    """The label set saved beside a model (``labelset.json``), else CelebAMask-HQ for 19 classes, else ``class_i`` names."""
    from attnsynth.data.folders import labelset_from_json

    path = Path(run) / LABELSET_FILE
    if path.is_file():
        label_set = labelset_from_json(path, name=Path(run).name)
        if label_set.num_classes == num_classes:
            return label_set
    if num_classes == CELEBAMASK_HQ.num_classes:
        return CELEBAMASK_HQ
    return LabelSet(name="generic", class_names=tuple(f"class_{i}" for i in range(num_classes)))


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` as standalone contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser ``state_dict`` into tensors (``state.<i>.<field>``) and JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, fields in state["state"].items():
        for key, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()} for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`: a ``state_dict`` ready for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, fields in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(fields)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_training_state(
    directory: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: Mapping[str, Any],
) -> Path:
    """Write modules, optimisers and a JSON-able ``state`` to ``directory``, replacing it atomically."""
    directory = Path(directory)
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "state": dict(state), "optimizers": {}}
    with atomic_directory(directory, overwrite=True) as tmp:
        for name, module in modules.items():
            save_file(module_tensors(module), str(tmp / f"{name}.safetensors"))
        for name, optimizer in optimizers.items():
            tensors, opt_meta = flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / f"optim_{name}.safetensors"))
            meta["optimizers"][name] = opt_meta
        (tmp / "state.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return directory


def load_training_state(
    directory: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> dict[str, Any]:
    """Load what :func:`save_training_state` wrote into existing modules/optimisers; return ``state``."""
    directory = Path(directory)
    state_path = directory / "state.json"
    meta = read_json(state_path, "training-checkpoint state")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{state_path} has format {meta.get('format')!r}; expected {FORMAT_VERSION}")
    for name, module in modules.items():
        path = directory / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} is missing")
        with readable_weights(path):
            load_safetensors(module, path)  # key mismatch (e.g. a checkpoint from another config) -> one-line ValueError
    for name, optimizer in optimizers.items():
        path = directory / f"optim_{name}.safetensors"
        if not path.is_file() or name not in meta["optimizers"]:
            raise FileNotFoundError(f"checkpoint file {path} (or its metadata) is missing")
        with readable_weights(path):
            tensors = load_file(str(path))
        optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizers"][name]))
    return meta["state"]


# ---- shipping a finished run ------------------------------------------------------------------------
SHIPPED_WEIGHTS = ("model.safetensors", MAPPING_WEIGHTS, "discriminator.safetensors")  # cast to the storage dtype
SHIPPED_FILES = ("config.json", LABELSET_FILE, "train_config.json", "eval.jsonl", "mapping_config.json")  # copied as they are


def export_run(run: str | Path, out: str | Path, *, dtype: torch.dtype = torch.float16, overwrite: bool = False) -> Path:
    """Copy what a finished run needs for editing, sampling and ``train-mapping`` into ``out``, weights cast to ``dtype``.

    Writes ``config.json``, ``model.safetensors`` (the EMA generator) and, when the run has them,
    ``mapping.safetensors``, ``discriminator.safetensors``, ``labelset.json``, ``train_config.json``,
    ``eval.jsonl`` (learning curve) and ``mapping_config.json``; nothing else (no optimiser state).
    Loading casts back to the compute dtype (:func:`attnsynth.sis.edits.load_model`). One atomic directory.
    """
    import shutil

    from attnsynth.sis.model import CONFIG_NAME, WEIGHTS_NAME

    run, out = Path(run), Path(out)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (run / name).is_file():
            raise FileNotFoundError(f"--checkpoint {run} has no {name}: expected a finished `sis train` run")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for name in SHIPPED_WEIGHTS:
            if (run / name).is_file():
                with readable_weights(run / name):
                    tensors = load_file(str(run / name))
                save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, str(tmp / name))
        for name in SHIPPED_FILES:
            if (run / name).is_file():
                shutil.copyfile(run / name, tmp / name)
    return out
