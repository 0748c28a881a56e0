"""The CARLA backend: the real client against a closed port, and its logic against the in-memory stand-in."""

from __future__ import annotations

import json
import math
import os
import pwd
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import carla
import numpy as np
import pytest

from agent.expert import ExpertPolicy
from sim.carla_backend import (
    CarlaConfig,
    CarlaConnectionError,
    CarlaServerBusy,
    CarlaSimulator,
    CarlaVersionMismatch,
    SensorTimeout,
    SimulatorConnectionLost,
    import_carla,
    lane_frame_on_route,
    make_carla_env,
    reconnect_with_backoff,
)
from sim.embedded import EmbeddedSimulator
from sim.episode import EpisodeMonitor
from sim.errors import DependencyNotInstalled, UsageError
from sim.routes import Route, get_route
from sim.types import CameraConfig, Control, RoadOption
from tests.sim.carla_standin import StandinServer

REPO = Path(__file__).resolve().parents[2]
SMALL = CameraConfig(width=32, height=24, fov_deg=90.0)


def connect(server: StandinServer, **settings) -> CarlaSimulator:
    options = {"town": None, "warmup_s": 0.1, "sensor_timeout_s": 2.0, "busy_probe_s": 0.01, **settings}
    return CarlaSimulator(camera=settings.pop("camera", SMALL), carla_module=server.module(), **options)


def frame_in(image: np.ndarray) -> int:
    """The server frame the stand-in encoded in an image (B = frame % 256, G = frame // 256)."""
    r, g, b = image[1, 1].tolist()
    assert r == 7
    return g * 256 + b


def restored(server: StandinServer) -> bool:
    s = server.settings
    return not s.synchronous_mode and s.fixed_delta_seconds is None and not any(server.tm_sync.values())


def ours(server: StandinServer) -> list:
    return [a for a in server.actors.values() if a.role_name.startswith("caril_ego")]


def events(server: StandinServer, kind: str) -> list[list]:
    return [e for e in server.events if e[0] == kind]


def town04_server(**kwargs) -> StandinServer:
    """A stand-in named Town04 whose spawn points 81, 270, 209, 18, 224, 190 lie on its roads."""
    layout = {81: (5, 0, 0), 270: (220, 0, 0), 209: (5, 0, 0), 18: (120, 110, 90), 224: (5, 3.5, 0),
              190: (220, 0, 0)}
    points = [carla.Transform(carla.Location(x=60.0, y=0.0, z=0.3)) for _ in range(300)]
    for index, (x, y, yaw) in layout.items():
        points[index] = carla.Transform(carla.Location(x=x, y=y, z=0.3), carla.Rotation(yaw=yaw))
    return StandinServer(map_name="Carla/Maps/Town04", spawn_points=points, **kwargs)


# -- the real client -------------------------------------------------------------------------------------
def test_closed_port_fails_fast_with_how_to_start_a_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(CarlaConnectionError, match=rf"no CARLA server answered at 127\.0\.0\.1:{port} within 1 s") \
            as info:
        CarlaSimulator(host="127.0.0.1", port=port, timeout_s=1.0)
    assert time.monotonic() - t0 < 1.0 + 1.0
    assert "docker compose -f docker/compose.yaml up -d carla" in str(info.value)
    assert "docker/README.md" in str(info.value)


def test_missing_carla_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "carla", None)
    with pytest.raises(DependencyNotInstalled, match=r"pip install -e '\.\[carla\]'"):
        import_carla()
    with pytest.raises(DependencyNotInstalled, match=r"carla==0\.9\.16"):
        CarlaSimulator()


def test_import_carla_survives_an_unset_home():
    """The real 0.9.16 client segfaults on import without HOME (as under ``env -i``); import_carla sets it."""
    code = ("import os; from sim.carla_backend import import_carla; carla = import_carla(); "
            "carla.Client('127.0.0.1', 1); print(os.environ['HOME'])")
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == pwd.getpwuid(os.getuid()).pw_dir


