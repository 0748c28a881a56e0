"""The collection job: plan episodes, record them with the expert (and steering noise), resume after a crash.

::

    config = CollectConfig(routes=("random:100000", "random:100001"), weathers=("ClearNoon",), episodes=20, seed=0)
    job = CollectJob(config, "data/demo", workers=4)
    pending = job.prepare(resume=False)        # validates the folder, writes config.json and the manifest
    job.run(pending, on_frames=..., on_episode=...)   # callbacks for progress bars

Episode ``i`` drives route ``routes[i % R]`` under weather ``weathers[(i // R) % W]`` with seed
``episode_seed(seed, i)``, so the plan is a pure function of the config: a resumed job records exactly the
missing episodes, and two jobs with the same config record the same data.

Workers (``workers > 1``) are separate processes (``spawn``), each with its own simulator from
``make_sim``; they write episode files, and the parent alone rewrites the manifest. The simulator factory
is the only backend-specific part, so the same job records on CARLA once its backend exists.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.expert import ExpertConfig, ExpertPolicy
from agent.policy import Policy
from sim.backends import BACKENDS, make_simulator
from sim.dynamics import VehicleParams
from sim.episode import EpisodeLimits
from sim.errors import CarilError, UsageError
from sim.routes import get_route
from sim.simulator import Simulator
from sim.split import check_training_conditions
from sim.types import DEFAULT_DT_S, CameraConfig, check_step
from sim.weather import get_weather
from training.dagger import DriverConfig, ExpertLabelled, learner
from training.episode_file import (
    CONFIG,
    CORRUPT_SUFFIX,
    EPISODES_DIR,
    FORMAT_VERSION,
    PARTIAL_SUFFIX,
    DatasetError,
    EpisodeReader,
    ImageCodec,
    check_episode,
    default_features,
    entry_from_file,
    episode_index_of,
    new_manifest,
    software_version,
    write_json_atomic,
    write_manifest,
)
from training.noise import NoiseConfig, NoisyPolicy, SteeringNoise
from training.recorder import Recorder
from training.rollout import run_episode

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = ("episodes", "allow_heldout")  # config keys a resume may change (more episodes extend the plan)
SCHEDULES = ("grid", "interleave")  # how episodes pair routes with weathers (plan_episodes)
RUN_KEYS = ("workers", "software_version", "format_version")  # written to config.json, not part of the data


@dataclass(frozen=True)
class CollectConfig:
    """Everything that determines a recorded dataset. Times in seconds; ``max_frames`` 0 means no cap."""

    routes: tuple[str, ...] = ("random:100000", "random:100001", "random:100002")  # training maps (sim/split.py)
    weathers: tuple[str, ...] = ("ClearNoon",)
    episodes: int = 10
    seed: int = 0
    backend: str = "embedded"
    camera: CameraConfig = field(default_factory=CameraConfig)
    dt_s: float = DEFAULT_DT_S
    codec: ImageCodec = field(default_factory=ImageCodec)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    max_frames: int = 0
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    limits: EpisodeLimits = field(default_factory=EpisodeLimits)
    town: str | None = None  # CARLA map to load (None: the backend's default); unused by the embedded backend
    driver: DriverConfig = field(default_factory=DriverConfig)  # who drives while the expert labels
    schedule: str = "grid"  # grid: routes inner, weathers outer; interleave: the weather changes every episode
    allow_heldout: bool = False  # record on held-out maps or weathers (sim/split.py) all the same

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", tuple(self.routes))
        object.__setattr__(self, "weathers", tuple(self.weathers))
        if self.episodes < 1:
            raise UsageError(f"--episodes must be at least 1, got {self.episodes}")
        if self.seed < 0:
            raise UsageError(f"--seed must not be negative, got {self.seed}")
        if self.max_frames < 0:
            raise UsageError(f"--max-frames must be 0 (no cap) or positive, got {self.max_frames}")
        check_step(self.dt_s, "--dt ")  # before any file is written (the simulator would refuse it too)
        if not self.routes or not self.weathers:
            raise UsageError("name at least one route and one weather")
        if self.backend not in BACKENDS:
            raise UsageError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "carla":
            from sim.carla_routes import carla_route_names

            carla_route_names(",".join(self.routes))
        else:
            for name in self.routes:
                get_route(name)
        for name in self.weathers:
            get_weather(name)
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        check_training_conditions(self.routes, self.weathers, self.allow_heldout, self.backend)

    @property
    def fps(self) -> float:
        return 1.0 / self.dt_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples as lists). ``driver`` only when it is not the expert, so datasets
        recorded before drivers existed keep their config (and stay resumable); likewise ``schedule`` and
        ``allow_heldout`` at their defaults."""
        out = json.loads(json.dumps(asdict(self)))
        if self.driver.is_expert:
            del out["driver"]
        for key, default in (("schedule", "grid"), ("allow_heldout", False)):  # as datasets before them
            if out[key] == default:
                del out[key]
        return out

    def episode_limits(self) -> EpisodeLimits:
        """The termination limits, with the ``max_frames`` cap folded into the time limit."""
        if not self.max_frames:
            return self.limits
        # half a step of margin so that the cap holds exactly despite float rounding of frame * dt
        return FrameCappedLimits(**asdict(self.limits), max_time_s=(self.max_frames - 0.5) * self.dt_s)


