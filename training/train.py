"""Offline imitation training of the dual-head network: a short nanoGPT-style loop that reads top-down.

::

    cfg = TrainConfig.preset("fast", data="data/demo", out="runs/fast")
    result = train(cfg)                       # RUN/best, RUN/last, RUN/metrics.json, RUN/tb, PNGs

1. config (:class:`TrainConfig`, validated) and the distributed setup (DDP under ``torchrun``: gloo on CPU,
   nccl on GPU; a plain process is a world of one);
2. data (split by episode, workers decode + crop/resize + augment) and model (AdamW, bf16 autocast and
   channels-last on GPU, optional ``torch.compile``);
3. the loop: per step ``get_lr(step)`` (a pure function), forward, loss, backward, clip, step,
   ``zero_grad(set_to_none=True)``; per epoch validation (steering MAE/RMSE, accuracy, confusion matrix,
   ECE and a fitted temperature), checkpoints ``RUN/last`` (+ ``training_state.pt`` for ``--resume``) and
   ``RUN/best``, ``RUN/metrics.json``, early stopping on validation loss.

Only rank 0 writes; the others wait at a barrier around each write. Library code logs, never prints: progress
goes to a :class:`TrainCallbacks`. Errors a user can cause (empty or corrupt data, mismatched image sizes, a
diverging loss, an incompatible checkpoint on resume) raise one :class:`~sim.errors.CarilError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from agent.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_training_state,
    restore_rng_states,
    save_checkpoint,
    save_training_state,
)
from agent.network import DualHeadNet, LossConfig, NetworkConfig
from agent.preprocess import PreprocessConfig, to_tensor_normalised
from sim.errors import CarilError, UsageError, unknown_name
from training import calibration
from training.data_options import LabelOptions, label_dataset
from training.dataset import (
    AugmentConfig,
    DrivingDataset,
    ShardSampler,
    Split,
    TrainSampler,
    make_loader,
    open_dataset,
    split_by_episode,
)
from training.episode_file import COMMAND_KEY, DatasetError, software_version, write_json_atomic

log = logging.getLogger(__name__)

PRESETS = ("fast", "paper")
CHECKS = ("all", "sample", "none")
STATE_FILE = "training_state.pt"
PREDICTIONS_FILE = "val_predictions.npz"  # the best epoch's validation outputs, in RUN/best


class TrainingDiverged(CarilError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --- 1. configuration -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; written to ``RUN/config.json``. Learning rates per step,
    ``batch_size`` per process (the global batch is ``batch_size * world_size``)."""

    data: str  # dataset folder (caril collect --out)
    out: str  # run folder
    network: NetworkConfig = field(default_factory=NetworkConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    labels: LabelOptions = field(default_factory=LabelOptions)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate, after the warm-up
    min_lr: float | None = None  # the cosine decay's floor; None: lr / 10 (nanoGPT)
    warmup_fraction: float = 0.05  # of all steps, linear from ~0 to lr
    weight_decay: float = 1e-4  # AdamW, on weight matrices and kernels only (not biases, norms)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    val_fraction: float = 0.2  # share of EPISODES held out for validation
    patience: int = 5  # epochs without a better validation loss before stopping
    balanced_sampling: bool = False  # draw every steering class equally often (with replacement)
    workers: int = 2  # DataLoader processes per training process
    prefetch_factor: int = 4  # batches each worker prepares ahead
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast (and channels-last) on GPU; ignored on CPU
    compile: bool = False  # torch.compile the network
    seed: int = 0  # model init, split, sampling order and augmentation
    log_every: int = 20  # steps between loss logs (and NaN checks)
    deterministic: bool = False  # torch.use_deterministic_algorithms for the run (slower on GPU)
    check: str = "sample"  # how much of the dataset to check before training: all | sample | none
    resume: bool = False  # continue RUN from RUN/last

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "patience": self.patience,
                    "prefetch_factor": self.prefetch_factor, "log_every": self.log_every}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise UsageError(f"--min-lr {self.min_lr} must be in [0, lr={self.lr}]")
        if not 0 <= self.warmup_fraction < 1:
            raise UsageError(f"warm-up fraction {self.warmup_fraction} must be in [0, 1), e.g. 0.05")
        if not all(math.isfinite(v) and v >= 0 for v in (self.weight_decay, self.grad_clip)):
            raise UsageError(f"--weight-decay {self.weight_decay} and --grad-clip {self.grad_clip} must be finite "
                             "and not negative (0 disables)")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val-fraction {self.val_fraction} must be in (0, 1), e.g. 0.2")
        if self.workers < 0:
            raise UsageError(f"--workers must be 0 (load in the main process) or more, got {self.workers}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if self.check not in CHECKS:
            raise UsageError(f"dataset check {self.check!r} is not one of {', '.join(CHECKS)}")
        if tuple(self.network.input_size) != self.preprocess.output_size:
            raise UsageError(f"the network takes {self.network.input_size[1]}x{self.network.input_size[0]} images "
                             f"but the preprocessing makes {self.preprocess.width}x{self.preprocess.height}; "
                             "give both the same size")
        if self.labels.n_bins != self.network.n_bins:
            raise UsageError(f"the labels have {self.labels.n_bins} steering bins but the network "
                             f"{self.network.n_bins} classes; use the same number")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """``fast``: the small CPU CNN (the defaults); ``paper``: the reference's ImageNet ResNet-50 with its
        batch 32, lr 1e-4, 50 epochs and patience 10 (AdamW + cosine instead of Adam + exponential decay)."""
        if name == "fast":
            base: dict[str, Any] = {}
        elif name == "paper":
            base = {"network": NetworkConfig.preset("paper"), "batch_size": 32, "lr": 1e-4, "epochs": 50,
                    "patience": 10}
        else:
            raise unknown_name("training preset", name, PRESETS)
        return cls(**{**base, **overrides})

    @property
    def floor_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able nested dict."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class Dist:
    """This process's place in the (possibly one-process) training world, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is a :class:`UsageError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu or auto")
    return torch.device(name)


def setup_distributed(device: str) -> Dist:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (nccl with GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Dist(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:  # share the cores between the processes of this node
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, local_rank, world, dev, owns)


def get_lr(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimizer step ``step``: linear warm-up, cosine decay to ``min_lr``, then the floor."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- 2. data and model ------------------------------------------------------------------------------------------


@dataclass
class Data:
    """The split and its loaders; ``steps_per_epoch`` counts this rank's optimizer steps."""

    split: Split
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    train_sampler: TrainSampler
    steps_per_epoch: int
    conditions: dict[str, list[str]] = field(default_factory=dict)  # the dataset's routes and weathers


def recorded_conditions(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The routes and weathers a dataset's episodes were recorded on (manifest entries), in first-seen order:
    stored with every checkpoint, so an evaluation can tell conditions it was trained on from held-out ones."""
    return {"routes": list(dict.fromkeys(e.get("route", "") for e in entries)),
            "weathers": list(dict.fromkeys(e.get("weather", "") for e in entries))}


def build_data(cfg: TrainConfig, world: Dist) -> Data:
    """Open and check the dataset, label, split by episode, and build the loaders for this rank."""
    index = open_dataset(cfg.data, cfg.preprocess, cfg.check)
    frames = label_dataset(index, cfg.labels)
    if len(frames) == 0:
        raise DatasetError(f"no frame of {cfg.data} is left after the label options ({len(index)} frames, "
                           f"|steer| <= {cfg.labels.steer_limit}); relax --steer-limit or record other data")
    if cfg.network.command_branches and COMMAND_KEY not in index.features:
        raise DatasetError(f"dataset {cfg.data} was recorded without route commands ({COMMAND_KEY}), which the "
                           "command-branched network needs; re-record it with this version of caril collect or "
                           "train camera-only with --no-commands")
    split = split_by_episode(index, frames, cfg.val_fraction, cfg.seed)
    bins = cfg.labels.bins
    train_set = DrivingDataset(index, split.train, cfg.preprocess, bins, cfg.augment, cfg.seed)
    val_set = DrivingDataset(index, split.val, cfg.preprocess, bins, None, cfg.seed)
    sampler = TrainSampler(split.train.classes, bins.n_bins, cfg.seed, shuffle=True,
                           balanced=cfg.balanced_sampling, rank=world.rank, world_size=world.world_size)
    drop_last = len(sampler) >= cfg.batch_size  # a full batch at least; no ragged last batch for BatchNorm
    pin = world.device.type == "cuda"
    train_loader = make_loader(train_set, sampler, cfg.batch_size, cfg.workers, cfg.prefetch_factor, pin,
                               drop_last, cfg.seed)
    val_loader = make_loader(val_set, ShardSampler(len(val_set), world.rank, world.world_size), cfg.batch_size,
                             cfg.workers, cfg.prefetch_factor, pin, False, cfg.seed)
    return Data(split, train_loader, val_loader, sampler, len(train_loader), recorded_conditions(index.entries))


def build_model(cfg: TrainConfig, device: torch.device) -> DualHeadNet:
    """The network of ``cfg`` (pretrained backbone weights read from disk if asked), on ``device``."""
    model = DualHeadNet(cfg.network, cfg.loss).to(device)
    if device.type == "cuda" and cfg.amp:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters (weights, kernels) only; frozen parameters left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=params[0].is_cuda)


def autocast_for(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU with ``amp``; nothing on CPU (bf16 there is slower than float32)."""
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, torch.Tensor], preprocess: PreprocessConfig, device: torch.device,
              channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """A loader batch -> normalised float images (B, 3, h, w), route commands (B,) and targets, on ``device``."""
    images = batch["image"].to(device, non_blocking=True)  # (B, h, w, 3) uint8
    x = to_tensor_normalised(images, preprocess)  # (B, 3, h, w) float32
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    targets = {"steer": batch["steer"].to(device, non_blocking=True), "bin": batch["bin"].to(device, non_blocking=True)}
    return x, batch["command"].to(device, non_blocking=True), targets


def train_step(model: nn.Module, net: DualHeadNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               command: torch.Tensor, targets: dict[str, torch.Tensor], grad_clip: float,
               autocast: Any) -> torch.Tensor:
    """One optimizer step; returns the detached (loss, regression, classification) tensor (3,) (no sync)."""
    with autocast:
        out = model(images, command=command)
    loss, parts = net.compute_loss(out["steer"], out["logits"], targets)  # float32 whatever the autocast
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack([parts["loss"], parts["loss_regression"], parts["loss_classification"]])


def batches(loader: torch.utils.data.DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches; an error raised in a worker comes out as one line (its own message)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except CarilError as e:
            raise DatasetError(_worker_message(str(e))) from None
        yield batch


def _worker_message(text: str) -> str:
    if "Original Traceback" not in text:
        return text.splitlines()[0] if text else text
    last = [line for line in text.splitlines() if line.strip()][-1]
    head, sep, tail = last.partition(": ")
    return tail if sep and head.endswith(("Error", "Exception")) and " " not in head else last


# --- 3. the loop -------------------------------------------------------------------------------------------------


class TrainCallbacks:
    """Progress hooks, called on rank 0 only (override what you need; the CLI draws a progress bar)."""

    def on_start(self, info: dict[str, Any]) -> None:
        """``info``: epochs, start_epoch, steps_per_epoch, total_steps, start_step, train/val frames."""

    def on_step(self, step: int, losses: dict[str, float] | None) -> None:
        """After each optimizer step; ``losses`` (loss, regression, classification, ms_per_iter, lr) every
        ``log_every`` steps, else None."""

    def on_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """After an epoch's validation and checkpoints."""


@dataclass
class LoopState:
    """Counters that resume restores: completed ``epoch``, optimizer ``step``, early-stopping bookkeeping."""

    epoch: int = 0
    step: int = 0
    best_val: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k in ("epoch", "step", "best_val", "best_epoch", "bad_epochs"):
            setattr(self, k, d[k])


@dataclass
class TrainResult:
    """Where a run ended: its folder, the epochs done, the best epoch and its metrics, why it stopped."""

    run: Path
    epochs_completed: int
    best_epoch: int
    best_val_loss: float
    temperature: float
    stopped: str
    metrics: dict[str, Any]


@dataclass
class Loop:
    """Everything the epoch functions share."""

    cfg: TrainConfig
    world: Dist
    data: Data
    net: DualHeadNet  # the plain module (checkpoints, loss)
    fast: nn.Module  # net, compiled if asked (evaluation)
    model: nn.Module  # fast, wrapped in DDP when distributed (training)
    optimizer: torch.optim.Optimizer
    state: LoopState
    callbacks: TrainCallbacks
    writer: Any  # SummaryWriter on rank 0, else None
    run: Path
    total_steps: int
    warmup_steps: int

    @property
    def channels_last(self) -> bool:
        return self.world.device.type == "cuda" and self.cfg.amp


def train_epoch(loop: Loop, epoch: int) -> dict[str, float]:
    """One pass over this rank's shard of the training set; returns mean losses and throughput."""
    cfg, world, state = loop.cfg, loop.world, loop.state
    loop.model.train()
    loop.data.train_sampler.set_epoch(epoch)
    autocast = autocast_for(cfg, world.device)
    sums = torch.zeros(3, dtype=torch.float64, device=world.device)
    nonfinite = torch.zeros((), dtype=torch.int64, device=world.device)
    samples, t0 = 0, time.perf_counter()
    t_log, step_log = t0, state.step
    for batch in batches(loop.data.train_loader):
        lr = get_lr(state.step, cfg.lr, cfg.floor_lr, loop.warmup_steps, loop.total_steps)
        for group in loop.optimizer.param_groups:
            group["lr"] = lr
        images, command, targets = to_device(batch, cfg.preprocess, world.device, loop.channels_last)
        parts = train_step(loop.model, loop.net, loop.optimizer, images, command, targets, cfg.grad_clip, autocast)
        n = len(images)
        sums += parts.double() * n
        nonfinite += (~torch.isfinite(parts[0])).long()
        samples += n
        state.step += 1
        losses = None
        if state.step % cfg.log_every == 0:
            _check_finite(loop, nonfinite, epoch)
            now = time.perf_counter()  # reading the losses below is a host-device sync point
            losses = dict(zip(("loss", "loss_regression", "loss_classification"), parts.tolist(), strict=True))
            losses.update(ms_per_iter=1e3 * (now - t_log) / (state.step - step_log), lr=lr)
            t_log, step_log = now, state.step
            _log_step(loop, losses)
        if world.is_main:
            loop.callbacks.on_step(state.step, losses)
    _check_finite(loop, nonfinite, epoch)
    elapsed = time.perf_counter() - t0
    mean = (sums / max(samples, 1)).tolist()
    return {"train_loss": mean[0], "train_loss_regression": mean[1], "train_loss_classification": mean[2],
            "train_samples_per_s": samples * world.world_size / elapsed,
            "ms_per_iter": 1e3 * elapsed / max(1, loop.data.steps_per_epoch), "lr": lr if samples else cfg.lr}


def _check_finite(loop: Loop, nonfinite: torch.Tensor, epoch: int) -> None:
    if loop.world.any(bool(nonfinite.item())):
        kept = f"the last good checkpoint is {loop.run / 'last'} (epoch {loop.state.epoch})" if loop.state.epoch \
            else "no checkpoint was written yet"
        raise TrainingDiverged(f"the training loss became NaN or infinite in epoch {epoch} (step <= {loop.state.step}, "
                               f"peak lr {loop.cfg.lr:g}); {kept}; lower --lr, keep --grad-clip on, or check the data")


def _log_step(loop: Loop, losses: dict[str, float]) -> None:
    log.info("step %d loss %.4f (regression %.4f, classification %.4f) lr %.2e %.1f ms/iter", loop.state.step,
             losses["loss"], losses["loss_regression"], losses["loss_classification"], losses["lr"],
             losses["ms_per_iter"])
    if loop.writer is not None:
        for key, tag in (("loss", "train"), ("loss_regression", "train_regression"),
                         ("loss_classification", "train_classification")):
            loop.writer.add_scalar(f"losses/{tag}", losses[key], loop.state.step)
        loop.writer.add_scalar("charts/lr", losses["lr"], loop.state.step)
        loop.writer.add_scalar("charts/ms_per_iter", losses["ms_per_iter"], loop.state.step)


@torch.no_grad()
def predict(loop: Loop) -> dict[str, np.ndarray]:
    """Regression outputs and logits of the whole validation set (all ranks' shards, ordered by frame)."""
    loop.fast.eval()
    autocast = autocast_for(loop.cfg, loop.world.device)
    parts: dict[str, list[np.ndarray]] = {"steer": [], "logits": [], "target_steer": [], "target_bin": [],
                                          "frame": []}
    for batch in batches(loop.data.val_loader):
        images, command, _ = to_device(batch, loop.cfg.preprocess, loop.world.device, loop.channels_last)
        with autocast:
            out = loop.fast(images, command=command)
        parts["steer"].append(out["steer"].float().cpu().numpy())
        parts["logits"].append(out["logits"].float().cpu().numpy())
        parts["target_steer"].append(batch["steer"].numpy())
        parts["target_bin"].append(batch["bin"].numpy())
        parts["frame"].append(batch["frame"].numpy())
    local = {k: np.concatenate(v) for k, v in parts.items() if v}
    merged = [p for p in loop.world.gather(local) if p]
    result = {k: np.concatenate([p[k] for p in merged]) for k in parts}
    order = np.argsort(result["frame"], kind="stable")
    return {k: v[order] for k, v in result.items()}


def validation_metrics(pred: dict[str, np.ndarray], net: DualHeadNet, steer_scale: float) -> dict[str, Any]:
    """Validation losses, steering errors (normalised and CARLA units), accuracy, ECE, temperature, confusion."""
    steer, logits = torch.from_numpy(pred["steer"]), torch.from_numpy(pred["logits"])
    targets = {"steer": torch.from_numpy(pred["target_steer"]), "bin": torch.from_numpy(pred["target_bin"])}
    _, parts = net.compute_loss(steer, logits, targets)
    error = pred["steer"].astype(np.float64) - pred["target_steer"]
    mae, rmse = float(np.mean(np.abs(error))), float(np.sqrt(np.mean(error**2)))
    report = calibration.calibrate(pred["logits"], pred["target_bin"], net.config.n_bins)
    return {"val_loss": float(parts["loss"]), "val_loss_regression": float(parts["loss_regression"]),
            "val_loss_classification": float(parts["loss_classification"]),
            "steer_mae": mae, "steer_rmse": rmse, "steer_mae_carla": mae / steer_scale,
            "steer_rmse_carla": rmse / steer_scale, "val_frames": len(error), **report.to_dict()}


def end_epoch(loop: Loop, epoch: int, metrics: dict[str, Any], history: list[dict[str, Any]],
              pred: dict[str, np.ndarray]) -> bool:
    """Early-stopping bookkeeping, checkpoints, metrics and plots (rank 0); returns whether to stop."""
    state = loop.state
    state.epoch = epoch
    improved = state.best_val is None or metrics["val_loss"] < state.best_val
    if improved:
        state.best_val, state.best_epoch, state.bad_epochs = metrics["val_loss"], epoch, 0
    else:
        state.bad_epochs += 1
    stop = state.bad_epochs >= loop.cfg.patience
    metrics.update(epoch=epoch, step=state.step, best=improved)
    history.append(metrics)
    if loop.world.is_main:
        save_epoch(loop, metrics, improved, pred)
        write_metrics(loop, history, "early_stopping" if stop else "completed" if epoch == loop.cfg.epochs
                      else "running")
        log_epoch(loop, metrics)
    loop.world.barrier()  # no rank goes on (or reads a checkpoint) before rank 0 has written
    return stop


def save_epoch(loop: Loop, metrics: dict[str, Any], improved: bool, pred: dict[str, np.ndarray]) -> None:
    """``RUN/last`` (weights, config, training state) and, when the validation loss improved, ``RUN/best``
    with the validation predictions ``pred``."""
    cfg, state = loop.cfg, loop.state
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    meta = {"epoch": state.epoch, "step": state.step, "metrics": scalars, "labels": cfg.labels.to_dict(),
            "augment": cfg.augment.to_dict(), "data": str(cfg.data), "trained_on": loop.data.conditions,
            "world_size": loop.world.world_size,
            "written_by_rank": loop.world.rank, "software_version": software_version()}
    kwargs = {"loss_cfg": cfg.loss, "temperature": metrics["temperature"], "steer_scale": cfg.labels.steer_scale}
    if improved:  # best/ first: a kill before last/ is saved re-runs this epoch, which rewrites best/ alike
        save_checkpoint(loop.run / "best", loop.net, cfg.network, cfg.preprocess, cfg.labels.bins, meta, **kwargs)
        np.savez(loop.run / "best" / PREDICTIONS_FILE, **pred)  # plain arrays, read with allow_pickle=False
    save_checkpoint(loop.run / "last", loop.net, cfg.network, cfg.preprocess, cfg.labels.bins, meta, **kwargs)
    # the LR schedule is a pure function of the step, so the "scheduler" slot holds the loop's counters
    # (epoch, step, best validation loss and epoch, early-stopping count); the RNG states are captured here
    save_training_state(loop.run / "last" / STATE_FILE, loop.optimizer, state, state.epoch, state.step,
                        best_val=state.best_val)


def write_metrics(loop: Loop, history: list[dict[str, Any]], stopped: str) -> None:
    best = next(m for m in history if m["epoch"] == loop.state.best_epoch)
    split = loop.data.split
    write_json_atomic(loop.run / "metrics.json", {
        "best_epoch": loop.state.best_epoch, "best": best, "temperature": best["temperature"],
        "last_epoch": loop.state.epoch, "stopped": stopped, "world_size": loop.world.world_size,
        "train_frames": len(split.train), "val_frames": len(split.val),
        "train_episodes": list(split.train_episodes), "val_episodes": list(split.val_episodes), "epochs": history})


def log_epoch(loop: Loop, metrics: dict[str, Any]) -> None:
    """The epoch's summary to the log and its scalars to TensorBoard."""
    log.info("epoch %d train %.4f val %.4f mae %.4f acc %.3f ece %.3f T %.2f%s", metrics["epoch"],
             metrics["train_loss"], metrics["val_loss"], metrics["steer_mae"], metrics["accuracy"], metrics["ece"],
             metrics["temperature"], " (best)" if metrics["best"] else "")
    w, step = loop.writer, loop.state.step
    if w is None:
        return
    for key, tag in (("val_loss", "val"), ("val_loss_regression", "val_regression"),
                     ("val_loss_classification", "val_classification")):
        w.add_scalar(f"losses/{tag}", metrics[key], step)
    for key in ("steer_mae", "steer_rmse", "steer_mae_carla", "steer_rmse_carla", "accuracy", "ece",
                "ece_calibrated", "temperature", "nll", "nll_calibrated"):
        w.add_scalar(f"metrics/{key}", metrics[key], step)
    w.add_scalar("charts/epoch", metrics["epoch"], step)
    w.add_scalar("charts/samples_per_s", metrics["train_samples_per_s"], step)
    w.flush()


def write_figures(loop: Loop) -> None:
    """Confusion matrix and reliability diagrams of the best epoch: ``RUN/*.png`` and TensorBoard ``charts/``.

    Drawn once at the end of the run, from the best epoch's validation outputs saved in ``RUN/best``."""
    path = loop.run / "best" / PREDICTIONS_FILE
    if not path.is_file():
        return
    with np.load(path, allow_pickle=False) as saved:
        logits, labels = saved["logits"], saved["target_bin"]
    best = loop.state.best_epoch
    temperature = calibration.fit_temperature(logits, labels)
    images = calibration.calibration_figures(logits, labels, temperature, loop.cfg.network.n_bins, f"epoch {best}")
    for name, rgb in images.items():
        calibration.save_png(rgb, loop.run / f"{name}.png")
        if loop.writer is not None:
            loop.writer.add_image(f"charts/{name}", rgb, loop.state.step, dataformats="HWC")


# --- run folder and resume -------------------------------------------------------------------------------------


def check_run_folder(cfg: TrainConfig) -> bool:
    """Whether the run resumes: a new run needs a folder without a run in it; ``--resume`` continues from
    ``RUN/last`` and its training state, or starts afresh in the folder when no epoch finished there (a run
    killed during its first epoch), saying so, so a resume is never a dead end."""
    run = Path(cfg.out)
    if cfg.resume:
        if (run / "last" / STATE_FILE).is_file():
            return True
        log.warning("nothing to resume in %s: no epoch finished there (no last/%s); starting the run afresh in "
                    "that folder", run, STATE_FILE)
        return False
    if any((run / name).exists() for name in ("config.json", "metrics.json", "last", "best")):
        raise UsageError(f"{run} already holds a training run; continue it with --resume or choose another --out")
    return False


def _comparable(cfg: NetworkConfig) -> dict[str, Any]:
    """The network settings that shape the weights (not where the initial ones came from), JSON-normalised."""
    return json.loads(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("pretrained", "weights_path")}))


