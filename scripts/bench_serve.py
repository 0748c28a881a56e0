"""``caril bench serve``: synchronous ticks per second through the real ``carla`` client against ``caril serve``.

    caril bench serve --json runs/bench/serve.json

The typical script, timed: a ``vehicle.tesla.model3`` with an attached 448x448 RGB camera (fov 110), the
world synchronous at 0.05 s, and per tick ``apply_control`` (a speed-holding throttle that changes often,
so the control RPC is really sent), ``world.tick()`` and the camera image of that frame taken from the
listen queue (frame-matched). The server runs in its own process (``caril serve --port 0``), as a CARLA
server would. The baseline is the same loop on the embedded backend directly (``EmbeddedSimulator.step``
with the same camera, route and controls) in this process.

Paired rounds: a small shared machine changes speed by a factor of two within seconds, so a served run and
a direct run timed one after the other can land in different phases. Each round therefore times both on a
fresh episode over the same stretch of road, back to back (which goes first alternates), and the figures
are the medians over the rounds; every round's pair is in the JSON. Target: served at least half of direct.

Where a tick's time goes: each side also reports the CPU it used per timed tick, all threads together: the
direct loop's process, and on the served side the client process (the script and the client library's
threads) and the server process (read from ``/proc`` at 100 Hz, so about 10 ms per round; ``null`` where
there is no ``/proc``).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
    ticks: int = arg(200, help="timed ticks per case and round")
    rounds: int = arg(11, help="paired rounds (each times direct and served back to back; figures: medians)")
    warmup: int = arg(40, help="untimed ticks at the start of each case's episode")
    route: str = arg("straight", help="map/route driven (its straight keeps the car on the road)")
    size: int = arg(448, help="camera width and height, pixels")
    fov: float = arg(110.0, help="camera horizontal field of view, degrees")

    def __post_init__(self) -> None:
        if self.ticks < 1 or self.rounds < 1 or self.warmup < 0:
            raise UsageError("--ticks and --rounds must be positive and --warmup not negative")
        CameraConfig(width=self.size, height=self.size, fov_deg=self.fov)


def throttle_for(speed_mps: float) -> float:
    """Bang-bang cruise control around :data:`CRUISE_MPS` (the control changes every few ticks)."""
    return 0.6 if speed_mps < CRUISE_MPS else 0.0


def _rate(ticks: int, seconds: float) -> dict:
    return {"ticks": ticks, "seconds": round(seconds, 4), "ticks_per_s": round(ticks / seconds, 2),
            "ms_per_tick": round(1000 * seconds / ticks, 4)}


def cpu_s(pid: int | None = None) -> float | None:
    """CPU seconds (user + system, all threads) used so far by this process, or by process ``pid`` (from
    Linux's ``/proc``, in clock ticks; None where that cannot be read)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _per_tick_us(before: float | None, after: float | None, ticks: int) -> float | None:
    return None if before is None or after is None else round(1e6 * (after - before) / ticks, 1)


def bench_direct(args: Args) -> dict:
    """One episode of the loop on :class:`EmbeddedSimulator` in this process."""
    from sim.embedded import EmbeddedSimulator

    sim = EmbeddedSimulator(camera=CameraConfig(width=args.size, height=args.size, fov_deg=args.fov))
    obs = sim.reset(args.route, "ClearNoon", 0)
    t0 = c0 = 0.0
    for k in range(args.warmup + args.ticks):
        if k == args.warmup:
            t0, c0 = time.perf_counter(), cpu_s()
        obs = sim.step(Control(0.0, throttle_for(obs.speed_mps), 0.0))
    assert obs.image.shape == (args.size, args.size, 3)
    return {**_rate(args.ticks, time.perf_counter() - t0), "cpu_us_per_tick": _per_tick_us(c0, cpu_s(), args.ticks)}


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


@contextmanager
def served_world(port: int) -> Iterator[tuple[Any, Any]]:
    """The real client's ``(carla, world)`` on the server at ``port``, synchronous at 0.05 s while inside."""
    from sim.carla_backend import import_carla

    carla = import_carla()
    client = carla.Client("127.0.0.1", port)
    client.set_timeout(10.0)
    world = client.get_world()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    try:
        yield carla, world
    finally:
        settings.synchronous_mode, settings.fixed_delta_seconds = False, None
        world.apply_settings(settings)


def bench_served(args: Args, carla: Any, world: Any, server_pid: int | None = None) -> dict:
    """One episode of the loop through the real client: spawn the car and camera, drive, destroy them."""
    library = world.get_blueprint_library()
    vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
    camera_bp = library.find("sensor.camera.rgb")
    for key, value in (("image_size_x", args.size), ("image_size_y", args.size), ("fov", args.fov)):
        camera_bp.set_attribute(key, str(value))
    camera = world.spawn_actor(camera_bp, carla.Transform(carla.Location(x=1.5, z=2.4)), attach_to=vehicle)
    images: queue.Queue[Any] = queue.Queue()
    camera.listen(images.put)
    try:
        return _served_loop(args, carla, world, vehicle, images, server_pid)
    finally:
        camera.stop()
        camera.destroy()
        vehicle.destroy()


def _served_loop(args: Args, carla: Any, world: Any, vehicle: Any, images: queue.Queue,
                 server_pid: int | None) -> dict:
    matched = 0
    t0, c0, s0 = 0.0, None, None
    for k in range(args.warmup + args.ticks):
        if k == args.warmup:
            t0, c0, s0 = time.perf_counter(), cpu_s(), cpu_s(server_pid) if server_pid else None
        v = vehicle.get_velocity()
        vehicle.apply_control(carla.VehicleControl(throttle=throttle_for((v.x ** 2 + v.y ** 2) ** 0.5)))
        frame = world.tick()
        image = images.get(timeout=10.0)
        while image.frame < frame:
            image = images.get(timeout=10.0)
        matched += image.frame == frame and len(image.raw_data) == args.size * args.size * 4
    seconds = time.perf_counter() - t0
    cpu = {"client_cpu_us_per_tick": _per_tick_us(c0, cpu_s(), args.ticks),
           "server_cpu_us_per_tick": _per_tick_us(s0, cpu_s(server_pid) if server_pid else None, args.ticks)}
    return {**_rate(args.ticks, seconds), **cpu, "frames_matched": matched, "frames": args.warmup + args.ticks}


def paired_rounds(args: Args, carla: Any, world: Any, server_pid: int | None = None) -> list[dict]:
    """``args.rounds`` pairs of (direct, served) episodes timed back to back; odd rounds serve first."""
    rounds = []
    for r in range(args.rounds):
        if r % 2:
            served = bench_served(args, carla, world, server_pid)
            direct = bench_direct(args)
        else:
            direct = bench_direct(args)
            served = bench_served(args, carla, world, server_pid)
        rounds.append({"direct": direct, "served": served,
                       "ratio": round(served["ticks_per_s"] / direct["ticks_per_s"], 3)})
    return rounds


def _median(values: Iterator[float | None]) -> float | None:
    """The median, or None when any value is missing (no /proc)."""
    values = list(values)
    return None if any(v is None for v in values) else round(statistics.median(values), 1)


def bench(args: Args) -> dict:
    proc, port = _start_server(args.route)
    try:
        with served_world(port) as (carla, world):
            rounds = paired_rounds(args, carla, world, proc.pid)
    finally:
        _stop_server(proc)
    served = statistics.median(r["served"]["ticks_per_s"] for r in rounds)
    direct = statistics.median(r["direct"]["ticks_per_s"] for r in rounds)
    ratio = served / direct
    return {
        "protocol": f"{args.rounds} paired rounds; in each, one episode of {args.ticks} timed ticks (after "
                    f"{args.warmup}) on each side, back to back: sync ticks at 0.05 s, per tick apply_control + "
                    "world.tick + the frame-matched camera image, server in a child process; direct = "
                    "EmbeddedSimulator.step in this process. Figures: medians over the rounds",
        "camera": [args.size, args.size, args.fov],
        "ticks_per_s_served": round(served, 2),
        "ticks_per_s_direct": round(direct, 2),
        "ratio_served_to_direct": round(ratio, 3),
        "ratio_per_round": [r["ratio"] for r in rounds],
        "cpu_us_per_tick": {"direct": _median(r["direct"]["cpu_us_per_tick"] for r in rounds),
                            "served_client": _median(r["served"]["client_cpu_us_per_tick"] for r in rounds),
                            "served_server": _median(r["served"]["server_cpu_us_per_tick"] for r in rounds)},
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
        "frames_matched": sum(r["served"]["frames_matched"] for r in rounds),
        "frames": sum(r["served"]["frames"] for r in rounds),
        "rounds": rounds,
    }
