"""The RPC calls ``caril serve`` answers: CARLA's function names bound to the :class:`World`.

Each ``rpc_<name>`` method takes the call's decoded arguments and returns the msgpack-ready result in its
``Response`` form. Calls not bound here are answered with a ``RuntimeError`` naming the call (for blocking
calls) or logged once (fire-and-forget calls, whose answer the client discards). Errors a caller can cause
(a bad actor id, an unknown map, a camera size out of range) come back as ``RuntimeError(message)`` too.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from sim.carla_server import blueprints as bp
from sim.carla_server.encoding import (
    RESPONSE_VOID_OK,
    ActorDescription,
    EpisodeSettings,
    Request,
    Transform,
    VehicleControl,
    WeatherParameters,
    decode_command,
    decode_vector,
    encode_token,
    is_error,
    mismatch,
    response_error,
    response_ok,
)
from sim.carla_server.maps import available_maps
from sim.carla_server.rpc import Then
from sim.carla_server.world import EPISODE_STREAM, World
from sim.errors import CarilError

log = logging.getLogger(__name__)

PENDING_STREAM_WAIT_S = 2.0  # a synchronous tick waits this long for streams handed out but not connected
NO_OP_CALLS = frozenset({  # accepted and ignored: nothing in the embedded world they could change
    "draw_debug_shape", "set_actor_target_angular_velocity", "set_actor_enable_gravity", "set_vehicle_light_state",
    "freeze_all_traffic_lights", "reset_all_traffic_lights", "show_vehicle_debug_telemetry", "update_lights_state",
    "update_day_night_cycle", "enable_environment_objects", "set_actor_angular_velocity",
})
EMPTY_LIST_CALLS = frozenset({  # queries whose honest answer in the embedded world is "none"
    "get_required_files", "query_lights_state", "get_vehicle_light_states", "get_environment_objects",
    "get_all_level_BBs", "get_names_of_all_objects",
})


PYTHON_NAMES = {  # wire names of unsupported calls whose Python API name differs, for the error message
    "project_point": "World.project_point or World.ground_projection",
    "cast_ray": "World.cast_ray",
    "get_level_bbs": "World.get_level_bbs",
    "unload_map_layer": "World.unload_map_layer",
    "copy_opendrive_to_file": "Client.generate_opendrive_world",
    "start_recorder": "Client.start_recorder",
    "stop_recorder": "Client.stop_recorder",
    "show_recorder_file_info": "Client.show_recorder_file_info",
    "replay_file": "Client.replay_file",
    "get_actor_component_world_transform": "Actor.get_component_world_transform",
    "get_actor_component_relative_transform": "Actor.get_component_relative_transform",
    "get_actor_bone_world_transforms": "Actor.get_bone_world_transforms",
    "get_actor_bone_relative_transforms": "Actor.get_bone_relative_transforms",
    "get_physics_control": "Vehicle.get_physics_control",
    "apply_physics_control": "Vehicle.apply_physics_control",
    "apply_ackermann_control_to_vehicle": "Vehicle.apply_ackermann_control",
}


def unsupported_message(name: str) -> str:
    python = f" ({PYTHON_NAMES[name]})" if name in PYTHON_NAMES else ""
    return (f"caril serve does not support the CARLA call '{name}'{python}: it serves the embedded simulator "
            "(one vehicle type, RGB cameras, collision and lane-invasion sensors; no walkers, traffic lights, "
            "physics control or recorder). See sim/carla_server/service.py for the calls it answers")


class CarlaService:
    """Dispatches requests to the world. ``wait_for_streams(timeout)`` lets a synchronous tick wait for
    pending stream subscriptions; ``expect_stream(id)`` notes a token handed out."""

    def __init__(self, world: World, expect_stream: Callable[[int], None],
                 wait_for_streams: Callable[[float], bool], stream_port: int) -> None:
        self.world = world
        self.protocol = world.protocol
        self.expect_stream, self.wait_for_streams = expect_stream, wait_for_streams
        self.stream_port = stream_port
        self.traffic_managers: dict[int, tuple[str, int]] = {}
        self._warned: set[str] = set()

    def __call__(self, request: Request) -> Any:
        result = self._dispatch(request)
        if request.asynchronous and is_error(result) and request.name not in self._warned:
            self._warned.add(request.name)  # the client discards this answer: say it here, once per call name
            log.warning("fire-and-forget call %s failed: %s", request.name, result[0][1][0])
        return result

    def _dispatch(self, request: Request) -> Any:
        method = getattr(self, f"rpc_{request.name}", None)
        if method is None:
            if request.name in NO_OP_CALLS:
                return RESPONSE_VOID_OK
            if request.name in EMPTY_LIST_CALLS:
                return response_ok([])
            return response_error(unsupported_message(request.name))
        try:
            return method(*request.args)
        except CarilError as e:
            return response_error(str(e))
        except (TypeError, ValueError) as e:  # a struct of the wrong shape: most likely another client version
            log.warning("bad arguments to %s: %s", request.name, e)
            return response_error(f"caril serve could not read the arguments of '{request.name}' ({e}); it speaks "
                                  f"the carla {self.protocol.version} protocol: use that client version")

    # -- connection and episode ---------------------------------------------------------------------------
    def rpc_version(self) -> list:
        return response_ok(self.protocol.version)

    def rpc_get_episode_info(self) -> list:
        return response_ok([self.world.episode_id, encode_token(EPISODE_STREAM, self.stream_port)])

    def rpc_get_sensor_token(self, stream_id: int) -> list:
        """The token to subscribe with; a synchronous tick waits (bounded) for the subscription to land."""
        if self.world.has_stream(int(stream_id)):
            self.expect_stream(int(stream_id))
        return response_ok(encode_token(int(stream_id), self.stream_port))

    def rpc_get_episode_settings(self) -> list:
        return response_ok(self.world.settings.to_msg())

    def rpc_set_episode_settings(self, settings: Any) -> list:
        return response_ok(self.world.apply_settings(EpisodeSettings.from_msg(settings, self.protocol)))

    def rpc_tick_cue(self) -> list | Then:
        """One synchronous step: answered once its collision events and episode state are on the wire (the
        client's ``world.tick()`` returns when it has both), and its images rendered and streamed after the
        answer, as a CARLA server does; the client reads them from its sensor queues meanwhile."""
        world = self.world
        if not world.settings.synchronous_mode:  # the free-running ticker will produce the next frame
            return response_ok(world.frame + 1)
        self.wait_for_streams(PENDING_STREAM_WAIT_S)
        return self._step(response_ok)

    # -- map ----------------------------------------------------------------------------------------------
    def rpc_get_map_info(self) -> list:
        m = self.world.map
        return response_ok([m.path, [t.to_msg() for t in m.spawn_points]])

    def rpc_get_map_data(self) -> list:
        return response_ok(self.world.map.xodr)

    def rpc_get_available_maps(self) -> list:
        return response_ok(available_maps())

    def rpc_load_new_episode(self, name: str, reset_settings: bool = True, _layers: int = 0) -> list:
        self.world.load(str(name), bool(reset_settings))
        return RESPONSE_VOID_OK

    def rpc_get_weather_parameters(self) -> list:
        return response_ok(self.world.weather.to_msg())

    def rpc_set_weather_parameters(self, params: Any) -> list:
        self.world.set_weather(WeatherParameters.from_msg(params, self.protocol))
        return RESPONSE_VOID_OK

    # -- blueprints and actors ----------------------------------------------------------------------------
    def rpc_get_actor_definitions(self) -> list:
        return response_ok([d.to_msg(self.protocol) for d in bp.actor_definitions()])

    def rpc_spawn_actor(self, description: Any, transform: Any) -> list:
        actor = self.world.spawn(ActorDescription.from_msg(description), Transform.from_msg(transform))
        return response_ok(self.world.actor_msg(actor))

    def rpc_spawn_actor_with_parent(self, description: Any, transform: Any, parent: int, _attachment: int = 0,
                                    _socket: str = "") -> list:
        actor = self.world.spawn(ActorDescription.from_msg(description), Transform.from_msg(transform), int(parent))
        return response_ok(self.world.actor_msg(actor))

    def rpc_destroy_actor(self, actor_id: int) -> list:
        return response_ok(self.world.destroy(int(actor_id)))

    def rpc_get_actors_by_id(self, ids: list) -> list:
        with self.world.lock:
            actors = [self.world.actors[int(i)] for i in ids if int(i) in self.world.actors]
            return response_ok([self.world.actor_msg(a) for a in actors])

    def rpc_get_spectator(self) -> list:
        return response_ok(self.world.actor_msg(self.world.spectator))

    def rpc_get_actor_bounding_box(self, actor_id: int) -> list:
        return response_ok(self.world.bounding_box(int(actor_id)))

    def rpc_apply_control_to_vehicle(self, actor_id: int, control: Any) -> list:
        self.world.apply_control(int(actor_id), VehicleControl.from_msg(control, self.protocol))
        return RESPONSE_VOID_OK

    def rpc_set_actor_transform(self, actor_id: int, transform: Any) -> list:
        self.world.set_transform(int(actor_id), Transform.from_msg(transform))
        return RESPONSE_VOID_OK

    def rpc_set_actor_location(self, actor_id: int, location: Any) -> list:
        self.world.set_location(int(actor_id), decode_vector(location))
        return RESPONSE_VOID_OK

    def rpc_set_actor_target_velocity(self, actor_id: int, velocity: Any) -> list:
        self.world.set_target_velocity(int(actor_id), decode_vector(velocity))
        return RESPONSE_VOID_OK

    def rpc_set_actor_simulate_physics(self, actor_id: int, enabled: bool) -> list:
        self.world.set_simulate_physics(int(actor_id), bool(enabled))
        return RESPONSE_VOID_OK

    def rpc_get_wheel_steer_angle(self, actor_id: int, _wheel: int = 0) -> list:
        return response_ok(self.world.wheel_angle_deg(int(actor_id)))

    def rpc_get_vehicle_light_state(self, actor_id: int) -> list:
        self.world.get(int(actor_id))
        return response_ok([0])  # rpc::VehicleLightState{NONE}, an array of its flags: the car has no lights

    # -- batches ------------------------------------------------------------------------------------------
    def rpc_apply_batch(self, commands: list, do_tick_cue: bool = False) -> list | Then:
        """``[CommandResponse...]`` with no ``Response`` wrapper (the client reads the raw array)."""
        results = [self._command(c) for c in commands]
        if do_tick_cue and self.world.settings.synchronous_mode:
            return self._step(lambda _frame: results)
        return results

    def _step(self, answer: Callable[[int], Any]) -> Then:
        """Advance the synchronous world one step: ``answer(frame)`` goes back once the step's collision events
        and episode state are out, and its images are rendered and streamed after it (as a CARLA server sends
        sensor data after the tick's answer)."""
        frame, shots = self.world.advance()
        return Then(answer(frame), lambda: self.world.capture(shots))

    def _command(self, msg: Any, future_id: int = 0) -> list:
        """Run one command; ``future_id`` replaces actor id 0 in ``do_after`` commands of a spawn."""
        try:
            command = decode_command(msg, self.protocol)
            body = list(command.body)
            if future_id and body and body[0] == 0:
                body[0] = future_id
            return response_ok(self._run(command.name, body))
        except CarilError as e:
            return response_error(str(e))
        except (TypeError, ValueError) as e:
            return response_error(f"caril serve could not read a batch command ({e})")

    def _run(self, name: str, body: list) -> int:
        world = self.world
        if name == "SpawnActor":
            if len(body) != self.protocol.spawn_command_fields:
                raise mismatch(self.protocol, "SpawnActor command", len(body), self.protocol.spawn_command_fields)
            description, transform, parent, _attachment, _socket, do_after = body
            parent_id = int(parent[1]) if len(parent) == 2 else 0
            actor = world.spawn(ActorDescription.from_msg(description), Transform.from_msg(transform), parent_id)
            for command in do_after:
                self._command(command, actor.id)
            return actor.id
        handlers: dict[str, Callable[[int, Any], None]] = {
            "DestroyActor": lambda i, _: world.destroy(i),
            "ApplyVehicleControl": lambda i, c: world.apply_control(i, VehicleControl.from_msg(c, self.protocol)),
            "ApplyTransform": lambda i, t: world.set_transform(i, Transform.from_msg(t)),
            "ApplyTargetVelocity": lambda i, v: world.set_target_velocity(i, decode_vector(v)),
            "ApplyTargetAngularVelocity": lambda i, _: None,
            "SetSimulatePhysics": lambda i, e: world.set_simulate_physics(i, bool(e)),
            "SetEnableGravity": lambda i, _: None,
            "SetVehicleLightState": lambda i, _: None,
            "SetAutopilot": lambda i, _: None,  # the client's own Traffic Manager takes the car; nothing to do here
            "ShowDebugTelemetry": lambda i, _: None,
        }
        if name not in handlers:
            raise CarilError(unsupported_message(f"command.{name}"))
        actor_id = int(body[0])
        handlers[name](actor_id, body[1] if len(body) > 1 else None)
        return actor_id

    # -- the Traffic Manager registry (the TM itself runs inside the client) -----------------------------
    def rpc_is_traffic_manager_running(self, port: int) -> list:
        entry = self.traffic_managers.get(int(port))
        if entry is not None and not _reachable(*entry):  # its client died without unregistering it
            self.traffic_managers.pop(int(port), None)  # another connection may have dropped it already
            entry = None
        return response_ok(entry is not None)

    def rpc_get_traffic_manager_running(self, port: int) -> list:
        host, tm_port = self.traffic_managers.get(int(port), ("", 0))
        return response_ok([host, tm_port])

    def rpc_add_traffic_manager_running(self, entry: list) -> list:
        host, port = entry
        self.traffic_managers[int(port)] = (str(host), int(port))
        return response_ok(True)

    def rpc_destroy_traffic_manager(self, port: int) -> list:
        self.traffic_managers.pop(int(port), None)
        return RESPONSE_VOID_OK


def _reachable(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False
