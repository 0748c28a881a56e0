"""``caril bench train``: samples per second of the training loop, and of its data pipeline alone.

    caril bench train --json bench_train.json
    caril bench train --data data/demo --networks default --json bench_train.json

For each network (``default``: the small CPU CNN; ``paper``: ResNet-50, 160x160, the reference's frozen
layers, randomly initialised since no ImageNet weights are on disk, which does not change the cost):

* ``train_samples_per_s``: the full loop of ``caril train``: DataLoader workers decode the recorded JPEG
  frames, crop/resize them as the agent does and augment them (flip, colour jitter); the main process
  normalises, runs forward, loss, backward, gradient clipping and the AdamW step;
* ``pipeline_samples_per_s``: the same DataLoader (same workers, prefetch and augmentation) iterated with
  the model removed;
* ``pipeline_to_train_ratio``: how much faster the pipeline delivers than the model consumes (target >= 2 on
  CPU: the model, not the data, sets the pace).

The dataset is recorded into a temporary folder (the embedded simulator, 448x448 JPEG, the paper's routes)
unless ``--data`` names one. With a CUDA GPU, ``paper_gpu_amp`` adds the paper network with bf16 autocast and
channels-last on the GPU: full-loop and model-only samples per second and the peak GPU memory.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agent.network import NetworkConfig
from agent.preprocess import PreprocessConfig
from scripts.args import arg
from sim.errors import UsageError
from sim.types import CameraConfig, parse_resolution
from training.train import (
    Dist,
    TrainConfig,
    autocast_for,
    build_data,
    build_model,
    build_optimizer,
    to_device,
    train_step,
)

DESCRIPTION = "Training samples per second (full loop) and data-pipeline samples per second (no model)."
NETWORKS = ("default", "paper")
TARGET_RATIO = 2.0
PAPER_NOTE = ("randomly initialised: no ImageNet weights on disk; the reference's frozen layers are kept, so a "
              "step costs what the paper's does")


@dataclass
class Args:
    json: str | None = arg(None, help="also write the JSON to this path")
    data: str = arg("", help="a recorded dataset to read (default: record one into a temporary folder)")
    frames: int = arg(900, help="frames to record when --data is not given")
    episode_frames: int = arg(300, help="frames per recorded episode")
    res: str = arg("448x448", help="camera resolution WIDTHxHEIGHT of the recording")
    networks: str = arg("default,paper", help="comma-separated: default, paper")
    batch_size: int = arg(32, help="samples per step")
    workers: int = arg(2, help="DataLoader worker processes")
    prefetch: int = arg(4, help="batches each worker prepares ahead")
    seconds: float = arg(12.0, help="minimum timed seconds per measurement")
    min_steps: int = arg(3, help="minimum timed steps (or batches) per measurement")
    warmup: int = arg(2, help="untimed steps first (worker start, allocator, kernels)")
    gpu_batch_size: int = arg(64, help="batch size of the GPU measurement")
    seed: int = arg(0, help="seed of the recording and the training")

    def __post_init__(self) -> None:
        self.network_names = [n.strip() for n in self.networks.split(",") if n.strip()]
        unknown = sorted(set(self.network_names) - set(NETWORKS))
        if unknown or not self.network_names:
            raise UsageError(f"--networks {self.networks!r}: name some of {', '.join(NETWORKS)}")
        if min(self.frames, self.episode_frames, self.batch_size, self.min_steps, self.gpu_batch_size) < 1 or \
                self.workers < 0 or self.seconds <= 0 or self.warmup < 0:
            raise UsageError("--frames, --episode-frames, --batch-size, --min-steps and --seconds must be positive, "
                             "--workers and --warmup not negative")
        parse_resolution(self.res)


def network_config(name: str) -> NetworkConfig:
    return NetworkConfig() if name == "default" else NetworkConfig.preset("paper", pretrained=False)


def record(args: Args, out: Path) -> dict[str, Any]:
    from training.collect import CollectConfig, CollectJob

    width, height = parse_resolution(args.res)
    config = CollectConfig(episodes=max(2, math.ceil(args.frames / args.episode_frames)), seed=args.seed,
                           camera=CameraConfig(width=width, height=height), max_frames=args.episode_frames)
    t0 = time.perf_counter()
    job = CollectJob(config, out)
    entries = job.run(job.prepare())
    return {"recorded": True, "frames": sum(e["frames"] for e in entries), "camera": args.res, "codec": "jpeg",
            "record_s": round(time.perf_counter() - t0, 1)}


def timed(step, batches, min_steps: int, seconds: float, warmup: int) -> tuple[float, int]:
    """Run ``step(batch)`` over an endless batch iterator: ``warmup`` untimed, then at least ``min_steps`` and
    ``seconds``; returns (elapsed seconds, samples)."""
    for _ in range(warmup):
        step(next(batches))
    samples, t0 = 0, time.perf_counter()
    steps = 0
    while steps < min_steps or time.perf_counter() - t0 < seconds:
        samples += step(next(batches))
        steps += 1
    return time.perf_counter() - t0, samples


def endless(data) -> Any:
    epoch = 0
    while True:
        epoch += 1
        data.train_sampler.set_epoch(epoch)
        yield from data.train_loader


def measure(args: Args, name: str, root: str, out: Path, device: torch.device, amp: bool,
            batch_size: int) -> dict[str, Any]:
    """Pipeline alone, then the full loop, for one network on one device."""
    cfg = TrainConfig(data=root, out=str(out / name), network=network_config(name), preprocess=PreprocessConfig(),
                      batch_size=batch_size, workers=args.workers, prefetch_factor=args.prefetch,
                      device=device.type, amp=amp, seed=args.seed, check="none")
    torch.manual_seed(args.seed)
    world = Dist(device=device)
    data = build_data(cfg, world)
    batches = endless(data)
    pipe_s, pipe_n = timed(lambda b: len(b["image"]), batches, args.min_steps, args.seconds, args.warmup)
    net = build_model(cfg, device).train()
    optimizer = build_optimizer(cfg, net)
    autocast = autocast_for(cfg, device)
    channels_last = device.type == "cuda" and amp

    def step(batch) -> int:
        images, command, targets = to_device(batch, cfg.preprocess, device, channels_last)
        train_step(net, net, optimizer, images, command, targets, cfg.grad_clip, autocast)
        return len(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s, train_n = timed(lambda b: _synced(step, b, device), batches, args.min_steps, args.seconds,
                             args.warmup)
    result = {"backbone": cfg.network.backbone, "input": "160x160", "parameters": net.num_parameters(),
              "trainable_parameters": net.num_parameters(trainable_only=True),
              "train_samples_per_s": round(train_n / train_s, 1), "ms_per_step": round(1e3 * train_s * batch_size
                                                                                        / train_n, 1),
              "pipeline_samples_per_s": round(pipe_n / pipe_s, 1)}
    result["pipeline_to_train_ratio"] = round(result["pipeline_samples_per_s"] / result["train_samples_per_s"], 2)
    if device.type == "cuda":
        result["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        result["model_only_samples_per_s"] = model_only(step, next(batches), args)
    del batches, data  # stops the workers
    return result


def _synced(step, batch, device: torch.device) -> int:
    n = step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n


def model_only(step, batch, args: Args) -> float:
    """The GPU's own rate: one batch stepped repeatedly (no data loading)."""
    device = torch.device("cuda")
    elapsed, n = timed(lambda b: _synced(step, b, device), iter(lambda: batch, None), args.min_steps,
                       min(args.seconds, 5.0), args.warmup)
    return round(n / elapsed, 1)


