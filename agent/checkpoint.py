"""Checkpoints that rebuild the agent from plain data: weights in safetensors, everything else in JSON.

A checkpoint is a directory::

    model.safetensors   the network's state_dict (tensors only; nothing is unpickled when it is read)
    config.json         network, preprocess, bins and loss configs, calibration temperature, steering scale,
                        training metadata, the format version, the save's id (also in the weights' header) and
                        the SHA-256 of model.safetensors (``weights_sha256``; older checkpoints have none)

:func:`load_checkpoint` rebuilds :class:`~agent.network.DualHeadNet` from ``config.json`` alone (no pretrained
weights are read) and fills it from ``model.safetensors``. Anything wrong with the pair (missing file, bad
JSON, unknown format version, files from two different saves, missing/extra/mis-shaped tensors) raises one
:class:`CheckpointError` naming the file and the problem. Each file is written to a temporary name and renamed
into place, and the id shared by both files detects a save interrupted between the two renames.

Resuming training also needs optimizer and scheduler state: :func:`save_training_state` /
:func:`load_training_state` keep them in a separate file with ``torch.save`` of plain tensors and containers,
read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from agent.bins import SteeringBins
from agent.network import DualHeadNet, LossConfig, NetworkConfig
from agent.preprocess import PreprocessConfig
from sim.errors import CarilError, permission_denied

log = logging.getLogger(__name__)

FORMAT = "caril-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_FORMAT = "caril-training-state"
PAPER_STEER_SCALE = 4.0  # the reference trains on CARLA steer x 4, clipped to [-1, 1]


class CheckpointError(CarilError, ValueError):
    """A checkpoint or training-state file that is missing, corrupt or from an incompatible version."""


@dataclass
class LoadedCheckpoint:
    """A network ready to drive (eval mode) and everything needed to feed it and read its outputs.

    ``steer_scale``: the network works in CARLA steer x ``steer_scale`` (the paper's 4), so the command is
    ``output / steer_scale``. ``temperature`` divides the logits before the softmax (1.0: uncalibrated).
    """

    model: DualHeadNet
    network: NetworkConfig
    preprocess: PreprocessConfig
    loss: LossConfig
    bins: SteeringBins
    temperature: float
    steer_scale: float
    meta: dict[str, Any]
    path: Path


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _tensors_to_save(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous, unshared copies of the state_dict; a tensor that is the same view as an earlier one
    (tied weights) is saved once and recorded as an alias ``name -> saved name``."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in model.state_dict().items():
        ptr = t.untyped_storage().data_ptr()
        view = (ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
        if t.numel() and view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        t = t.detach().to("cpu").contiguous()
        if t.numel() and ptr in storages:  # a different view of a storage already saved: own copy
            t = t.clone()
        storages.add(ptr)
        tensors[name] = t
    return tensors, aliases


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_atomically(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` over ``final`` once on disk, with the permissions the umask gives a new file (the
    safetensors writer creates its file 0600, unlike every other file of a checkpoint)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, final)


def save_checkpoint(directory: str | Path, model: nn.Module, network_cfg: NetworkConfig,
                    preprocess_cfg: PreprocessConfig, bins: SteeringBins, extra: dict[str, Any] | None = None, *,
                    loss_cfg: LossConfig | None = None, temperature: float = 1.0,
                    steer_scale: float = PAPER_STEER_SCALE) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed); return it.

    ``extra`` is JSON-able training metadata (epoch, step, metrics...), returned as ``meta`` on load.
    ``loss_cfg`` defaults to the model's own. Existing files are replaced, each atomically.
    """
    directory = Path(directory)
    net = unwrap_model(model)
    own = getattr(net, "config", None)
    if own is not None and own != network_cfg:
        raise ValueError(f"network_cfg {network_cfg} differs from the model's own config {own}")
    if network_cfg.n_bins != bins.n_bins:
        raise ValueError(f"the network has {network_cfg.n_bins} classes but the bins {bins.n_bins}")
    if tuple(preprocess_cfg.output_size) != tuple(network_cfg.input_size):
        raise ValueError(f"preprocessing makes {preprocess_cfg.output_size} images but the network takes "
                         f"{network_cfg.input_size}")
    if not (math.isfinite(temperature) and temperature > 0 and math.isfinite(steer_scale) and steer_scale > 0):
        raise ValueError(f"temperature {temperature} and steer_scale {steer_scale} must be finite and positive")
    loss_cfg = loss_cfg or getattr(net, "loss_config", None) or LossConfig()
    checkpoint_id = uuid.uuid4().hex
    tensors, aliases = _tensors_to_save(net)
    directory.mkdir(parents=True, exist_ok=True)
    tmp_weights = directory / f".{WEIGHTS_FILE}.{checkpoint_id}.tmp"
    tmp_config = directory / f".{CONFIG_FILE}.{checkpoint_id}.tmp"
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "checkpoint_id": checkpoint_id,
        "network": network_cfg.to_dict(), "preprocess": preprocess_cfg.to_dict(), "bins": bins.to_dict(),
        "loss": loss_cfg.to_dict(), "temperature": float(temperature), "steer_scale": float(steer_scale),
        "tensor_aliases": aliases, "meta": extra or {},
        "saved_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch_version": torch.__version__,
    }
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint metadata must be plain JSON (numbers, strings, lists, dicts): {e}") from e
    try:
        save_file(tensors, str(tmp_weights), metadata={"format": FORMAT, "checkpoint_id": checkpoint_id})
        doc["weights_sha256"] = file_sha256(tmp_weights)  # checked at load: flipped bytes are an error
        tmp_config.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        _replace_atomically(tmp_weights, directory / WEIGHTS_FILE)
        _replace_atomically(tmp_config, directory / CONFIG_FILE)
    finally:
        for tmp in (tmp_weights, tmp_config):
            tmp.unlink(missing_ok=True)
    log.info("saved checkpoint %s (%d tensors)", directory, len(tensors))
    return directory


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a checkpoint directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                              "(written by caril train); pass that directory")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise CheckpointError(permission_denied(path)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt, re-save it") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} config (its 'format' is "
                              f"{doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has unknown format version {doc.get('format_version')!r}; this caril reads "
                              f"version {FORMAT_VERSION}: load it with the caril version that wrote it")
    return doc