def resume(loop: Loop) -> list[dict[str, Any]]:
    """Load ``RUN/last`` into the model, optimizer and counters; restore the RNGs; return the metric history."""
    cfg, last = loop.cfg, loop.run / "last"
    ckpt = load_checkpoint(last)
    wanted = json.loads(json.dumps({
        "network": _comparable(cfg.network), "preprocess": cfg.preprocess.to_dict(), "loss": cfg.loss.to_dict(),
        "bins": cfg.labels.bins.to_dict(), "steer_scale": cfg.labels.steer_scale}))
    found = json.loads(json.dumps({
        "network": _comparable(ckpt.network), "preprocess": ckpt.preprocess.to_dict(), "loss": ckpt.loss.to_dict(),
        "bins": ckpt.bins.to_dict(), "steer_scale": ckpt.steer_scale}))
    diffs = [f"{part}.{k}: {found[part][k]!r} in the run, {v!r} now" if isinstance(wanted[part], dict)
             else f"{part}: {found[part]!r} in the run, {wanted[part]!r} now"
             for part in wanted
             for k, v in (wanted[part].items() if isinstance(wanted[part], dict) else [(None, wanted[part])])
             if (found[part].get(k) if isinstance(found[part], dict) else found[part]) != v]
    if diffs:
        raise CheckpointError(f"cannot resume {loop.run}: its checkpoint does not match this configuration "
                              f"({'; '.join(diffs[:4])}); resume with the run's settings or choose another --out")
    stored = json.loads((loop.run / "config.json").read_text()) if (loop.run / "config.json").is_file() else {}
    now = json.loads(json.dumps(cfg.to_dict()))
    changed = [f"{k}: {stored[k]!r} in the run, {now[k]!r} now" for k in RESUME_FIXED if k in stored
               and stored[k] != now[k]]
    if changed:
        raise CheckpointError(f"cannot resume {loop.run}: {'; '.join(changed[:3])}; the rest of a run trains as it "
                              "began (only --epochs, workers and devices may change): resume with the run's "
                              "settings or choose another --out")
    if stored.get("split") and stored["split"] != _split_record(loop.data.split):
        raise CheckpointError(f"cannot resume {loop.run}: the episodes of {cfg.data} differ from the ones the run "
                              "was split on (other data, or a run of several datasets started before their split "
                              "rule changed); resume with the same dataset or choose another --out")
    ts = load_training_state(last / STATE_FILE)
    if ts.epoch != ckpt.meta.get("epoch"):
        raise CheckpointError(f"{last}: the weights are from epoch {ckpt.meta.get('epoch')} but {STATE_FILE} from "
                              f"epoch {ts.epoch} (an interrupted save); start the run again")
    loop.net.load_state_dict(ckpt.model.state_dict())
    try:
        loop.optimizer.load_state_dict(ts.optimizer)
        loop.state.load_state_dict(ts.scheduler or {})
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{last / STATE_FILE} does not fit this model's optimizer ({e}); start again") from None
    metrics_path = loop.run / "metrics.json"
    history = json.loads(metrics_path.read_text())["epochs"] if metrics_path.is_file() else []
    history = [m for m in history if m["epoch"] <= ts.epoch]
    if not any(m["epoch"] == ts.epoch for m in history):  # killed after the checkpoint, before metrics.json
        history.append({**ckpt.meta.get("metrics", {}), "epoch": ts.epoch})
    restore_rng_states(ts.rng_states)  # last: building the model and loaders drew from the generators
    return history