def bench(args: Args) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="caril-bench-train-") as tmp:
        tmp_path = Path(tmp)
        if args.data:
            root, dataset = args.data, {"recorded": False, "path": args.data}
        else:
            root, dataset = str(tmp_path / "data"), record(args, tmp_path / "data")
        cpu = torch.device("cpu")
        result: dict[str, Any] = {"dataset": dataset, "device": "cpu", "torch_threads": torch.get_num_threads(),
                                  "batch_size": args.batch_size, "workers": args.workers,
                                  "prefetch_factor": args.prefetch, "target_ratio": TARGET_RATIO}
        for name in args.network_names:
            result[name] = measure(args, name, root, tmp_path / "runs", cpu, amp=False, batch_size=args.batch_size)
            result[name]["meets_target"] = result[name]["pipeline_to_train_ratio"] >= TARGET_RATIO
        if "paper" in result:
            result["paper"].update(pretrained=False, note=PAPER_NOTE)
        if torch.cuda.is_available():
            result["paper_gpu_amp"] = {"gpu": torch.cuda.get_device_name(0), "amp": "bf16", "channels_last": True,
                                       "batch_size": args.gpu_batch_size,
                                       **measure(args, "paper", root, tmp_path / "gpu", torch.device("cuda"), True,
                                                 args.gpu_batch_size)}
        else:
            result["paper_gpu_amp"] = None
        return result
