"""Closed-loop evaluation campaign.

    caril evaluate --policy expert --routes paper --weathers ClearNoon,WetNoon --trials 1 --out runs/eval
    caril evaluate --policy caril --checkpoint RUN --corrections regression,caril,clamp --routes paper \
        --trials 10 --workers 2 --out runs/eval

Every (route, weather, correction, trial) is one episode. Writes ``OUT/results.csv`` (one row per episode),
``OUT/trajectories/``, ``OUT/references/`` (the expert on the same route, weather and seed),
``OUT/decisions/`` (the agent's per-tick decisions) and ``OUT/config.json`` (the resolved arguments).
``--resume`` continues an interrupted campaign in the same folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from agent.correction import CORRECTION_REVISION, STRATEGIES
from agent.factory import NEEDS_CHECKPOINT, POLICIES, resolve_checkpoint
from scripts.args import arg, env_default
from sim.backends import BACKENDS
from sim.carla_routes import carla_route_names
from sim.embedded import SIM_REVISION
from sim.errors import UsageError, unknown_name
from sim.routes import parse_routes
from sim.types import CameraConfig, check_spawn_noise, parse_resolution
from sim.weather import parse_weathers
from training.episode_file import write_json_atomic
from training.evaluation import Campaign, PolicyFactory, SimFactory, plan_episodes, read_results
from training.generalization import trained_conditions
from training.report import write_report

log = logging.getLogger(__name__)

DESCRIPTION = "Run a closed-loop evaluation campaign and write results.csv and trajectories."


@dataclass
class Args:
    out: str = arg(help="output folder")
    policy: str = arg("expert", help="policy to drive", choices=POLICIES)
    checkpoint: str = arg("", help="checkpoint folder (a caril train run) for --policy caril")
    corrections: str = arg("caril", help="comma-separated correction strategies compared (--policy caril)")
    cuda_graphs: bool = arg(False, help="on a GPU, replay the agent's preprocessing and network as one CUDA graph")
    routes: str = arg("paper", help="comma-separated routes or suites (paper, named) or random:<seed>")
    weathers: str = arg("ClearNoon", help="comma-separated weather presets, or 'all'")
    trials: int = arg(1, help="episodes per route and weather")
    seed: int = arg(0, help="base seed; trial k uses seed+k")
    backend: str = arg("embedded", help="simulator backend", choices=BACKENDS)
    host: str = arg(env_default("CARLA_HOST", "127.0.0.1"), help="CARLA server host (--backend carla; env CARLA_HOST)")
    port: int = arg(env_default("CARLA_PORT", 2000), help="CARLA server RPC port (env CARLA_PORT)")
    tm_port: int = arg(env_default("CARLA_TM_PORT", 8000), help="CARLA Traffic Manager port (env CARLA_TM_PORT)")
    timeout: float = arg(10.0, help="CARLA client timeout, seconds")
    town: str = arg("Town04", help="CARLA map to load ('' keeps the loaded one)")
    res: str = arg("448x448", help="camera resolution WIDTHxHEIGHT")
    fov: float = arg(110.0, help="camera horizontal field of view, degrees")
    spawn_noise: float = arg(0.0, help="std of a lateral spawn offset drawn from each episode's seed, metres")
    camera: bool = arg(True, help="render the camera; --no-camera skips it (privileged expert only): faster")
    workers: int = arg(1, help="episodes run in parallel processes (embedded backend; one CARLA server serves one "
                               "client)")
    resume: bool = arg(False, help="continue an interrupted campaign in OUT")
    overwrite: bool = arg(False, help="replace the results a finished or interrupted campaign left in OUT")

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise UsageError(f"--trials must be at least 1, got {self.trials}")
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        if self.workers > 1 and self.backend != "embedded":
            raise UsageError("--workers > 1 needs --backend embedded: one CARLA server serves one client, and "
                             "parallel clients would destroy each other's actors")
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the results in OUT, --overwrite replaces them: choose one")
        if self.seed < 0:
            raise UsageError(f"--seed must not be negative, got {self.seed}")
        self._check_policy_options()
        self._check_spawn_noise()
        self.correction_names = [""]
        if self.policy == "caril":
            self.correction_names = unique(c.strip() for c in self.corrections.split(",") if c.strip())
            if not self.correction_names:
                raise UsageError(f"--corrections {self.corrections!r} names no correction; valid ones: "
                                 f"{', '.join(STRATEGIES)}")
            for name in self.correction_names:
                if name not in STRATEGIES:
                    raise unknown_name("correction", name, list(STRATEGIES))
            if not self.checkpoint:
                raise UsageError(NEEDS_CHECKPOINT)
            resolve_checkpoint(self.checkpoint)
        routes = carla_route_names(self.routes) if self.backend == "carla" else parse_routes(self.routes)
        self.route_names = unique(routes)  # a name given twice would count its episodes twice
        self.weather_names = unique(w.name for w in parse_weathers(self.weathers))
        width, height = parse_resolution(self.res)
        self.camera_config = CameraConfig(width=width, height=height, fov_deg=self.fov)
        if not self.camera and self.policy != "expert":
            raise UsageError("--no-camera only works with the privileged expert policy")


    def _check_policy_options(self) -> None:
        """The agent's options with another policy would be silently ignored: say so instead."""
        if self.policy == "caril":
            return
        given = [name for name, value, default in (("--checkpoint", self.checkpoint, ""),
                                                   ("--corrections", self.corrections, "caril"),
                                                   ("--cuda-graphs", self.cuda_graphs, False)) if value != default]
        if given:
            raise UsageError(f"{', '.join(given)} only apply to --policy caril (this run drives {self.policy})")

    def _check_spawn_noise(self) -> None:
        check_spawn_noise(self.spawn_noise, "--spawn-noise ")  # before anything is written
        if self.spawn_noise and self.backend != "embedded":
            raise UsageError("--spawn-noise is for the embedded backend (CARLA spawns at its spawn points)")