# -- configuration ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "message"), [
    ({"dt_s": 0.2}, r"dt_s=0.2 s is outside 0.001..0.1 s"),
    ({"dt_s": 0.1, "max_substeps": 5}, r"exceeds the physics substepping limit .* = 0.05 s; lower dt_s or raise "
                                       r"max_substeps to 10"),
    ({"tm_port": 2001}, "--tm-port 2001 clashes with the server's ports 2000-2002"),
    ({"timeout_s": 0}, "timeout_s=0 must be a positive number of seconds"),
    ({"max_substeps": 20}, "max_substeps=20 must be 1..16"),
])
def test_config_is_validated_with_fixes(settings, message):
    with pytest.raises(UsageError, match=message):
        CarlaConfig(**settings)


def test_defaults_are_the_papers_setup():
    cfg = CarlaConfig()
    assert (cfg.host, cfg.port, cfg.tm_port, cfg.dt_s, cfg.town, cfg.vehicle) == (
        "127.0.0.1", 2000, 8000, 0.05, "Town04", "vehicle.tesla.model3")
    assert cfg.max_substep_delta_time_s * cfg.max_substeps >= cfg.dt_s
    assert cfg.warmup_ticks == 30


def test_unknown_setting_is_rejected():
    with pytest.raises(UsageError, match=r"unknown CARLA setting in \['colour'\]; valid: host, port"):
        CarlaSimulator(carla_module=StandinServer().module(), colour="red")


# -- connecting -------------------------------------------------------------------------------------------
def test_connect_turns_on_synchronous_mode_and_close_restores_everything():
    server = StandinServer()
    sim = connect(server, dt_s=0.04, max_substeps=5, autopilot=True)
    s = server.settings
    assert (s.synchronous_mode, s.fixed_delta_seconds, s.substepping, s.max_substeps) == (True, 0.04, True, 5)
    assert server.tm_sync == {8000: True}
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM now unwinds and tears down
    sim.close()
    sim.close()  # idempotent
    assert restored(server)
    assert server.ticks_while_async == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_unreachable_stand_in_address_gives_the_connection_error():
    with pytest.raises(CarlaConnectionError, match=r"127\.0\.0\.1:2005 within 5 s \(time-out of 5000ms"):
        connect(StandinServer(), port=2005, timeout_s=5.0)


def test_version_mismatch_is_refused_before_anything_changes():
    server = StandinServer(version="0.9.15")
    with pytest.raises(CarlaVersionMismatch, match=r"client package is 0\.9\.16 but the server .* is 0\.9\.15; "
                                                   r"install the matching client \(pip install carla==0\.9\.15\)"):
        connect(server)
    assert not server.settings.synchronous_mode and server.ticks == 0
    connect(server, allow_version_mismatch=True).close()


def test_server_already_ticked_by_another_client_is_refused():
    server = StandinServer()
    server.settings.synchronous_mode, server.settings.fixed_delta_seconds = True, 0.1
    with pytest.raises(CarlaServerBusy, match="already in synchronous mode: another client ticks it"):
        connect(server)
    assert server.settings.synchronous_mode and server.settings.fixed_delta_seconds == 0.1  # untouched
    assert server.ticks == 0 and server.tm_sync == {}
    sim = connect(server, take_over_sync=True)
    sim.close()
    assert restored(server)  # taken over: left asynchronous, not frozen


def test_a_server_another_live_client_ticks_is_left_alone():
    """Actors of our role name on a synchronous server are not a dead client's when its frame moves: a second
    client must not destroy the first one's car and take the server over."""
    server = StandinServer()
    other = server.add_actor("vehicle.tesla.model3", server.map.get_spawn_points()[0], "caril_ego")
    server.settings.synchronous_mode, server.settings.fixed_delta_seconds = True, 0.05
    server.ticked_elsewhere = True
    with pytest.raises(CarlaServerBusy, match="another client is ticking the synchronous CARLA server"):
        connect(server, take_over_sync=True)
    assert list(server.actors) == [other.id] and server.settings.synchronous_mode


def test_traffic_manager_port_in_use_says_which_flag_to_change():
    server = StandinServer()
    server.ports_held_elsewhere = {8000}
    with pytest.raises(CarlaConnectionError, match=r"could not open port 8000 .* pass another --tm-port"):
        connect(server, autopilot=True)
    assert restored(server)


