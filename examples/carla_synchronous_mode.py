#!/usr/bin/env python
"""Synchronous mode with a camera, in the style of CARLA's ``PythonAPI/examples/synchronous_mode.py``.

It only uses the ``carla`` client (0.9.16), so it runs unchanged against a CARLA server or ``caril serve``:

    caril serve --port 2000 &
    python examples/carla_synchronous_mode.py --port 2000 --frames 100 [--display]

A :class:`CarlaSyncMode` context turns synchronous mode on with a fixed step, puts every sensor's data and
the world snapshots into queues, and on each ``tick`` returns the items whose frame is the tick's frame
(older ones are discarded). The car is moved along its lane as in CARLA's example: physics off, teleported
1.5 m ahead on each tick (``waypoint.next``). The settings are restored, the callbacks removed and every
actor destroyed on the way out, also after an error or Ctrl-C. ``--display`` shows the camera with pygame.
"""

from __future__ import annotations

import argparse
import queue
import random
import sys

import carla
import numpy as np


class CarlaSyncMode:
    """Context manager that synchronises the server and the sensors' queues.

        with CarlaSyncMode(world, camera, fps=20) as sync_mode:
            while True:
                snapshot, image = sync_mode.tick(timeout=2.0)
    """

    def __init__(self, world: carla.World, *sensors: carla.Sensor, fps: int = 20) -> None:
        self.world = world
        self.sensors = sensors
        self.frame: int | None = None
        self.delta_seconds = 1.0 / fps
        self._queues: list[queue.Queue] = []
        self._settings: carla.WorldSettings | None = None
        self._on_tick_id = 0

    def __enter__(self) -> CarlaSyncMode:
        self._settings = self.world.get_settings()
        self.frame = self.world.apply_settings(carla.WorldSettings(
            no_rendering_mode=False, synchronous_mode=True, fixed_delta_seconds=self.delta_seconds))

        def make_queue(register_event):
            q: queue.Queue = queue.Queue()
            self._queues.append(q)
            return register_event(q.put)

        self._on_tick_id = make_queue(self.world.on_tick)
        for sensor in self.sensors:
            make_queue(sensor.listen)
        return self

    def tick(self, timeout: float) -> list:
        """Advance one step; the world snapshot and each sensor's data of that step."""
        self.frame = self.world.tick()
        data = [self._retrieve_data(q, timeout) for q in self._queues]
        assert all(x.frame == self.frame for x in data)
        return data

    def __exit__(self, *exc: object) -> None:
        # Unlike CARLA's example, also drop the on_tick callback: one still registered when the world ticks
        # on (asynchronous again) during interpreter exit aborts the process.
        self.world.remove_on_tick(self._on_tick_id)
        for sensor in self.sensors:
            sensor.stop()
        self.world.apply_settings(self._settings)

    def _retrieve_data(self, sensor_queue: queue.Queue, timeout: float):
        while True:
            data = sensor_queue.get(timeout=timeout)
            if data.frame == self.frame:
                return data


def to_rgb(image: carla.Image) -> np.ndarray:
    """BGRA bytes to an HxWx3 RGB array."""
    array = np.frombuffer(image.raw_data, dtype=np.uint8).reshape(image.height, image.width, 4)
    return array[:, :, 2::-1].copy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=100, help="ticks to run")
    parser.add_argument("--res", default="448x448", help="camera WIDTHxHEIGHT")
    parser.add_argument("--fov", type=float, default=110.0)
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="picks the spawn point")
    parser.add_argument("--display", action="store_true", help="show the camera with pygame")
    args = parser.parse_args()
    width, height = (int(v) for v in args.res.split("x"))

    client = carla.Client(args.host, args.port)
    client.set_timeout(5.0)
    world = client.get_world()
    carla_map = world.get_map()
    actors: list[carla.Actor] = []
    display = None
    try:
        blueprints = world.get_blueprint_library()
        start = random.Random(args.seed).choice(carla_map.get_spawn_points())
        vehicle = world.spawn_actor(blueprints.find("vehicle.tesla.model3"), start)
        actors.append(vehicle)
        vehicle.set_simulate_physics(False)
        camera_bp = blueprints.find("sensor.camera.rgb")
        camera_bp.set_attribute("image_size_x", str(width))
        camera_bp.set_attribute("image_size_y", str(height))
        camera_bp.set_attribute("fov", str(args.fov))
        camera = world.spawn_actor(camera_bp, carla.Transform(carla.Location(x=1.5, z=2.4)), attach_to=vehicle)
        actors.append(camera)
        if args.display:
            import pygame

            pygame.init()
            display = pygame.display.set_mode((width, height))
        with CarlaSyncMode(world, camera, fps=args.fps) as sync_mode:
            for _ in range(args.frames):
                snapshot, image = sync_mode.tick(timeout=2.0)
                waypoint = carla_map.get_waypoint(vehicle.get_location())
                ahead = waypoint.next(1.5)
                if not ahead:  # the lane ends: start again elsewhere
                    ahead = [carla_map.get_waypoint(random.choice(carla_map.get_spawn_points()).location)]
                vehicle.set_transform(random.choice(ahead).transform)
                rgb = to_rgb(image)
                if display is not None:
                    import pygame

                    display.blit(pygame.surfarray.make_surface(rgb.swapaxes(0, 1)), (0, 0))
                    pygame.display.flip()
                    pygame.event.pump()
                if image.frame % 20 == 0:
                    loc = vehicle.get_location()
                    print(f"frame {image.frame}: {image.width}x{image.height} image, mean {rgb.mean():.1f}, "
                          f"car at ({loc.x:.1f}, {loc.y:.1f}), simulated fps "
                          f"{1.0 / snapshot.timestamp.delta_seconds:.0f}", flush=True)
        print(f"done: {args.frames} frames, every camera image matched its tick")
    finally:
        for actor in reversed(actors):
            actor.destroy()
        if display is not None:
            import pygame

            pygame.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
