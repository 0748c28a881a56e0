"""Record expert demonstrations into a dataset (one HDF5 file per episode, see ``training/episode_file.py``).

    caril collect --routes random:100000-100095 --weathers train --schedule interleave --episodes 96 --workers 2 \
        --out data/train
    caril collect --backend carla --host localhost --town Town04 --routes 10:42,7:88 --episodes 30 --out data/town04
    caril collect --driver caril --checkpoint policies/caril_small --routes random:100200-100235 --episodes 36 \
        --out data/dagger

Training data comes only from generated maps with seeds >= 100000 and the training weathers
(``sim/split.py``): a held-out map or weather is refused unless ``--allow-heldout``.

Episodes cycle over routes x weathers; episode i's seed derives from --seed and i. By default steering
noise is injected (recovery data: the executed steering drifts, the stored label is the expert's clean
correction); --no-noise records the plain expert. ``OUT/config.json`` holds the resolved settings and
``OUT/manifest.json`` the finished episodes. A killed run keeps every finished episode; ``--resume``
records the missing ones (with the same settings; a larger --episodes extends the dataset). With
``--driver caril`` the agent of ``--checkpoint`` drives (noise on its steering when enabled) and the expert
labels each state it reaches (``training/dagger.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from agent.correction import STRATEGIES
from scripts.args import arg, env_default
from sim.backends import BACKENDS
from sim.carla_routes import carla_route_names
from sim.errors import UsageError
from sim.routes import parse_routes
from sim.types import DEFAULT_DT_S, CameraConfig, parse_resolution
from sim.weather import parse_weathers
from training.collect import SCHEDULES, CollectConfig, CollectJob, SimulatorFactory
from training.dagger import DRIVERS, DriverConfig
from training.episode_file import IMAGE_FORMATS, ImageCodec
from training.noise import NOISE_KINDS, NoiseConfig

DESCRIPTION = ("Record expert demonstrations (camera frames, expert and executed controls) into a dataset; "
               "with --driver caril the agent drives and the expert labels (DAgger).")


DEFAULT_TRAINING_ROUTES = "random:100000-100011"


@dataclass
class Args:
    out: str = arg(help="dataset folder")
    backend: str = arg("embedded", help="simulator backend", choices=BACKENDS)
    routes: str = arg("", help="comma-separated routes, suites or generated maps random:<seed> or "
                              "random:<first>-<last>; training data only on random maps with seed >= 100000 "
                              "(default: random:100000-100011; with --backend carla name start:end spawn pairs)")
    weathers: str = arg("ClearNoon", help="comma-separated weather presets, or 'all'")
    episodes: int = arg(10, help="number of episodes; they cycle over routes x weathers")
    seed: int = arg(0, help="job seed; episode i's seed derives from it and i")
    workers: int = arg(1, help="parallel recording processes (embedded backend)")
    host: str = arg(env_default("CARLA_HOST", "127.0.0.1"), help="CARLA server host (--backend carla; env CARLA_HOST)")
    port: int = arg(env_default("CARLA_PORT", 2000), help="CARLA server RPC port (env CARLA_PORT)")
    tm_port: int = arg(env_default("CARLA_TM_PORT", 8000), help="CARLA Traffic Manager port (env CARLA_TM_PORT)")
    timeout: float = arg(10.0, help="CARLA client timeout, seconds")
    town: str = arg("Town04", help="CARLA map to load ('' keeps the loaded one)")
    res: str = arg("448x448", help="camera resolution WIDTHxHEIGHT")
    fov: float = arg(110.0, help="camera horizontal field of view, degrees")
    dt: float = arg(DEFAULT_DT_S, help="simulation step, seconds (frames are recorded every step)")
    max_frames: int = arg(0, help="cut each episode after this many frames (0: drive the whole route)")
    image_format: str = arg("jpeg", help="how frames are stored", choices=IMAGE_FORMATS)
    jpeg_quality: int = arg(90, help="JPEG quality 1-100")
    png_compression: int = arg(1, help="PNG compression 0-9 (lossless; higher is smaller and slower)")
    noise: bool = arg(True, help="inject steering noise for recovery data (--no-noise: plain expert)")
    noise_kind: str = arg("triangle", help="noise shape: triangular impulses (CIL) or OU", choices=NOISE_KINDS)
    noise_fraction: float = arg(0.2, help="fraction of steps with noise active")
    noise_amplitude: float = arg(0.2, help="peak steering perturbation (triangle) or its std (ou), steer units")
    noise_min_s: float = arg(0.5, help="shortest noise event, seconds")
    noise_max_s: float = arg(1.5, help="longest noise event, seconds")
    driver: str = arg("expert", help="who drives while the expert labels every frame: the expert, or the CARIL "
                                     "agent of --checkpoint (DAgger data on its own states)", choices=DRIVERS)
    checkpoint: str = arg("", help="the agent that drives (--driver caril): a caril train run or policies/NAME")
    correction: str = arg("regression", help="the driving agent's correction strategy (--driver caril)",
                          choices=tuple(STRATEGIES))
    schedule: str = arg("grid", help="grid: every route in one weather, then the next weather; interleave: the "
                                     "weather changes every episode (many maps)", choices=SCHEDULES)
    allow_heldout: bool = arg(False, help="record on held-out maps (paper, named, random seeds < 100000) or "
                                          "weathers (sim/split.py) all the same: the data is then no training data "
                                          "for a held-out evaluation")
    resume: bool = arg(False, help="continue an interrupted recording in OUT")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        if self.workers > 1 and self.backend != "embedded":
            raise UsageError("--workers > 1 needs --backend embedded (one CARLA server serves one client)")
        if not self.routes and self.backend == "carla":
            raise UsageError("--backend carla needs --routes: start:end spawn-point pairs of the map, e.g. 10:42 "
                             "(the paper's routes are held out for evaluation)")
        self.routes = self.routes or DEFAULT_TRAINING_ROUTES
        width, height = parse_resolution(self.res)
        if self.dt <= 0:
            raise UsageError(f"--dt must be positive, got {self.dt}")
        noise = NoiseConfig(enabled=self.noise, kind=self.noise_kind, active_fraction=self.noise_fraction,
                            amplitude=self.noise_amplitude, min_duration_s=self.noise_min_s,
                            max_duration_s=self.noise_max_s)
        self.config = CollectConfig(
            routes=tuple(carla_route_names(self.routes) if self.backend == "carla" else parse_routes(self.routes)),
            weathers=tuple(w.name for w in parse_weathers(self.weathers)),
            episodes=self.episodes, seed=self.seed, backend=self.backend,
            camera=CameraConfig(width=width, height=height, fov_deg=self.fov), dt_s=self.dt,
            codec=ImageCodec(self.image_format, self.jpeg_quality, self.png_compression), noise=noise,
            max_frames=self.max_frames, town=(self.town or None) if self.backend == "carla" else None,
            driver=DriverConfig(self.driver, self.checkpoint, self.correction), schedule=self.schedule,
            allow_heldout=self.allow_heldout)
        self.make_sim = SimulatorFactory()
        if self.backend == "carla":
            self.make_sim = SimulatorFactory({"host": self.host, "port": self.port, "tm_port": self.tm_port,
                                              "timeout_s": self.timeout})


def run(args: Args) -> int:
    job = CollectJob(args.config, args.out, make_sim=args.make_sim, workers=args.workers)
    pending = job.prepare(resume=args.resume)
    total = args.config.episodes
    print(f"recording {len(pending)} of {total} episodes into {args.out} ({total - len(pending)} already there)")
    frames = 0
    t0 = time.perf_counter()
    with tqdm(total=total, initial=total - len(pending), desc="episodes", unit="ep") as bar:
        def on_frames(n: int) -> None:
            nonlocal frames
            frames += n
            bar.set_postfix(frames=frames, fps=f"{frames / max(time.perf_counter() - t0, 1e-9):.0f}")

        def on_episode(entry: dict[str, Any]) -> None:
            bar.update()

        entries = job.run(pending, on_frames=on_frames, on_episode=on_episode)
    elapsed = time.perf_counter() - t0
    manifest = job.manifest or {}
    recorded = sum(e["frames"] for e in entries)
    print(f"recorded {len(entries)} episodes, {recorded} frames in {elapsed:.1f} s "
          f"({recorded / max(elapsed, 1e-9):.0f} frames/s)")
    print(f"dataset {args.out}: {len(manifest.get('episodes', []))} episodes, {manifest.get('total_frames', 0)} "
          f"frames; inspect it with: caril data info {args.out}")
    return 0