def test_without_autopilot_no_traffic_manager_is_created():
    """An idle synchronous Traffic Manager can deadlock world.tick() in 0.9.16 (a lost wake-up in
    TrafficManagerLocal::SynchronousTick), so only the autopilot gets one."""
    server = StandinServer()
    server.ports_held_elsewhere = {8000}
    with connect(server) as sim:
        sim.reset("0:2", seed=5)
        sim.step(Control(throttle=0.5))
    assert server.traffic_managers == {} and server.tm_sync == {}


def test_leftovers_of_a_dead_client_are_removed_and_the_frozen_server_taken_over():
    server = StandinServer()
    spawn = server.map.get_spawn_points()
    dead_ego = server.add_actor("vehicle.tesla.model3", spawn[0], "caril_ego")
    server.add_actor("sensor.camera.rgb", carla.Transform(), "caril_ego/camera", parent=dead_ego)
    server.add_actor("sensor.other.collision", carla.Transform(), "front", parent=dead_ego)
    hero = server.add_actor("vehicle.audi.tt", spawn[2], "hero")
    server.settings.synchronous_mode, server.settings.fixed_delta_seconds = True, 0.05  # left frozen
    sim = connect(server)
    assert sim.leftovers_removed == 3
    assert list(server.actors) == [hero.id]
    obs = sim.reset("0:5")  # spawn point 0 is free again
    assert (obs.pose.x_m, obs.pose.y_m) == pytest.approx((5.0, 0.0))
    sim.close()
    assert restored(server) and list(server.actors) == [hero.id]


def test_occupied_start_spawns_elsewhere_then_teleports_to_the_route():
    server = StandinServer()
    server.add_actor("vehicle.audi.tt", server.map.get_spawn_points()[0], "hero")
    with connect(server) as sim:
        obs = sim.reset("0:5")
        assert server.spawn_attempts[0] == (5.0, 0.0, False)
        assert server.spawn_attempts[1][2] is True and len(server.spawn_attempts) == 2
        assert (obs.pose.x_m, obs.pose.y_m, obs.pose.yaw_deg) == pytest.approx((5.0, 0.0, 0.0))


def test_our_actors_are_tagged_with_role_names():
    server = StandinServer()
    with connect(server, role_name="caril_test") as sim:
        sim.reset("0:5")
        roles = sorted(a.role_name for a in server.actors.values())
        assert roles == ["caril_test", "caril_test/camera", "caril_test/collision", "caril_test/lane_invasion"]
        assert server.actors[min(server.actors)].type_id == "vehicle.tesla.model3"
        camera = next(a for a in server.actors.values() if a.type_id == "sensor.camera.rgb")
        assert (camera.attributes["image_size_x"], camera.attributes["image_size_y"]) == ("32", "24")
        assert camera.attributes["sensor_tick"] == "0.0"


def test_town_is_loaded_when_the_server_runs_another_map():
    server = StandinServer(map_name="Carla/Maps/Town10HD_Opt")
    connect(server, town="Town04").close()
    assert events(server, "load_world") == [["load_world", "Town04"]]
    connect(server, town="Town04").close()  # already there: not loaded again
    assert len(events(server, "load_world")) == 1


# -- episodes ---------------------------------------------------------------------------------------------
def test_observations_are_frame_matched_to_their_tick():
    server = StandinServer()
    with connect(server, warmup_s=0.2) as sim:
        obs = sim.reset("0:2", "ClearNoon", seed=5)
        assert obs.frame == 0 and obs.sim_time_s == 0.0
        assert frame_in(obs.image) == sim.server_frame == 4004  # 4 warm-up ticks from frame 4000
        assert obs.image.shape == (24, 32, 3) and obs.image[0, 0, 0] == 200  # red pixel top left: RGB, upright
        for k in range(1, 6):
            obs = sim.step(Control(throttle=0.5))
            assert obs.frame == k and obs.sim_time_s == pytest.approx(k * 0.05)
            assert frame_in(obs.image) == sim.server_frame == 4004 + k
        assert obs.speed_mps > 0 and obs.control == Control(throttle=0.5)
    assert server.dispatcher.threads and threading.get_ident() not in server.dispatcher.threads


