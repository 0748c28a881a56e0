"""End to end: the real carla==0.9.16 client against ``caril serve``.

The server runs in a thread of the test process (port 0: free ports); every client script runs in a
subprocess, so a protocol error (which can abort the client's process) fails a test instead of the runner.
Client scripts print JSON lines that the tests assert on.
"""

import csv
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest

from sim.carla_server import CarlaServer
from sim.carla_server.encoding import EpisodeSettings, ProtocolMismatch
from sim.embedded import EmbeddedSimulator
from sim.routes import get_route
from sim.types import CameraConfig, Control

ROOT = Path(__file__).resolve().parents[2]
PRELUDE = textwrap.dedent("""
    import hashlib, json, math, queue, sys
    import carla

    client = carla.Client("127.0.0.1", int(sys.argv[1]))
    client.set_timeout(10.0)
    world = client.get_world()

    def emit(**values):
        print(json.dumps(values), flush=True)

    def set_sync(world, on, dt=0.05):
        settings = world.get_settings()
        settings.synchronous_mode, settings.fixed_delta_seconds = on, (dt if on else None)
        return world.apply_settings(settings)
""")


@pytest.fixture()
def server():
    s = CarlaServer(host="127.0.0.1", port=0, streaming_port=0, map_name="one-turn")
    try:
        yield s
    finally:
        s.close()