def unique(names: Iterable[str]) -> list[str]:
    """``names`` in order, each once."""
    return list(dict.fromkeys(names))


def simulator_settings(args: Args) -> dict:
    """Keyword settings of the chosen backend from the command line."""
    settings = {"camera": args.camera_config, "render_camera": args.camera}
    if args.spawn_noise:
        settings["spawn_noise_m"] = args.spawn_noise
    if args.backend == "carla":
        settings.update(host=args.host, port=args.port, tm_port=args.tm_port, timeout_s=args.timeout,
                        town=args.town or None)
    return settings


def campaign_for(args: Args, out: Path) -> Campaign:
    """The campaign of these arguments; references are driven with the camera off (the expert needs none)."""
    settings = simulator_settings(args)
    policies = PolicyFactory(str(resolve_checkpoint(args.checkpoint)) if args.policy == "caril" else None,
                             cuda_graphs=args.cuda_graphs)
    return Campaign(out, SimFactory(args.backend, settings), policies,
                    make_reference_sim=SimFactory(args.backend, {**settings, "render_camera": False}))


def result_settings(args: Args) -> dict:
    """The settings every episode's result depends on, whatever the plan: a resume must not mix results of
    different ones (routes, weathers, trials and corrections may grow). The checkpoint counts by content."""
    settings = {"policy": args.policy, "seed": args.seed, "spawn_noise": args.spawn_noise, "res": args.res,
                "fov": args.fov, "backend": args.backend, "camera": args.camera}
    if args.backend == "carla":
        settings["town"] = args.town
    else:
        settings["sim_revision"] = SIM_REVISION
    if args.policy == "caril":
        folder = resolve_checkpoint(args.checkpoint)
        digest = hashlib.sha256()
        for name in ("config.json", "model.safetensors"):
            digest.update((folder / name).read_bytes())
        settings["checkpoint_sha256"] = digest.hexdigest()
        settings["correction_revision"] = CORRECTION_REVISION
    return settings