def test_late_camera_frames_are_waited_for():
    server = StandinServer()
    server.camera_delay_s = 0.03  # data arrives after tick() has returned
    with connect(server) as sim:
        sim.reset("0:2")
        for _ in range(3):
            obs = sim.step(Control(throttle=0.3))
            assert frame_in(obs.image) == sim.server_frame
    assert server.late_deliveries >= 4


def test_stale_camera_frames_are_dropped():
    server = StandinServer()
    server.stale_camera = True  # each tick first re-delivers the previous frame's image
    with connect(server) as sim:
        sim.reset("0:2")
        for _ in range(3):
            obs = sim.step(Control())
            assert frame_in(obs.image) == sim.server_frame
        assert sim.dropped_frames["camera"] >= 3


def test_a_dropped_camera_frame_times_out_and_fails_the_episode():
    server = StandinServer()
    with connect(server, sensor_timeout_s=0.2) as sim:
        sim.reset("0:2")
        server.drop_camera_frames = {server.frame + 1}
        with pytest.raises(SensorTimeout, match=rf"no camera data for frame {server.frame + 1} within 0.2 s") as info:
            sim.step(Control())
        assert info.value.reason == "sensor_timeout"
        with pytest.raises(SimulatorConnectionLost, match="create a new simulator"):
            sim.step(Control())
    assert restored(server) and ours(server) == []  # the server itself is fine: restored


def test_tick_timeout_becomes_connection_lost():
    server = StandinServer()
    with connect(server, tick_timeout_s=2.0) as sim:
        sim.reset("0:2")
        server.hang_ticks = True
        with pytest.raises(SimulatorConnectionLost, match=r"during tick \(time-out of 2000ms") as info:
            sim.step(Control())
        assert info.value.reason == "tick_timeout"
        assert "restart the server" in str(info.value)
    assert restored(server) and ours(server) == []


def test_server_dying_mid_episode_fails_it_and_close_does_not_hang():
    server = StandinServer()
    sim = connect(server)
    sim.reset("0:2")
    sim.step(Control(throttle=0.5))
    server.kill()
    with pytest.raises(SimulatorConnectionLost, match=r"stopped answering during step .* it crashed or hangs") \
            as info:
        sim.step(Control(throttle=0.5))
    assert info.value.reason == "server_timeout"
    with pytest.raises(SimulatorConnectionLost):
        sim.reset("0:2")
    sim.close()  # one attempt at restoring, then nothing more is sent to the dead server
    after = server.events[server.events.index(["killed"]) + 1:]
    assert [e[0] for e in after] == ["stop", "stop", "stop"]  # no Traffic Manager without the autopilot


def test_reconnect_after_a_crash_cleans_up_and_goes_on():
    server = StandinServer()
    sim = connect(server)
    sim.reset("0:2")
    server.kill()
    with pytest.raises(SimulatorConnectionLost):
        sim.step(Control())
    sim.close()
    attempts = []

    def factory() -> CarlaSimulator:
        attempts.append(1)
        if len(attempts) == 2:
            server.dead = False  # the supervisor restarted the server (still frozen, with our old actors)
        return connect(server)

    delays = []
    new = reconnect_with_backoff(factory, attempts=4, base_delay_s=0.5, sleep=delays.append)
    assert len(attempts) == 2 and delays == [0.5]
    assert new.leftovers_removed == 4
    assert new.reset("0:2").frame == 0
    new.close()
    assert restored(server) and ours(server) == []


def test_reconnect_with_backoff_doubles_the_delay_and_gives_up():
    delays = []

    def never():
        raise CarlaConnectionError("down")

    with pytest.raises(CarlaConnectionError, match="down"):
        reconnect_with_backoff(never, attempts=4, base_delay_s=1.0, max_delay_s=3.0, sleep=delays.append)
    assert delays == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="other"):  # not a connection problem: no retry
        reconnect_with_backoff(lambda: (_ for _ in ()).throw(ValueError("other")), sleep=delays.append)
    assert len(delays) == 3


def test_weather_and_seed_reach_the_server():
    server = StandinServer()
    with connect(server, autopilot=True) as sim:
        sim.reset("0:2", "WetNoon", seed=77)
        assert server.weather.wetness == pytest.approx(50.0)
        assert server.weather.precipitation_deposits == pytest.approx(50.0)
        assert server.traffic_managers[8000].seed == 77