def run_client(body: str, server: CarlaServer, *args: str, timeout_s: float = 60.0) -> list[dict]:
    """Run ``PRELUDE + body`` as a client process; its JSON lines, or a failure with its stderr (where
    ``-X faulthandler`` names the script line of a crash inside the client library)."""
    script = PRELUDE + textwrap.dedent(body)
    command = [sys.executable, "-X", "faulthandler", "-c", script, str(server.port), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    assert result.returncode == 0, f"client exited with {result.returncode}:\n{result.stderr[-4000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def merged(lines: list[dict]) -> dict:
    out: dict = {}
    for line in lines:
        out.update(line)
    return out


TYPICAL = """
controls = json.loads(sys.argv[2])
m = world.get_map()
emit(version=client.get_server_version(), map=m.name, spawn_points=len(m.get_spawn_points()))
set_sync(world, True)
settings = world.get_settings()
emit(settings=[settings.synchronous_mode, settings.fixed_delta_seconds])
library = world.get_blueprint_library()
vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
camera_bp = library.find("sensor.camera.rgb")
camera_bp.set_attribute("image_size_x", "64")
camera_bp.set_attribute("image_size_y", "48")
camera_bp.set_attribute("fov", "90")
camera = world.spawn_actor(camera_bp, carla.Transform(carla.Location(x=1.5, z=2.4)), attach_to=vehicle)
collision = world.spawn_actor(library.find("sensor.other.collision"), carla.Transform(), attach_to=vehicle)
images, hits = queue.Queue(), queue.Queue()
camera.listen(images.put)
collision.listen(hits.put)
for steer, throttle in controls:
    vehicle.apply_control(carla.VehicleControl(throttle=throttle, steer=steer))
    tick = world.tick()
    image = images.get(timeout=10.0)
    t, v, c = vehicle.get_transform(), vehicle.get_velocity(), vehicle.get_control()
    emit(tick=tick, frame=image.frame, size=[image.width, image.height, image.fov], nbytes=len(image.raw_data),
         sha=hashlib.sha256(bytes(image.raw_data)).hexdigest(), pose=[t.location.x, t.location.y, t.rotation.yaw],
         speed=math.hypot(v.x, v.y), control=[c.steer, c.throttle], snapshot=world.get_snapshot().frame)
emit(collisions=hits.qsize(), actors=sorted(a.type_id for a in world.get_actors()))
camera.stop()
collision.stop()
emit(destroyed=[camera.destroy(), collision.destroy(), vehicle.destroy()])
set_sync(world, False)
emit(sync_after=world.get_settings().synchronous_mode)
"""


def test_typical_script_gets_frame_matched_images_equal_to_the_embedded_renderer(server):
    controls = [(0.0, 0.6)] * 4 + [(0.1, 0.6)] * 3 + [(-0.1, 0.3)] * 3  # repeated controls are sent once
    lines = run_client(TYPICAL, server, json.dumps(controls))
    head = merged(lines[:2])
    assert head["version"] == "0.9.16" and head["map"] == "Carla/Maps/one-turn" and head["spawn_points"] > 2
    assert head["settings"] == [True, 0.05]
    ticks = [line for line in lines if "tick" in line]
    assert len(ticks) == len(controls)
    assert [t["tick"] for t in ticks] == list(range(ticks[0]["tick"], ticks[0]["tick"] + len(controls)))
    assert all(t["frame"] == t["tick"] == t["snapshot"] for t in ticks)
    assert all(t["size"] == [64, 48, 90.0] and t["nbytes"] == 64 * 48 * 4 for t in ticks)

    camera = CameraConfig(width=64, height=48, fov_deg=90.0, x_m=1.5, z_m=2.4)
    sim = EmbeddedSimulator(camera=camera)
    sim.reset("one-turn", "ClearNoon", 0)
    for tick, (steer, throttle) in zip(ticks, controls, strict=True):
        obs = sim.step(Control(steer, throttle, 0.0))
        bgra = cv2.cvtColor(obs.image, cv2.COLOR_RGB2BGRA)
        assert tick["sha"] == hashlib.sha256(bgra.tobytes()).hexdigest(), f"frame {tick['frame']} differs"
        assert tick["pose"] == pytest.approx([obs.pose.x_m, obs.pose.y_m, obs.pose.yaw_deg], abs=1e-4)
        assert tick["speed"] == pytest.approx(obs.speed_mps, abs=1e-4)
        assert tick["control"] == pytest.approx([steer, throttle])
    tail = merged(lines[len(controls) + 2:])
    assert tail["collisions"] == 0
    assert tail["actors"] == ["sensor.camera.rgb", "sensor.other.collision", "spectator", "vehicle.tesla.model3"]
    assert tail["destroyed"] == [True, True, True] and tail["sync_after"] is False


COLLISIONS = """
start, building_start = json.loads(sys.argv[2])
set_sync(world, True)
library = world.get_blueprint_library()
model3 = library.find("vehicle.tesla.model3")

def drive_into(spawn, throttle):
    ego = world.spawn_actor(model3, spawn)
    sensor = world.spawn_actor(library.find("sensor.other.collision"), carla.Transform(), attach_to=ego)
    hits = queue.Queue()
    sensor.listen(hits.put)
    ego.apply_control(carla.VehicleControl(throttle=throttle))
    moved = False
    for _ in range(200):  # on contact the car stops where it is: the state says so in the same tick
        frame = world.tick()
        v = ego.get_velocity()
        if moved and math.hypot(v.x, v.y) == 0.0:
            break
        moved = moved or math.hypot(v.x, v.y) > 0.0
    event = hits.get(timeout=10.0)  # sensor data arrives on its own stream, maybe after tick() returned
    info = dict(frame=event.frame, tick=frame, actor=event.actor.id, ego=ego.id, other=event.other_actor.type_id,
                other_id=event.other_actor.id, impulse=[event.normal_impulse.x, event.normal_impulse.y],
                speed=math.hypot(v.x, v.y))
    sensor.stop()
    sensor.destroy()
    ego.destroy()
    return info

x, y, yaw = start
ahead = carla.Transform(carla.Location(x=x + 20.0, y=y, z=0.3), carla.Rotation(yaw=yaw))
parked = world.spawn_actor(model3, ahead)
emit(parked=parked.id, blocked=world.try_spawn_actor(model3, ahead) is None)
emit(car=drive_into(carla.Transform(carla.Location(x=x, y=y, z=0.3), carla.Rotation(yaw=yaw)), 1.0))
parked.destroy()
bx, by, byaw = building_start
emit(building=drive_into(carla.Transform(carla.Location(x=bx, y=by, z=0.3), carla.Rotation(yaw=byaw)), 0.6))
set_sync(world, False)
"""


def _facing_a_building(route_name: str) -> tuple[float, float, float]:
    """A pose 25 m from the nearest building right of the route start, facing it."""
    from sim.embedded import scene_for

    centres = scene_for(route_name).box_footprints.mean(axis=1)
    right = centres[(centres[:, 1] > 0) & (centres[:, 0] > 20)]
    target = right[np.argmin(right[:, 0])]
    x, y = float(target[0]) - 25.0, 1.75
    return x, y, math.degrees(math.atan2(target[1] - y, target[0] - x))


def test_collision_events_for_a_parked_car_and_a_building(server):
    route = get_route("one-turn")
    x, y, heading = route.start_pose()
    lines = run_client(COLLISIONS, server, json.dumps([[x, y, math.degrees(heading)], _facing_a_building("one-turn")]))
    out = merged(lines)
    assert out["blocked"] is True  # spawning on top of the parked car fails
    car = out["car"]
    assert car["frame"] == car["tick"] and car["actor"] == car["ego"]
    assert car["other"] == "vehicle.tesla.model3" and car["other_id"] == out["parked"]
    assert car["impulse"][0] < 0 and car["speed"] == 0.0  # pushed back, stopped where it touched
    building = out["building"]
    assert building["other"] == "static.building" and building["speed"] == 0.0
    assert math.hypot(*building["impulse"]) > 0


WAYPOINTS = """
legs = json.loads(sys.argv[2])
m = world.get_map()
points = m.get_spawn_points()
wp = m.get_waypoint(points[0].location)
emit(start=[wp.road_id, wp.lane_id, wp.lane_width], goal=[points[1].location.x, points[1].location.y])
walked = [[wp.road_id, wp.lane_id]]
splits = []
while True:
    options = wp.next(2.0)
    if not options:
        break
    if len(options) > 1:
        splits.append(sorted([o.road_id, o.is_junction] for o in options))
    here = legs.index(walked[-1])
    chosen = [o for o in options if [o.road_id, o.lane_id] in legs[here:here + 2]]
    if not chosen:
        break
    wp = chosen[0]
    if [wp.road_id, wp.lane_id] != walked[-1]:
        walked.append([wp.road_id, wp.lane_id])
emit(walked=walked, splits=splits, topology=len(m.get_topology()))
try:
    client.load_world("Town04")
except RuntimeError as e:
    emit(town04=str(e))
world = client.load_world("two-turn")
emit(loaded=world.get_map().name, actors=[a.type_id for a in world.get_actors()])
"""


def test_get_waypoint_and_next_across_a_junction_of_the_served_map(server):
    route = get_route("one-turn")
    legs = [list(p) for p in dict.fromkeys(zip(route.road_id.tolist(), route.lane_id.tolist(), strict=True))]
    out = merged(run_client(WAYPOINTS, server, json.dumps(legs)))
    assert out["start"] == [0, -1, 3.5]
    assert out["goal"] == pytest.approx([route.x[-1], route.y[-1]], abs=1e-3)
    assert out["walked"] == legs  # road 0 -> the right-turn connecting road -> the outgoing road
    movements = sorted(c.connecting_road for c in route.network.junctions[0].connections if c.incoming_road == 0)
    assert out["splits"] == [[[r, True] for r in movements]]
    assert out["topology"] > 0
    assert out["town04"].startswith("Map 'Town04' not found: caril serve's maps are its routes: straight, one-turn")
    assert out["loaded"] == "Carla/Maps/two-turn" and out["actors"] == ["spectator"]


ASYNC = """
snapshots = queue.Queue()
callback = world.on_tick(snapshots.put)
vehicle = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"),
                            world.get_map().get_spawn_points()[0])
vehicle.apply_control(carla.VehicleControl(throttle=1.0))
first = world.wait_for_tick()
frames = [world.wait_for_tick().frame for _ in range(8)]
last = world.get_snapshot()
got = [snapshots.get(timeout=5.0).frame for _ in range(3)]
emit(sync=world.get_settings().synchronous_mode, frames=frames, elapsed=[first.timestamp.elapsed_seconds,
     last.timestamp.elapsed_seconds], span=[first.frame, last.frame], delta=last.timestamp.delta_seconds,
     x=vehicle.get_location().x, callbacks=got)
world.remove_on_tick(callback)  # a callback still registered when Python exits aborts the client
vehicle.destroy()
"""


def test_async_mode_runs_by_itself(server):
    out = merged(run_client(ASYNC, server))
    assert out["sync"] is False
    assert all(b > a for a, b in zip(out["frames"], out["frames"][1:], strict=False))
    assert out["delta"] == pytest.approx(0.05)
    frames = out["span"][1] - out["span"][0]
    assert out["elapsed"][1] - out["elapsed"][0] == pytest.approx(0.05 * frames)
    assert out["x"] > 0.0  # the sticky throttle drove it without a tick from the client
    assert len(out["callbacks"]) == 3


UNSUPPORTED = """
vehicle = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"),
                            world.get_map().get_spawn_points()[0])
world.wait_for_tick()  # asynchronous: the client knows an actor (and can destroy it) once a state lists it
errors = []
for call in (vehicle.get_physics_control, lambda: client.start_recorder("x.log")):
    try:
        call()
    except RuntimeError as e:
        errors.append(str(e))
emit(errors=errors, still_fine=world.get_settings().synchronous_mode, destroyed=vehicle.destroy())
"""


def test_an_unsupported_call_is_a_runtime_error_naming_it(server):
    out = merged(run_client(UNSUPPORTED, server))
    assert len(out["errors"]) == 2
    assert out["errors"][0].startswith("caril serve does not support the CARLA call 'get_physics_control'")
    assert "'start_recorder'" in out["errors"][1]
    assert out["still_fine"] is False and out["destroyed"] is True


BAD_NUMBERS = """
set_sync(world, True)
library = world.get_blueprint_library()
points = world.get_map().get_spawn_points()
vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), points[0])
vehicle.apply_control(carla.VehicleControl(throttle=float("nan")))  # fire-and-forget: refused, not applied
world.set_weather(carla.WeatherParameters(cloudiness=float("nan")))
world.tick()
errors = []
try:
    world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform(carla.Location(float("nan"), 0, 0)))
except RuntimeError as e:
    errors.append(str(e))
try:
    world.ground_projection(carla.Location(0, 0, 10))
except RuntimeError as e:
    errors.append(str(e))
second = world.spawn_actor(library.find("vehicle.tesla.model3"), points[1])  # spawning still works
batch = client.apply_batch_sync([carla.command.SetAutopilot(second.id, False)])
world.tick()
emit(throttle=vehicle.get_control().throttle, cloudiness=world.get_weather().cloudiness, errors=errors,
     light=str(vehicle.get_light_state()), traffic_light=str(vehicle.get_traffic_light_state()),
     batch_errors=[r.error for r in batch], x=vehicle.get_transform().location.x)
emit(destroyed=[second.destroy(), vehicle.destroy()])
set_sync(world, False)
"""


def test_bad_numbers_are_refused_and_other_answers_read_as_in_carla(server):
    out = merged(run_client(BAD_NUMBERS, server))
    # a NaN control or weather would have poisoned every later tick; a NaN spawn blocked all later spawns
    assert out["throttle"] == 0.0 and math.isfinite(out["cloudiness"]) and math.isfinite(out["x"])
    assert out["errors"][0].endswith("a transform's x is nan, not a finite number")
    assert "'project_point' (World.project_point or World.ground_projection)" in out["errors"][1]
    assert out["light"] == "NONE" and out["traffic_light"] == "Green"  # no lights: NONE, not std::bad_cast
    assert out["batch_errors"] == [""] and out["destroyed"] == [True, True]


def _rpc(port: int, name: str, *args) -> list:
    """One raw msgpack-rpc call, as a client of another CARLA version would make it; returns the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
        sock.sendall(msgpack.packb([0, 1, name, [[False], *args]]))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            unpacker.feed(sock.recv(65536))
            for message in unpacker:
                return message


def test_a_client_of_another_version_gets_a_clear_message(server):
    older_settings = EpisodeSettings(synchronous_mode=True).to_msg()[:10]  # a layout without spectator_as_ego
    _, msgid, error, result = _rpc(server.port, "set_episode_settings", older_settings)
    assert msgid == 1 and error is None
    assert result[0][0] == 0  # the Response error form: the client raises RuntimeError(message)
    assert "carla 0.9.16 protocol; install that client (pip install carla==0.9.16)" in result[0][1][0]
    assert server.world.settings.synchronous_mode is False  # nothing was applied
    with pytest.raises(ProtocolMismatch, match="no protocol table for carla client '0.9.15'"):
        CarlaServer(port=0, streaming_port=0, client_version="0.9.15")


def test_the_synchronous_mode_example_runs_unchanged(server):
    result = subprocess.run([sys.executable, "examples/carla_synchronous_mode.py", "--port", str(server.port),
                             "--frames", "30", "--res", "64x48"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "done: 30 frames, every camera image matched its tick" in result.stdout
    assert [a for a in server.world.actors.values() if a.type_id != "spectator"] == []


def test_caril_evaluate_with_the_carla_backend_completes_the_served_route_like_the_embedded_one(server, tmp_path):
    """This project's own CARLA backend, unchanged, through ``caril evaluate --backend carla``."""
    out = tmp_path / "eval"
    with socket.socket() as s:  # a free port for the (unused) Traffic Manager
        s.bind(("127.0.0.1", 0))
        tm_port = s.getsockname()[1]
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "scripts.cli", "evaluate", "--backend",
                             "carla", "--port", str(server.port), "--tm-port", str(tm_port), "--town", "one-turn",
                             "--routes", "0:1", "--policy", "expert", "--no-camera", "--out", str(out)],
                            capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    with (out / "results.csv").open() as f:
        served = next(csv.DictReader(f))
    from agent.expert import ExpertPolicy
    from sim.weather import get_weather
    from training.rollout import run_episode

    embedded, _ = run_episode(EmbeddedSimulator(render_camera=False), ExpertPolicy(), get_route("one-turn"),
                              get_weather("ClearNoon"), 0)
    assert served["termination"] == embedded["termination"] == "goal"
    assert float(served["route_completion"]) == embedded["route_completion"] == 1.0
    assert int(served["collisions"]) == embedded["collisions"] == 0
    assert int(served["lane_invasions"]) == embedded["lane_invasions"] == 0
    assert float(served["lateral_offset_mean_m"]) == pytest.approx(embedded["lateral_offset_mean_m"], abs=0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_caril_collect_and_drive_with_the_carla_backend_use_the_served_map(server, tmp_path):
    """collect records a start:end route of the served map; drive loads the map it is told (not Town04)."""
    common = ["--backend", "carla", "--port", str(server.port), "--tm-port", str(_free_port()), "--town", "one-turn"]
    data = tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "scripts.cli", "collect", *common, "--routes", "0:1", "--episodes", "1",
                        "--max-frames", "20", "--res", "64x64", "--out", str(data)],
                       capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    manifest = json.loads((data / "manifest.json").read_text())
    assert [(e["route"], e["frames"]) for e in manifest["episodes"]] == [("0:1", 20)]
    shot = tmp_path / "drive.png"
    r = subprocess.run([sys.executable, "-m", "scripts.cli", "drive", *common, "--route", "0:1", "--headless",
                        "--frames", "20", "--camera-res", "64x64", "--res", "320x240", "--screenshot", str(shot),
                        "--out", str(tmp_path / "drive")],
                       capture_output=True, text=True, timeout=180, cwd=ROOT, env={**os.environ,
                                                                                   "SDL_VIDEODRIVER": "dummy"})
    assert r.returncode == 0, r.stderr[-4000:]
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_caril_serve_stops_cleanly_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", "serve", "--port", "0", "--map", "straight"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        first = proc.stdout.readline()
        assert "caril serve: CARLA 0.9.16 protocol on 127.0.0.1:" in first and "map straight" in first
        port = int(first.split("127.0.0.1:")[1].split()[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5.0):
            pass
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "caril serve: stopped" in out


def test_caril_serve_on_a_busy_port_says_how_to_fix_it(capsys):
    from scripts.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    assert f"caril serve: error: port {port} or its stream port is in use" in capsys.readouterr().err


LANE_INVASION = """
set_sync(world, True)
library = world.get_blueprint_library()
vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
sensor = world.spawn_actor(library.find("sensor.other.lane_invasion"), carla.Transform(), attach_to=vehicle)
events = queue.Queue()
sensor.listen(events.put)
vehicle.apply_control(carla.VehicleControl(throttle=0.5))
for _ in range(40):
    world.tick()
straight = events.qsize()
vehicle.apply_control(carla.VehicleControl(throttle=0.3, steer=-0.02))
crossings = []
for _ in range(60):
    world.tick()
    while not events.empty():
        e = events.get()
        crossings.append([e.frame, vehicle.get_location().y, sorted({str(m.type) for m in e.crossed_lane_markings})])
emit(straight=straight, crossings=crossings)
sensor.stop()
sensor.destroy()
vehicle.destroy()
set_sync(world, False)
"""


def test_the_lane_invasion_sensor_sees_our_markings(server):
    out = merged(run_client(LANE_INVASION, server))
    assert out["straight"] == 0  # driving off from the route start along the lane crosses nothing
    assert out["crossings"], "drifting left never crossed the centre line"
    _, y, kinds = out["crossings"][0]
    assert kinds == ["Broken"] and 0.0 < y < 1.75  # the dashed centre line at y = 0, the lane centre at 1.75