def resume_mismatch(args: Args, trust_legacy: bool = True, settings: dict | None = None) -> str | None:
    """Why ``args.out`` cannot be resumed with ``args`` (None: it can, or it holds no results yet). Campaigns
    from before ``result_settings`` existed are compared on the settings their config.json has; their
    checkpoint's content was not recorded, so that is taken on trust (with a warning), or with
    ``trust_legacy=False`` counts as a mismatch. ``settings``: ``result_settings(args)`` if already computed
    (it reads the checkpoint's files)."""
    out = Path(args.out)
    if not read_results(out / "results.csv"):
        return None
    try:
        config = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    except ValueError:
        return "its config.json is unreadable"
    now = settings if settings is not None else result_settings(args)
    stored = config.get("result_settings")
    legacy = stored is None
    if legacy:
        if not trust_legacy:
            return "its results do not record the checkpoint they were made with"
        stored = {k: config[k] for k in now if k in config}
    for key in ("sim_revision", "correction_revision"):
        if key in now:
            stored.setdefault(key, 0)  # made before such revisions were counted
    if legacy:
        now = {k: v for k, v in now.items() if k in stored}
        if args.policy == "caril":
            log.warning("%s predates checkpoint fingerprints: resuming on trust that %s is unchanged", out,
                        args.checkpoint)
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            if key == "checkpoint_sha256":
                return "its results were made with a checkpoint of other weights or config (its SHA-256 differs)"
            return f"its results were made with another {key} ({stored.get(key)!r}, now {now.get(key)!r})"
    return None


def training_conditions_note(args: Args) -> str:
    """A line naming the evaluated routes and weathers the checkpoint was trained on ('' when none or unknown):
    results there are measured on training conditions, and the report's generalization section says so too."""
    trained = trained_conditions({"checkpoint": args.checkpoint}) if args.policy == "caril" else None
    if trained is None:
        return ""
    seen = [r for r in args.route_names if r in trained["routes"]] + [
        w for w in args.weather_names if w in trained["weathers"]]
    if not seen:
        return ""
    return (f"note: the checkpoint was trained on {', '.join(seen)}: results there are measured on training "
            "conditions (held-out maps: --routes heldout; held-out weathers: --weathers heldout)")


def run(args: Args) -> int:
    out = Path(args.out)
    settings = result_settings(args)  # once: it hashes the checkpoint's files
    if args.resume and (why := resume_mismatch(args, settings=settings)):
        raise UsageError(f"cannot resume {out}: {why}; evaluate into another --out, or replace its results with "
                         "--overwrite")
    if not (args.resume or args.overwrite) and read_results(out / "results.csv"):
        raise UsageError(f"{out} already holds evaluation results; continue them with --resume, replace them with "
                         "--overwrite, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    campaign = campaign_for(args, out)
    if not args.resume:
        campaign.clear()  # before the new settings are recorded: no old row may sit under them
    config = asdict(args) | {"route_names": args.route_names, "weather_names": args.weather_names,
                             "camera_config": args.camera_config.to_dict(), "result_settings": settings}
    write_json_atomic(out / "config.json", config)
    specs = plan_episodes(args.route_names, args.weather_names, args.trials, args.seed, args.policy,
                          args.correction_names)
    if note := training_conditions_note(args):
        print(note, flush=True)
    todo = campaign.pending(specs, args.resume)
    counts = {"goal": 0, "failed": 0}
    with tqdm(total=len(specs), initial=len(specs) - len(todo), desc="episodes", unit="ep") as bar:
        def on_episode(spec, row) -> None:
            counts["goal"] += row["termination"] == "goal"
            counts["failed"] += row["termination"].startswith("failed")
            bar.set_postfix(route=spec.route, last=row["termination"], **counts)
            bar.update()

        rows = campaign.run(specs, resume=args.resume, workers=args.workers, on_episode=on_episode)
    print(f"{len(rows)} episodes -> {campaign.results_path}")
    for row in rows:
        who = row["correction"] or row["policy"]
        print(f"  {row['route']:10s} {row['weather']:13s} {who:12s} t{row['trial']} {row['termination']:10s} "
              f"completion={row['route_completion']:.3f} lat_mean={row['lateral_offset_mean_m']:.3f} m "
              f"lat_max={row['lateral_offset_max_m']:.3f} m frechet={row['frechet_m']:.2f} m "
              f"collisions={row['collisions']}")
    reference = "regression" if "regression" in args.correction_names else (args.correction_names[0] or args.policy)
    write_report(out, reference_correction=reference, seed=args.seed)
    print(f"report -> {out / 'report.md'} (summary.json, plots/)")
    return 0
