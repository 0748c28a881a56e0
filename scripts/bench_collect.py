"""``caril bench collect``: recording and reading throughput of the dataset format.

    caril bench collect --json bench_collect.json

Recording: the collection job end to end with one worker (embedded simulator, the paper's 448x448
camera, the expert with steering noise, JPEG encoding, HDF5 writing, manifest updates) over the paper's
routes, each episode cut at ``--episode-frames``: ``record_frames_per_s`` and ``bytes_per_frame`` on disk.
Reading: random frames of the recorded dataset, read and decoded to RGB one at a time through
``DatasetIndex`` as a training DataLoader worker would: ``read_frames_per_s``. Both run pinned to one CPU
core with OpenCV single-threaded. ``codecs`` compares the encodings of the same raw frames (time to encode
and decode, bytes) so the default can be chosen on numbers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from scripts.args import arg
from sim.errors import UsageError
from sim.types import CameraConfig, parse_resolution

DESCRIPTION = "Frames per second recorded (embedded sim, 448x448, expert, encode, write) and read back."
TARGETS = {"record_frames_per_s": 200.0, "read_frames_per_s": 1000.0}


@dataclass
class Args:
    json: str | None = arg(None, help="also write the JSON to this path")
    frames: int = arg(3000, help="frames to record (episodes of --episode-frames over the paper routes)")
    episode_frames: int = arg(500, help="frames per episode")
    reads: int = arg(3000, help="random frames read and decoded")
    res: str = arg("448x448", help="camera resolution WIDTHxHEIGHT (the paper's is 448x448)")
    image_format: str = arg("jpeg", help="jpeg or png", choices=("jpeg", "png"))
    jpeg_quality: int = arg(90, help="JPEG quality")
    codec_frames: int = arg(100, help="raw frames used to compare codecs (0: skip the comparison)")
    seed: int = arg(0, help="job seed")
    out: str | None = arg(None, help="keep the recorded dataset in this (new) folder instead of a temporary one")

    def __post_init__(self) -> None:
        if min(self.frames, self.episode_frames, self.reads) < 1 or self.codec_frames < 0:
            raise UsageError("--frames, --episode-frames and --reads must be positive, --codec-frames not negative")
        parse_resolution(self.res)


@contextlib.contextmanager
def one_core():
    """Pin this process to one CPU and OpenCV to one thread (restored afterwards)."""
    threads = cv2.getNumThreads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cv2.setNumThreads(1)
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})
    try:
        yield
    finally:
        cv2.setNumThreads(threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


def _record(args: Args, out: Path) -> dict:
    from training.collect import CollectConfig, CollectJob
    from training.episode_file import ImageCodec

    width, height = parse_resolution(args.res)
    episodes = -(-args.frames // args.episode_frames)
    config = CollectConfig(episodes=episodes, seed=args.seed, camera=CameraConfig(width=width, height=height),
                           codec=ImageCodec(args.image_format, args.jpeg_quality), max_frames=args.episode_frames)
    with one_core():
        t0 = time.perf_counter()
        job = CollectJob(config, out, workers=1)
        entries = job.run(job.prepare())
        seconds = time.perf_counter() - t0
    frames = sum(e["frames"] for e in entries)
    nbytes = sum(e["bytes"] for e in entries)
    return {"episodes": len(entries), "frames": frames, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 1), "bytes_per_frame": round(nbytes / frames, 1),
            "routes": list(config.routes), "image": [height, width, 3], "codec": config.codec.to_dict(),
            "noise": config.noise.enabled}


def _read(args: Args, out: Path) -> dict:
    from training.episode_file import DatasetIndex

    index = DatasetIndex(out)
    rng = np.random.default_rng(args.seed)
    order = rng.integers(0, len(index), args.reads)
    with one_core():
        index.image(int(order[0]))  # warm-up: decoder initialisation
        t0 = time.perf_counter()
        for i in order:
            index.image(int(i))
        seconds = time.perf_counter() - t0
    index.close()
    return {"frames": int(args.reads), "seconds": round(seconds, 3), "frames_per_s": round(args.reads / seconds, 1),
            "access": "uniform random global frame indices, one at a time, decoded to RGB"}


def _sim_only(args: Args) -> dict:
    """Frames per second of the simulator, renderer and expert alone (no recording), and raw frames."""
    from agent.expert import ExpertPolicy
    from sim.embedded import EmbeddedSimulator

    width, height = parse_resolution(args.res)
    sim = EmbeddedSimulator(camera=CameraConfig(width=width, height=height))
    obs = sim.reset("two-turn", "ClearNoon", args.seed)
    policy = ExpertPolicy(vehicle=sim.vehicle, dt_s=sim.dt_s)
    policy.reset(sim.route)
    images, n = [], max(args.codec_frames, 200)
    with one_core():
        t0 = time.perf_counter()
        for _ in range(n):
            control, _ = policy.act(obs)
            obs = sim.step(control)
            images.append(obs.image)
        seconds = time.perf_counter() - t0
    return {"frames_per_s": round(n / seconds, 1), "images": images[::max(1, n // max(args.codec_frames, 1))]}


def _codecs(images: list[np.ndarray]) -> dict:
    from training.episode_file import ImageCodec, decode_image

    cases = {"jpeg_q95": ImageCodec("jpeg", 95), "jpeg_q90": ImageCodec("jpeg", 90),
             "jpeg_q75": ImageCodec("jpeg", 75), "png_c1": ImageCodec("png", png_compression=1),
             "png_c3": ImageCodec("png", png_compression=3), "png_c6": ImageCodec("png", png_compression=6)}
    out = {}
    with one_core():
        for name, codec in cases.items():
            t0 = time.perf_counter()
            bufs = [codec.encode(im) for im in images]
            t1 = time.perf_counter()
            for b in bufs:
                decode_image(b)
            t2 = time.perf_counter()
            out[name] = {"encode_ms": round(1e3 * (t1 - t0) / len(images), 3),
                         "decode_ms": round(1e3 * (t2 - t1) / len(images), 3),
                         "bytes": round(float(np.mean([len(b) for b in bufs])), 1)}
        params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_OPTIMIZE, 1]
        t0 = time.perf_counter()
        bufs = [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), params)[1] for im in images]
        out["jpeg_q90_optimize"] = {"encode_ms": round(1e3 * (time.perf_counter() - t0) / len(images), 3),
                                    "bytes": round(float(np.mean([len(b) for b in bufs])), 1)}
    return out


def bench(args: Args) -> dict:
    with contextlib.ExitStack() as stack:
        if args.out:
            out = Path(args.out)
        else:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="caril-bench-"))) / "data"
        record = _record(args, out)
        read = _read(args, out)
    sim_only = _sim_only(args)
    result = {
        "record_frames_per_s": record["frames_per_s"],
        "read_frames_per_s": read["frames_per_s"],
        "bytes_per_frame": record["bytes_per_frame"],
        "targets": TARGETS,
        "meets_targets": {k: (record if k.startswith("record") else read)["frames_per_s"] >= v
                          for k, v in TARGETS.items()},
        "record": record,
        "read": read,
        "sim_render_expert_frames_per_s": sim_only["frames_per_s"],
        "protocol": "one process pinned to one CPU core, OpenCV single-threaded",
    }
    if args.codec_frames:
        result["codecs"] = _codecs(sim_only["images"][:args.codec_frames])
    return result
