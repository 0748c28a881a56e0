"""``caril bench serve``: synchronous ticks per second through the real ``carla`` client against ``caril serve``.

    caril bench serve --json runs/bench/serve.json

The typical script, timed: a ``vehicle.tesla.model3`` with an attached 448x448 RGB camera (fov 110), the
world synchronous at 0.05 s, and per tick ``apply_control`` (a speed-holding throttle that changes often,
so the control RPC is really sent), ``world.tick()`` and the camera image of that frame taken from the
listen queue (frame-matched). The server runs in its own process (``caril serve --port 0``), as a CARLA
server would. The baseline is the same loop on the embedded backend directly (``EmbeddedSimulator.step``
with the same camera, route and controls), in this process, timed before and after the served loop; the
faster of the two is the one compared (machine noise never flatters the ratio). Target: served at least half
of direct.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from scripts.args import arg
from sim.errors import CarilError, UsageError
from sim.types import CameraConfig, Control

DESCRIPTION = "Synchronous ticks/s of a 448x448-camera script through the real carla client vs the embedded backend."
TARGET_RATIO = 0.5
CRUISE_MPS = 8.0


@dataclass
class Args:
    json: str | None = arg(None, help="also write the JSON to this path")
    ticks: int = arg(600, help="timed ticks per case")
    warmup: int = arg(40, help="untimed ticks before timing")
    route: str = arg("straight", help="map/route driven (its straight keeps the car on the road)")
    size: int = arg(448, help="camera width and height, pixels")
    fov: float = arg(110.0, help="camera horizontal field of view, degrees")

    def __post_init__(self) -> None:
        if self.ticks < 1 or self.warmup < 0:
            raise UsageError("--ticks must be positive and --warmup not negative")
        CameraConfig(width=self.size, height=self.size, fov_deg=self.fov)


def throttle_for(speed_mps: float) -> float:
    """Bang-bang cruise control around :data:`CRUISE_MPS` (the control changes every few ticks)."""
    return 0.6 if speed_mps < CRUISE_MPS else 0.0


def _rate(ticks: int, seconds: float) -> dict:
    return {"ticks": ticks, "seconds": round(seconds, 4), "ticks_per_s": round(ticks / seconds, 2),
            "ms_per_tick": round(1000 * seconds / ticks, 4)}


def bench_direct(args: Args) -> dict:
    """The loop on :class:`EmbeddedSimulator` in this process."""
    from sim.embedded import EmbeddedSimulator

    sim = EmbeddedSimulator(camera=CameraConfig(width=args.size, height=args.size, fov_deg=args.fov))
    obs = sim.reset(args.route, "ClearNoon", 0)
    t0 = 0.0
    for k in range(args.warmup + args.ticks):
        if k == args.warmup:
            t0 = time.perf_counter()
        obs = sim.step(Control(0.0, throttle_for(obs.speed_mps), 0.0))
    assert obs.image.shape == (args.size, args.size, 3)
    return _rate(args.ticks, time.perf_counter() - t0)


def _start_server(route: str) -> tuple[subprocess.Popen, int]:
    """``caril serve --port 0`` in a child process; returns it and the port it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", "serve", "--port", "0", "--map", route],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r" on [^ ]+:(\d+) ", line)
    if not match:
        _stop_server(proc)
        raise CarilError(f"caril serve did not start: {line.strip() or 'no output'}")
    return proc, int(match.group(1))


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_served(args: Args, port: int) -> dict:
    """The loop through the real client against the server on ``port``."""
    from sim.carla_backend import import_carla

    carla = import_carla()
    client = carla.Client("127.0.0.1", port)
    client.set_timeout(10.0)
    world = client.get_world()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    library = world.get_blueprint_library()
    vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
    camera_bp = library.find("sensor.camera.rgb")
    for key, value in (("image_size_x", args.size), ("image_size_y", args.size), ("fov", args.fov)):
        camera_bp.set_attribute(key, str(value))
    camera = world.spawn_actor(camera_bp, carla.Transform(carla.Location(x=1.5, z=2.4)), attach_to=vehicle)
    images: queue.Queue[Any] = queue.Queue()
    camera.listen(images.put)
    try:
        return _served_loop(args, carla, world, vehicle, images)
    finally:
        camera.stop()
        camera.destroy()
        vehicle.destroy()
        settings.synchronous_mode, settings.fixed_delta_seconds = False, None
        world.apply_settings(settings)


def _served_loop(args: Args, carla: Any, world: Any, vehicle: Any, images: queue.Queue) -> dict:
    matched = 0
    t0 = 0.0
    for k in range(args.warmup + args.ticks):
        if k == args.warmup:
            t0 = time.perf_counter()
        v = vehicle.get_velocity()
        vehicle.apply_control(carla.VehicleControl(throttle=throttle_for((v.x ** 2 + v.y ** 2) ** 0.5)))
        frame = world.tick()
        image = images.get(timeout=10.0)
        while image.frame < frame:
            image = images.get(timeout=10.0)
        matched += image.frame == frame and len(image.raw_data) == args.size * args.size * 4
    seconds = time.perf_counter() - t0
    return {**_rate(args.ticks, seconds), "frames_matched": matched, "frames": args.warmup + args.ticks}


def bench(args: Args) -> dict:
    before = bench_direct(args)
    proc, port = _start_server(args.route)
    try:
        served = bench_served(args, port)
    finally:
        _stop_server(proc)
    after = bench_direct(args)
    direct = max(before, after, key=lambda r: r["ticks_per_s"])  # the baseline at its best: a fair ratio
    ratio = served["ticks_per_s"] / direct["ticks_per_s"]
    return {
        "protocol": "sync ticks at 0.05 s; per tick apply_control + world.tick + the frame-matched camera image; "
                    "server in a child process; direct = EmbeddedSimulator.step in this process, the faster of "
                    "a run before and one after the served loop",
        "camera": [args.size, args.size, args.fov],
        "ticks_per_s_served": served["ticks_per_s"],
        "ticks_per_s_direct": direct["ticks_per_s"],
        "ratio_served_to_direct": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
        "served": served,
        "direct": direct,
        "direct_runs_ticks_per_s": [before["ticks_per_s"], after["ticks_per_s"]],
    }