def test_collision_and_lane_invasion_events_carry_episode_frames():
    server = StandinServer()
    with connect(server, render_camera=False) as sim:
        obs = sim.reset("3:2")
        assert obs.image.shape == (0, 0, 3)
        server.scheduled_collisions = {sim.server_frame + 3: "static.pole"}
        expert = ExpertPolicy()
        expert.reset(sim.route)
        seen, invasions = [], []
        for _ in range(400):
            obs = sim.step(expert.act(obs)[0])
            seen.extend(obs.collisions)
            invasions.extend(obs.lane_invasions)
        assert [(c.frame, c.other, round(c.impulse_ns)) for c in seen] == [(3, "static.pole", 500)]
        assert [m.markings for m in invasions] == [("Broken",)]  # the planned lane change crosses one marking


def test_expert_completes_a_turn_on_the_stand_in():
    server = StandinServer()
    with connect(server, render_camera=False) as sim:
        obs = sim.reset("0:1")
        expert, monitor = ExpertPolicy(), EpisodeMonitor(sim.route.length_m)
        expert.reset(sim.route)
        offsets, commands, reason = [], [], None
        while reason is None:
            obs = sim.step(expert.act(obs)[0])
            offsets.append(abs(obs.lane.lateral_offset_m))
            if not commands or commands[-1] != obs.command:
                commands.append(obs.command)
            reason = monitor.update(obs)
        assert reason == "goal"
        # the command comes from the route CARLA's waypoints gave: a right turn through the stand-in's junction
        assert commands == [RoadOption.LANEFOLLOW, RoadOption.RIGHT, RoadOption.LANEFOLLOW]
        assert max(offsets) < 0.5
        assert obs.lane.road_id == 2 and obs.pose.yaw_deg == pytest.approx(90.0, abs=5.0)


def test_autopilot_drives_and_its_control_is_reported():
    server = StandinServer()
    with connect(server, autopilot=True, render_camera=False) as sim:
        obs = sim.reset("0:2")
        vehicle = next(a for a in ours(server) if a.type_id.startswith("vehicle."))
        assert vehicle.autopilot_port == 8000
        for _ in range(20):
            obs = sim.step(Control(steer=-1.0, brake=1.0))  # ignored
        assert obs.speed_mps > 1.0 and abs(obs.pose.y_m) < 0.2
        applied = vehicle.applied_control
        assert obs.control == Control(applied.steer, applied.throttle, applied.brake)
        assert obs.control.brake == 0.0
    assert ["autopilot", vehicle.id, False, 8000] in server.events


def test_lane_frame_is_computed_exactly_as_the_embedded_simulator_does():
    sim = EmbeddedSimulator(render_camera=False)
    obs = sim.reset("one-turn", "ClearNoon", 0)
    expert = ExpertPolicy()
    expert.reset(sim.route)
    hint = 0
    for _ in range(300):
        obs = sim.step(expert.act(obs)[0])
        lane, hint = lane_frame_on_route(sim.route, obs.pose.x_m, obs.pose.y_m, math.radians(obs.pose.yaw_deg), hint)
        assert lane == obs.lane


def test_paper_routes_by_name_on_town04():
    server = town04_server()
    with connect(server, town="Town04") as sim:
        route = sim.resolve_route("straight")
        assert (route.x[0], route.y[0], route.x[-1], route.y[-1]) == pytest.approx((5, 0, 220, 0))
        assert sim.reset(route).frame == 0 and sim.route is route  # a resolved route is reused as it is
        obs = sim.reset(get_route("one-turn"))  # the embedded route object stands for its name
        assert sim.route.name == "one-turn" and sim.route.network is None
        assert (sim.route.x[-1], sim.route.y[-1]) == pytest.approx((120, 110))
        assert obs.lane.distance_to_goal_m == pytest.approx(sim.route.length_m)
        assert events(server, "load_world") == []