@dataclass(frozen=True)
class FrameCappedLimits(EpisodeLimits):
    """:class:`EpisodeLimits` whose time limit is also at most ``max_time_s`` (cuts long routes short)."""

    max_time_s: float = math.inf

    def time_limit_s(self, route_length_m: float) -> float:
        return min(super().time_limit_s(route_length_m), self.max_time_s)


@dataclass(frozen=True)
class EpisodePlan:
    """One episode to record: its index (and file name), route, weather and seed."""

    index: int
    route: str
    weather: str
    seed: int


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode ``index`` of a job seeded ``seed``: independent streams, stable across versions."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def plan_episodes(config: CollectConfig) -> list[EpisodePlan]:
    """Every episode of the job, cycling over routes (inner). Schedule ``grid``: the weather changes after each
    pass over the routes (every route in every weather once ``episodes`` reaches routes x weathers);
    ``interleave``: it changes every episode, shifted by one per pass (many maps, each in another weather)."""
    n_routes, n_weathers = len(config.routes), len(config.weathers)

    def weather(i: int) -> str:
        k = i // n_routes if config.schedule == "grid" else i + i // n_routes
        return config.weathers[k % n_weathers]

    return [EpisodePlan(i, config.routes[i % n_routes], weather(i), episode_seed(config.seed, i))
            for i in range(config.episodes)]


@dataclass(frozen=True)
class SimulatorFactory:
    """Builds the simulator of a config: its backend, camera and time step, plus backend ``settings`` that do
    not change the data (CARLA's host, port, timeouts). Picklable, so worker processes can use it."""

    settings: dict = field(default_factory=dict)

    def __call__(self, config: CollectConfig) -> Simulator:
        if config.backend == "carla" and importlib.util.find_spec("sim.carla_backend") is None:
            raise CarilError("the CARLA backend is not available in this version yet; use --backend embedded")
        extra = {"town": config.town} if config.backend == "carla" and config.town is not None else {}
        return make_simulator(config.backend, camera=config.camera, dt_s=config.dt_s, **extra, **self.settings)


default_simulator = SimulatorFactory()


def episode_attrs(sim: Simulator, plan: EpisodePlan, config: CollectConfig, expert: ExpertPolicy) -> dict[str, Any]:
    """The metadata stored with an episode (the recorder adds codec, version, fps and creation time)."""
    weather = get_weather(plan.weather)
    return {"backend": sim.backend, "route": plan.route, "weather": weather.name,
            "weather_params": weather.to_dict(), "seed": plan.seed, "dt_s": sim.dt_s,
            "camera": sim.camera.to_dict(), "camera_K": sim.camera.intrinsics(), "expert": expert.config(),
            "noise": config.noise.to_dict(), "job_seed": config.seed, "max_frames": config.max_frames,
            "limits": config.episode_limits().to_dict(), "driver": config.driver.to_dict()}


def record_episode(sim: Simulator, plan: EpisodePlan, config: CollectConfig, recorder: Recorder) -> dict[str, Any]:
    """Drive and record one planned episode; its file is complete or absent afterwards. Returns its entry."""
    vehicle = getattr(sim, "vehicle", None)
    expert = ExpertPolicy(config.expert, vehicle=vehicle if isinstance(vehicle, VehicleParams) else None,
                          dt_s=sim.dt_s)
    noise = SteeringNoise(config.noise, sim.dt_s, plan.seed) if config.noise.enabled else None
    if config.driver.is_expert:
        policy: Policy = NoisyPolicy(expert, noise)
    else:  # DAgger: the agent drives (noise on its steering), the expert labels every state it reaches
        policy = ExpertLabelled(NoisyPolicy(learner(config.driver, plan.seed, sim.dt_s), noise), expert)
    recorder.start_episode(plan.index, episode_attrs(sim, plan, config, expert))
    try:
        # the route goes by name: each backend resolves it on its own map
        run_episode(sim, policy, plan.route, get_weather(plan.weather), plan.seed, config.episode_limits(),
                    consumers=(recorder,))
        meta = sim.metadata()
        return recorder.save_episode({"map": meta.get("map") or meta.get("town") or "", "simulator": meta})
    except BaseException:
        recorder.discard_episode()
        raise