RESUME_FIXED = ("labels", "augment", "batch_size", "lr", "min_lr", "warmup_fraction", "weight_decay", "grad_clip",
                "val_fraction", "patience", "balanced_sampling", "seed")  # what a resumed run may not change


def _split_record(split: Split) -> dict[str, list[str]]:
    return {"train": list(split.train_episodes), "val": list(split.val_episodes)}


def write_run_config(cfg: TrainConfig, world: Dist, data: Data, run: Path) -> None:
    write_json_atomic(run / "config.json", {
        **cfg.to_dict(), "world_size": world.world_size, "global_batch_size": cfg.batch_size * world.world_size,
        "steps_per_epoch": data.steps_per_epoch, "split": _split_record(data.split),
        "software_version": software_version(), "torch_version": torch.__version__})


# --- the entry point ---------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns where it ended. See the module docstring."""
    world = setup_distributed(cfg.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    writer = None
    try:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if world.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        resuming = check_run_folder(cfg)
        world.barrier()
        seed_everything(cfg.seed)
        data = build_data(cfg, world)
        net = build_model(cfg, world.device)
        optimizer = build_optimizer(cfg, net)
        fast = torch.compile(net) if cfg.compile else net
        model = nn.parallel.DistributedDataParallel(
            fast, device_ids=[world.device.index] if world.device.type == "cuda" else None) if world.active else fast
        run = Path(cfg.out)
        total = data.steps_per_epoch * cfg.epochs
        loop = Loop(cfg, world, data, net, fast, model, optimizer, LoopState(), callbacks or TrainCallbacks(), None,
                    run, total, round(cfg.warmup_fraction * total))
        history = resume(loop) if resuming else []
        if world.is_main:
            run.mkdir(parents=True, exist_ok=True)
            write_run_config(cfg, world, data, run)
            from torch.utils.tensorboard import SummaryWriter

            writer = loop.writer = SummaryWriter(str(run / "tb"), purge_step=loop.state.step if resuming else None)
        world.barrier()
        return run_epochs(loop, history)
    finally:
        if writer is not None:
            writer.close()
        torch.use_deterministic_algorithms(deterministic)
        if world.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def run_epochs(loop: Loop, history: list[dict[str, Any]]) -> TrainResult:
    """Epochs ``state.epoch + 1 .. cfg.epochs``, stopping early when validation stops improving."""
    cfg, state = loop.cfg, loop.state
    if loop.world.is_main:
        loop.callbacks.on_start({"epochs": cfg.epochs, "start_epoch": state.epoch + 1, "start_step": state.step,
                                 "steps_per_epoch": loop.data.steps_per_epoch, "total_steps": loop.total_steps,
                                 "train_frames": len(loop.data.split.train), "val_frames": len(loop.data.split.val),
                                 "world_size": loop.world.world_size})
    stopped = "early_stopping" if state.bad_epochs >= cfg.patience else "completed"
    last_epoch = state.epoch if stopped == "early_stopping" else cfg.epochs  # a resumed early stop stays stopped
    epochs = range(state.epoch + 1, last_epoch + 1)
    for epoch in epochs:
        train_metrics = train_epoch(loop, epoch)
        pred = predict(loop)
        metrics = {**train_metrics, **validation_metrics(pred, loop.net, cfg.labels.steer_scale)}
        if not math.isfinite(metrics["val_loss"]):
            raise TrainingDiverged(f"the validation loss is {metrics['val_loss']} after epoch {epoch}; the last "
                                   f"good checkpoint is {loop.run / 'last'}; lower --lr")
        stop = end_epoch(loop, epoch, metrics, history, pred)
        if loop.world.is_main:
            loop.callbacks.on_epoch(epoch, metrics)
        if stop:
            stopped = "early_stopping"
            break
    if loop.world.is_main:
        if not epochs and history:  # nothing ran (e.g. a resumed early stop): metrics.json says how it ended
            write_metrics(loop, history, stopped)
        write_figures(loop)
    best = next((m for m in history if m["epoch"] == state.best_epoch), {})
    return TrainResult(loop.run, state.epoch, state.best_epoch, state.best_val if state.best_val is not None
                       else math.nan, best.get("temperature", 1.0), stopped, best)