def _section(doc: dict[str, Any], key: str, path: Path, parse: Any) -> Any:
    if key not in doc:
        raise CheckpointError(f"{path} has no {key!r} entry; the checkpoint is incomplete, re-save it")
    try:
        return parse(doc[key])
    except (CarilError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {key!r} is not usable: {e}") from e


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{value!r} is not a finite positive number")
    return float(value)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_weights(path: Path, checkpoint_id: str, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``path``; with ``sha256`` (checkpoints saved since it was recorded) its bytes must hash
    to it, so a flipped byte anywhere in the weights is an error instead of a policy that drives wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint directory has {CONFIG_FILE} but no weights; "
                              "re-save the checkpoint")
    if not os.access(path, os.R_OK):  # safetensors would call it an unreadable (corrupt) file
        raise CheckpointError(permission_denied(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt") from e
    if header.get("checkpoint_id") != checkpoint_id:
        raise CheckpointError(f"{path} and {path.parent / CONFIG_FILE} come from different saves (ids "
                              f"{header.get('checkpoint_id')!r} and {checkpoint_id!r}); an interrupted save? "
                              "Re-save the checkpoint")
    if sha256 is not None and (found := file_sha256(path)) != sha256:
        raise CheckpointError(f"{path} is corrupt: its SHA-256 {found[:16]}... differs from the "
                              f"{sha256[:16]}... recorded in {CONFIG_FILE}; re-copy or re-save the checkpoint")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt") from e
    return tensors


def _check_tensors(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    misshaped = sorted(f"{k} {tuple(saved[k].shape)} (expected {tuple(expected[k].shape)})"
                       for k in set(expected) & set(saved) if saved[k].shape != expected[k].shape)
    problems = [f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                for what, names in (("missing tensors", missing), ("unexpected tensors", extra),
                                    ("mis-shaped tensors", misshaped)) if names]
    if problems:
        raise CheckpointError(f"{path} does not match the network described in {CONFIG_FILE}: {'; '.join(problems)}")


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the network from ``config.json``, fill it from ``model.safetensors``, put it in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist; pass the directory that holds "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    config_path = directory / CONFIG_FILE
    doc = _read_config(config_path)
    network = _section(doc, "network", config_path, NetworkConfig.from_dict)
    preprocess = _section(doc, "preprocess", config_path, PreprocessConfig.from_dict)
    loss = _section(doc, "loss", config_path, LossConfig.from_dict)
    bins = _section(doc, "bins", config_path, SteeringBins.from_dict)
    temperature = _section(doc, "temperature", config_path, _positive)
    steer_scale = _section(doc, "steer_scale", config_path, _positive)
    aliases = _section(doc, "tensor_aliases", config_path, dict)
    meta = _section(doc, "meta", config_path, dict)
    if bins.n_bins != network.n_bins or tuple(preprocess.output_size) != tuple(network.input_size):
        raise CheckpointError(f"{config_path} is inconsistent: {bins.n_bins} bins for {network.n_bins} classes, "
                              f"images {preprocess.output_size} for input {network.input_size}")
    model = DualHeadNet(network, loss, load_pretrained=False)
    state = _read_weights(directory / WEIGHTS_FILE, doc.get("checkpoint_id", ""), doc.get("weights_sha256"))
    for alias, name in aliases.items():
        if name in state:
            state[alias] = state[name]
    _check_tensors(state, model.state_dict(), directory / WEIGHTS_FILE)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return LoadedCheckpoint(model=model, network=network, preprocess=preprocess, loss=loss, bins=bins,
                            temperature=temperature, steer_scale=steer_scale, meta=meta, path=directory)


# --- training state for resume ----------------------------------------------------------------------------


def capture_rng_states() -> dict[str, Any]:
    """Python, NumPy (global), torch CPU and CUDA generator states as plain tensors/containers."""
    np_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states` (a missing entry is left alone)."""
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        s = states["numpy"]
        np.random.set_state({"bit_generator": s["bit_generator"], "has_gauss": s["has_gauss"], "gauss": s["gauss"],
                             "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]}})
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class TrainingState:
    """What resuming needs beyond the weights: optimizer/scheduler state dicts, counters, RNG states."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    epoch: int
    step: int
    rng_states: dict[str, Any]
    best_val: float | None

    def apply(self, optimizer: torch.optim.Optimizer, scheduler: Any = None, restore_rng: bool = True) -> None:
        """Load the saved states into ``optimizer`` (and ``scheduler``); restore the RNGs."""
        optimizer.load_state_dict(self.optimizer)
        if scheduler is not None and self.scheduler is not None:
            scheduler.load_state_dict(self.scheduler)
        if restore_rng:
            restore_rng_states(self.rng_states)


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int, step: int,
                        rng_states: dict[str, Any] | None = None, best_val: float | None = None) -> Path:
    """``torch.save`` the resume state atomically; ``rng_states`` defaults to :func:`capture_rng_states`."""
    path = Path(path)
    payload = {"format": TRAINING_STATE_FORMAT, "format_version": FORMAT_VERSION,
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
               "epoch": int(epoch), "step": int(step),
               "rng_states": capture_rng_states() if rng_states is None else rng_states,
               "best_val": None if best_val is None else float(best_val)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(payload, tmp)
        _replace_atomically(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_training_state(path: str | Path) -> TrainingState:
    """Read :func:`save_training_state`'s file with ``weights_only=True`` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {path} does not exist; resume from a run directory that has one")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and allow-list errors all mean: not a file we wrote
        raise CheckpointError(f"{path} is not a readable training state ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt or not ours") from e
    if not isinstance(payload, dict) or payload.get("format") != TRAINING_STATE_FORMAT:
        raise CheckpointError(f"{path} is not a {TRAINING_STATE_FORMAT} file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has unknown format version {payload.get('format_version')!r}; "
                              f"this caril reads version {FORMAT_VERSION}")
    return TrainingState(optimizer=payload["optimizer"], scheduler=payload["scheduler"], epoch=payload["epoch"],
                         step=payload["step"], rng_states=payload["rng_states"], best_val=payload["best_val"])