def config_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: stored -> new`` for every data-changing key that differs (nested keys dotted)."""
    a, b = _flatten(stored), _flatten(new)
    keys = sorted((set(a) | set(b)) - set(RUN_KEYS) - set(RESUMABLE_CHANGES))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class CollectJob:
    """Records the planned episodes of ``config`` into ``root``; see the module docstring."""

    def __init__(self, config: CollectConfig, root: str | Path,
                 make_sim: Callable[[CollectConfig], Simulator] = default_simulator, workers: int = 1) -> None:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        if workers > 1 and config.backend != "embedded":
            raise UsageError("--workers > 1 needs --backend embedded (one CARLA server serves one client)")
        self.config, self.root, self.make_sim, self.workers = config, Path(root), make_sim, workers
        self.plans = plan_episodes(config)
        self.features = default_features(config.camera.height, config.camera.width)
        self.manifest: dict[str, Any] | None = None

    @property
    def episodes_dir(self) -> Path:
        return self.root / EPISODES_DIR

    def has_dataset(self) -> bool:
        """Whether ``root`` holds recorded data: episode files (finished, unfinished or set aside). A folder
        with only the config and an empty manifest (a run that failed before its first frame) does not."""
        return self.episodes_dir.is_dir() and any(self.episodes_dir.iterdir())

    # -- prepare ----------------------------------------------------------------------------------------------
    def prepare(self, resume: bool = False) -> list[EpisodePlan]:
        """Check the folder, write ``config.json`` and the manifest; returns the episodes still to record.

        Without ``resume`` the folder must not hold a dataset. With it, the stored config must equal this
        one in everything that changes the data; unfinished files are deleted, complete ones verified and
        kept (unreadable ones set aside as ``*.corrupt``), and the manifest rebuilt from the files.
        """
        if self.has_dataset():
            if not resume:
                raise UsageError(f"{self.root} already holds a dataset; continue it with --resume or choose "
                                 "another --out")
            kept = self._recover()
        else:
            kept = {}
        self.episodes_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / CONFIG, {**self.config.to_dict(), "workers": self.workers,
                                               "software_version": software_version(),
                                               "format_version": FORMAT_VERSION})
        self.manifest = new_manifest(self.features, self.config.fps, self.config.episodes)
        self.manifest["episodes"] = [kept[i] for i in sorted(kept)]
        write_manifest(self.root, self.manifest)
        return [p for p in self.plans if p.index not in kept]

    def _recover(self) -> dict[int, dict[str, Any]]:
        config_path = self.root / CONFIG
        if not config_path.exists():  # episodes without a config: not written by this job
            raise CarilError(f"{self.root} has episodes but no {CONFIG}: cannot tell how they were recorded; "
                             "choose another --out")
        try:
            stored = json.loads(config_path.read_text())
        except ValueError as e:
            raise CarilError(f"{config_path} is unreadable ({e}); choose another --out") from None
        differences = config_differences(stored, self.config.to_dict())
        if differences:
            raise UsageError(f"cannot resume {self.root}: its data was recorded with other settings ("
                             f"{'; '.join(differences)}); rerun with the stored settings or choose another --out")
        if self.config.episodes < stored.get("episodes", 0):
            raise UsageError(f"--episodes {self.config.episodes} is fewer than the {stored['episodes']} planned in "
                             f"{self.root}; resume with --episodes {stored['episodes']} or more")
        if stored.get("software_version") != software_version():
            log.warning("resuming a dataset recorded with caril %s using caril %s", stored.get("software_version"),
                        software_version())
        for path in self.episodes_dir.glob(f"*{PARTIAL_SUFFIX}"):
            log.info("deleting the unfinished episode %s", path.name)
            path.unlink()
        kept: dict[int, dict[str, Any]] = {}
        for path in sorted(self.episodes_dir.glob("episode_*.h5")):
            problems = self._verify(path)
            if problems:
                aside = path.with_name(path.name + CORRUPT_SUFFIX)
                log.warning("%s is unusable (%s): set aside as %s and recorded again", path.name, problems[0],
                            aside.name)
                path.replace(aside)
            else:
                kept[episode_index_of(path)] = entry_from_file(path)
        return kept

    def _verify(self, path: Path) -> list[str]:
        """Problems of a complete-looking episode file, including a mismatch with its planned episode."""
        index = episode_index_of(path)
        if index is None or index >= len(self.plans):
            return [f"episode index {index} is not in the plan of {len(self.plans)} episodes"]
        problems = check_episode(path, decode="sample", sample=2)
        if problems:
            return problems
        attrs = EpisodeReader(path).attrs
        plan = self.plans[index]
        found = (attrs.get("route"), attrs.get("weather"), attrs.get("seed"), attrs.get("episode_index"))
        if found != (plan.route, plan.weather, plan.seed, plan.index):
            return [f"holds {found}, the plan says {(plan.route, plan.weather, plan.seed, plan.index)}"]
        return []

    # -- run --------------------------------------------------------------------------------------------------
    def run(self, pending: list[EpisodePlan], on_frames: Callable[[int], None] | None = None,
            on_episode: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Record ``pending`` (from :meth:`prepare`); ``on_frames(n)`` reports recorded frames as they come,
        ``on_episode(entry)`` each finished episode. Returns the new manifest entries."""
        if self.manifest is None:
            raise RuntimeError("call prepare() before run()")
        recorder = Recorder(self.root, self.config.fps, self.features, self.config.codec, manifest=self.manifest,
                            progress=on_frames)
        done: list[dict[str, Any]] = []
        if not pending:  # nothing to do: no simulator (or CARLA connection) needed
            recorder.finalize()
            return done
        if self.workers == 1 or len(pending) == 1:
            with recorder, self.make_sim(self.config) as sim:
                for plan in pending:
                    done.append(record_episode(sim, plan, self.config, recorder))
                    if on_episode:
                        on_episode(done[-1])
            return done
        ctx = mp.get_context("spawn")
        frames = ctx.SimpleQueue()  # put() writes at once: a worker's last message is not lost if it dies
        recording: dict[int, int] = {}  # worker pid -> the episode index it is recording
        before = {p.pid for p in mp.active_children()}
        with ctx.Pool(min(self.workers, len(pending)), initializer=_init_worker,
                      initargs=(self.config, str(self.root), self.make_sim, frames)) as pool:
            workers = {p.pid for p in mp.active_children()} - before
            results = pool.imap_unordered(_record_in_worker, pending)
            while len(done) < len(pending):
                try:
                    entry = results.next(timeout=0.1)
                except mp.TimeoutError:
                    _drain(frames, on_frames, recording)
                    _check_workers(workers, recording, len(done))
                    continue
                _drain(frames, on_frames, recording)
                recording = {pid: i for pid, i in recording.items() if i != entry["index"]}
                recorder.add_entry(entry)
                done.append(entry)
                if on_episode:
                    on_episode(entry)
        recorder.finalize()
        return done