def test_a_route_in_the_maps_frame_starts_at_its_first_sample():
    xs = np.arange(20.0, 80.0, 0.5)
    route = Route("mine", xs, np.zeros_like(xs), np.zeros(len(xs), bool), np.ones(len(xs), np.int32),
                  np.full(len(xs), -1, np.int8))
    with connect(StandinServer()) as sim:
        obs = sim.reset(route)
        assert sim.route is route
        assert (obs.pose.x_m, obs.pose.y_m, obs.pose.z_m, obs.pose.yaw_deg) == pytest.approx((20.0, 0.0, 0.5, 0.0))
        assert obs.lane.distance_to_goal_m == pytest.approx(59.5)
        meta = sim.metadata()
        assert (meta["backend"], meta["map"], meta["server_version"], meta["route"]) == (
            "carla", "Standin", "0.9.16", "mine")


def test_paper_route_on_another_map_says_which_town():
    with connect(StandinServer()) as sim, pytest.raises(UsageError, match="pass --town Town04"):
        sim.reset("two-turn")


def test_gymnasium_env_over_the_stand_in():
    server = town04_server()
    env = make_carla_env(route="straight", width=32, height=24, carla_module=server.module(), town=None,
                         warmup_s=0.1)
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (24, 32, 3) and info["frame"] == 0
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.6, 0.0], np.float32))
    assert env.observation_space.contains(obs) and reward >= 0.0 and not terminated and not truncated
    env.close()
    assert restored(server) and ours(server) == []


def test_an_env_that_cannot_be_built_gives_the_server_back():
    """The simulator connects (synchronous mode on) before the env checks the route: a route this map lacks
    must not leave the server frozen."""
    server = StandinServer()
    with pytest.raises(UsageError, match="pass --town Town04"):
        make_carla_env(route="two-turn", width=32, height=24, carla_module=server.module(), town=None,
                       warmup_s=0.1)
    assert restored(server) and ours(server) == []


# -- teardown on every exit path ---------------------------------------------------------------------------
def stop_before_destroy(event_list: list[list]) -> bool:
    """Every sensor that listened was stopped, then destroyed (not listening any more)."""
    order = [(e[0], e[1]) for e in event_list if e[0] in ("stop", "destroy")]
    sensors = {e[1] for e in event_list if e[0] == "listen"}
    return (len(sensors) == 3 and all(order.index(("stop", s)) < order.index(("destroy", s)) for s in sensors)
            and all(e[3] is False for e in event_list if e[0] == "destroy"))


def test_teardown_on_exception():
    server = StandinServer()
    with pytest.raises(ZeroDivisionError), connect(server) as sim:
        sim.reset("0:2")
        sim.step(Control(throttle=1.0))
        1 / 0  # noqa: B018
    assert restored(server) and ours(server) == [] and stop_before_destroy(server.events)


def test_ctrl_c_during_teardown_waits_until_the_server_is_restored():
    server = StandinServer()
    sim = connect(server)
    sim.reset("0:2")
    server.on_apply_settings = lambda s: signal.raise_signal(signal.SIGINT)
    # as in an interactive run (a shell's background job inherits SIGINT ignored); conftest restores it after
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        sim.close()
    assert restored(server) and ours(server) == []


def test_teardown_on_sigterm_in_a_subprocess(tmp_path):
    state = tmp_path / "server.json"
    script = textwrap.dedent(f"""
        import os, signal
        from tests.sim.carla_standin import StandinServer
        from sim.carla_backend import CarlaSimulator
        from sim.types import CameraConfig, Control
        server = StandinServer(persist_path={str(state)!r})
        sim = CarlaSimulator(camera=CameraConfig(width=16, height=16), carla_module=server.module(), town=None,
                             warmup_s=0.1, autopilot=True)
        sim.reset("0:2")
        for k in range(1000):
            sim.step(Control(throttle=0.4))
            if k == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        print("not reached")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "not reached" not in done.stdout
    final = json.loads(state.read_text())
    assert final["settings"]["synchronous_mode"] is False and final["settings"]["fixed_delta_seconds"] is None
    assert final["tm_sync"] == {"8000": False} and final["actors"] == [] and final["ticks_while_async"] == 0
    assert stop_before_destroy(final["events"])
    restore = final["events"].index(["apply_settings", False, None])
    assert restore > max(i for i, e in enumerate(final["events"]) if e[0] == "listen")
