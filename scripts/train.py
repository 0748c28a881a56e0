"""Train a dual-head policy offline on a recorded dataset (one process, or many under ``torchrun``).

    caril train --data data/demo --out runs/fast                       # the small CPU CNN, 160x160
    caril train --data data/demo --out runs/fast --resume              # continue after an interruption
    caril train --data data/paper --out runs/paper --preset paper --weights resnet50-11ad3fa6.pth
    torchrun --nproc_per_node=4 -m scripts.train --data data/paper --out runs/paper --preset paper

Writes ``RUN/config.json`` (resolved settings and the episode split), ``RUN/best/`` and ``RUN/last/``
(checkpoints for ``caril evaluate --checkpoint``; ``last/`` also holds the resume state), ``RUN/metrics.json``
(per-epoch losses, steering MAE/RMSE, accuracy, ECE, temperature, confusion matrix), the best epoch's
``confusion_matrix.png`` and reliability diagrams, and TensorBoard logs in ``RUN/tb`` (``tensorboard --logdir
RUN/tb``). ``--batch-size`` is per process. Options left at 0 take the preset's value.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from agent.network import LossConfig, NetworkConfig
from agent.preprocess import PreprocessConfig
from scripts.args import arg
from sim.errors import UsageError
from sim.types import parse_resolution
from training.data_options import LabelOptions
from training.dataset import AugmentConfig
from training.train import CHECKS, PRESETS, TrainCallbacks, TrainConfig, train

DESCRIPTION = "Train a dual-head (regression + classification) steering network on a recorded dataset."


@dataclass
class Args:
    data: str = arg(help="dataset folder (written by caril collect); several, comma-separated, train together "
                         "(e.g. the expert's data and a DAgger recording)")
    out: str = arg(help="run folder (best/, last/, metrics.json, tb/, plots)")
    preset: str = arg("fast", help="fast: small CPU CNN; paper: the reference's ResNet-50", choices=PRESETS)
    backbone: str = arg("", help="replace the preset's backbone (small_cnn, resnet18/34/50, mobilenet_v3_small, "
                                 "efficientnet_b0)")
    pretrained: bool = arg(True, help="ImageNet weights for torchvision backbones, from a local file only "
                                      "(--no-pretrained: random init)")
    weights: str = arg("", help="backbone weights file (.pth or .safetensors) instead of torchvision's cache")
    input_size: str = arg("", help="network input WIDTHxHEIGHT (default: the preset's 160x160)")
    commands: bool = arg(True, help="one pair of heads per route command, as CIL (--no-commands: camera only, "
                                    "as the paper)")
    normalisation: str = arg("none", help="input normalisation (imagenet for pretrained backbones)",
                             choices=("none", "imagenet"))
    epochs: int = arg(0, help="epochs (0: the preset's: fast 20, paper 50)")
    batch_size: int = arg(0, help="samples per step and process (0: the preset's: fast 64, paper 32)")
    lr: float = arg(0.0, help="peak learning rate (0: the preset's: fast 1e-3, paper 1e-4)")
    min_lr: float = arg(-1.0, help="floor of the cosine decay (-1: lr / 10)")
    warmup: float = arg(0.05, help="linear warm-up, fraction of all steps")
    weight_decay: float = arg(1e-4, help="AdamW weight decay (weights only)")
    grad_clip: float = arg(1.0, help="max gradient norm (0: off)")
    patience: int = arg(0, help="epochs without a better validation loss before stopping (0: fast 5, paper 10)")
    val_fraction: float = arg(0.2, help="share of episodes held out for validation")
    loss: str = arg("mse", help="regression loss", choices=("mse", "huber"))
    w_regression: float = arg(0.5, help="weight of the regression loss")
    w_classification: float = arg(0.5, help="weight of the classification loss")
    steer_limit: float = arg(0.25, help="keep frames with |steer| <= this, CARLA units (0: keep all)")
    steer_scale: float = arg(4.0, help="the network predicts steer x this, clipped to [-1, 1]")
    max_per_bin: int = arg(0, help="cap frames per steering bin, a seeded subset (0: no cap)")
    n_bins: int = arg(11, help="steering classes")
    drop_noisy: bool = arg(False, help="leave out frames recorded while steering noise was active")
    flip: float = arg(0.5, help="probability of a horizontal flip (steer negated, class mirrored)")
    jitter: float = arg(0.2, help="brightness, contrast and saturation jitter strength (0: off)")
    brightness: float = arg(-1.0, help="brightness jitter alone, a factor in [1 - b, 1 + b] (-1: --jitter)")
    colour: float = arg(0.0, help="colour cast: a gain per RGB channel in [1 - c, 1 + c] (0: off)")
    haze: float = arg(0.0, help="blend towards a uniform grey by up to this weight, as fog (0: off)")
    blur: float = arg(0.0, help="probability of a Gaussian blur (0: off)")
    blur_sigma: float = arg(1.5, help="largest blur sigma, pixels of the network input")
    balanced_sampling: bool = arg(False, help="draw every steering class equally often")
    workers: int = arg(2, help="DataLoader worker processes per training process")
    prefetch: int = arg(4, help="batches each worker prepares ahead")
    device: str = arg("auto", help="auto, cpu, cuda or cuda:N")
    amp: bool = arg(True, help="bf16 autocast and channels-last on GPU (ignored on CPU)")
    compile: bool = arg(False, help="torch.compile the network")
    resume: bool = arg(False, help="continue the run in --out from its last epoch")
    seed: int = arg(0, help="seed of the model init, split, sampling and augmentation")
    log_every: int = arg(20, help="steps between loss logs")
    check: str = arg("sample", help="dataset check before training (all decodes every frame)", choices=CHECKS)
    deterministic: bool = arg(False, help="deterministic algorithms (reproducible, slower on GPU)")

    def __post_init__(self) -> None:
        self.config = build_config(self)


def build_config(a: Args) -> TrainConfig:
    """The :class:`TrainConfig` of the command line (validated)."""
    base = TrainConfig.preset(a.preset, data=a.data, out=a.out)
    net = base.network
    overrides: dict[str, Any] = {"n_bins": a.n_bins, "command_branches": a.commands}
    if a.backbone:
        overrides["backbone"] = a.backbone
    backbone = overrides.get("backbone", net.backbone)
    pretrained = (a.pretrained or bool(a.weights)) and backbone != "small_cnn"
    if a.weights and backbone == "small_cnn":
        raise UsageError("--weights is for torchvision backbones; small_cnn trains from scratch")
    overrides.update(pretrained=pretrained, weights_path=a.weights or None)
    if not pretrained or backbone != net.backbone:
        overrides["frozen_backbone_prefixes"] = ()  # the preset's frozen layers are its own pretrained backbone's
    preprocess = PreprocessConfig(normalisation=a.normalisation)
    if a.input_size:
        width, height = parse_resolution(a.input_size)
        if not (32 <= width <= 2048 and 32 <= height <= 2048):
            raise UsageError(f"--input-size {a.input_size}: each side must be 32..2048 pixels")
        overrides["input_size"] = (height, width)
        preprocess = PreprocessConfig(height=height, width=width, normalisation=a.normalisation)
    net = NetworkConfig.from_dict({**net.to_dict(), **overrides})
    if a.steer_limit < 0 or a.max_per_bin < 0:
        raise UsageError("--steer-limit and --max-per-bin must not be negative (0: off)")
    labels = LabelOptions(steer_limit=a.steer_limit or None, steer_scale=a.steer_scale,
                          max_per_bin=a.max_per_bin or None, n_bins=a.n_bins, drop_noisy=a.drop_noisy, seed=a.seed)
    return TrainConfig(
        data=a.data, out=a.out, network=net, preprocess=preprocess,
        loss=LossConfig(regression=a.loss, w_regression=a.w_regression, w_classification=a.w_classification),
        labels=labels, augment=AugmentConfig(
            flip_prob=a.flip, brightness=a.jitter if a.brightness < 0 else a.brightness, contrast=a.jitter,
            saturation=a.jitter, colour=a.colour, haze=a.haze, blur_prob=a.blur, blur_sigma=a.blur_sigma),
        epochs=a.epochs or base.epochs, batch_size=a.batch_size or base.batch_size, lr=a.lr or base.lr,
        min_lr=None if a.min_lr < 0 else a.min_lr, warmup_fraction=a.warmup, weight_decay=a.weight_decay,
        grad_clip=a.grad_clip, val_fraction=a.val_fraction, patience=a.patience or base.patience,
        balanced_sampling=a.balanced_sampling, workers=a.workers, prefetch_factor=a.prefetch, device=a.device,
        amp=a.amp, compile=a.compile, seed=a.seed, log_every=a.log_every, deterministic=a.deterministic,
        check=a.check, resume=a.resume)


class ProgressBar(TrainCallbacks):
    """A tqdm bar over optimizer steps, with the latest losses; one line per epoch."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        print(f"training on {info['train_frames']} frames, validating on {info['val_frames']} "
              f"({info['steps_per_epoch']} steps per epoch, {info['world_size']} process(es))"
              + (f", resuming at epoch {info['start_epoch']}" if info["start_step"] else ""))
        self.bar = tqdm(total=info["total_steps"], initial=info["start_step"], desc="train", unit="step")

    def on_step(self, step: int, losses: dict[str, float] | None) -> None:
        self.bar.update(1)
        if losses:
            self.bar.set_postfix(loss=f"{losses['loss']:.4f}", reg=f"{losses['loss_regression']:.4f}",
                                 cls=f"{losses['loss_classification']:.4f}", ms=f"{losses['ms_per_iter']:.0f}")

    def on_epoch(self, epoch: int, m: dict[str, Any]) -> None:
        self.bar.write(f"epoch {epoch}: train {m['train_loss']:.4f}  val {m['val_loss']:.4f}  steer MAE "
                       f"{m['steer_mae_carla']:.4f} RMSE {m['steer_rmse_carla']:.4f} (CARLA units)  acc "
                       f"{m['accuracy']:.3f}  ECE {m['ece']:.3f} -> {m['ece_calibrated']:.3f} "
                       f"(T={m['temperature']:.2f})  {m['train_samples_per_s']:.0f} samples/s"
                       f"{'  *best*' if m['best'] else ''}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: Args) -> int:
    main_rank = int(os.environ.get("RANK", "0")) == 0
    progress = ProgressBar() if main_rank else TrainCallbacks()
    try:
        result = train(args.config, progress)
    finally:
        if isinstance(progress, ProgressBar):
            progress.close()
    if main_rank:
        m = result.metrics
        print(f"{result.stopped.replace('_', ' ')} after epoch {result.epochs_completed}; best epoch "
              f"{result.best_epoch}: val loss {result.best_val_loss:.4f}, steer MAE {m.get('steer_mae_carla', 0):.4f} "
              f"(CARLA units), accuracy {m.get('accuracy', 0):.3f}, ECE {m.get('ece', 0):.3f} -> "
              f"{m.get('ece_calibrated', 0):.3f} at T={result.temperature:.2f}")
        print(f"checkpoint {result.run / 'best'}; drive it with: caril evaluate --policy caril --checkpoint "
              f"{result.run / 'best'} --out {result.run / 'eval'}")
    return 0


if __name__ == "__main__":  # torchrun --nproc_per_node=N -m scripts.train ...
    from scripts.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