def _drain(frames: Any, on_frames: Callable[[int], None] | None, recording: dict[int, int]) -> None:
    """Pass the workers' frame counts on; note which episode each worker has started."""
    while not frames.empty():
        item = frames.get()
        if isinstance(item, tuple):  # (pid, episode index): a worker started an episode
            recording[item[0]] = item[1]
        elif on_frames:
            on_frames(item)


def _check_workers(workers: set[int], recording: dict[int, int], finished: int) -> None:
    """A pool worker that died (killed, out of memory) loses its task and the pool would wait for it
    forever, so that is an error here (the finished episodes are on disk and in the manifest). The pool
    replaces a dead worker, so a pid of the first ``workers`` missing means one died."""
    alive = {p.pid for p in mp.active_children()}
    for pid in sorted(workers - alive):
        which = f"episode {recording[pid]}" if pid in recording else "an episode"
        raise CarilError(f"the worker recording {which} died (killed, or out of memory?); the {finished} "
                         "episodes finished are kept: rerun with --resume to record the rest")


_WORKER: dict[str, Any] = {}  # per worker process: its config, recorder and simulator


def _init_worker(config: CollectConfig, root: str, make_sim: Callable[[CollectConfig], Simulator],
                 frames: Any) -> None:
    import cv2

    cv2.setNumThreads(1)  # K workers on K cores: OpenCV's own threads would oversubscribe them
    if not config.driver.is_expert:
        import torch

        torch.set_num_threads(1)  # the same for the driving agent's network
    features = default_features(config.camera.height, config.camera.width)
    _WORKER.update(config=config, make_sim=make_sim, sim=None, frames=frames,
                   recorder=Recorder(root, config.fps, features, config.codec, progress=frames.put))


def _record_in_worker(plan: EpisodePlan) -> dict[str, Any]:
    _WORKER["frames"].put((os.getpid(), plan.index))  # lets the parent notice if this process dies
    if _WORKER["sim"] is None:
        _WORKER["sim"] = _WORKER["make_sim"](_WORKER["config"])
    return record_episode(_WORKER["sim"], plan, _WORKER["config"], _WORKER["recorder"])


def read_config(root: str | Path) -> dict[str, Any]:
    """The stored ``config.json`` of a dataset (an empty dict if there is none)."""
    path = Path(root) / CONFIG
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DatasetError(f"{path} is unreadable: {e}") from None

