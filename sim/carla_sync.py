"""Frame-matched delivery of sensor data in synchronous mode (the pattern of CARLA's ``synchronous_mode.py``).

CARLA calls sensor callbacks on its own worker threads, and GPU sensors (cameras) can deliver a tick's data
after ``world.tick()`` has returned, sometimes a couple of frames late. So each sensor gets its own
thread-safe queue that the callback only appends to, and the main thread, after ticking to frame N, asks
each queue for exactly frame N:

* :class:`FrameQueue` for sources that deliver every tick (camera, world snapshot): items of earlier
  frames are stale and dropped, the wait has a timeout, and an item of a later frame means frame N was
  skipped (another client ticked, or the server dropped it) and is an error, never silently used.
* :class:`EventQueue` for sources that deliver only when something happens (collision, lane invasion):
  nothing to wait for, so all events up to frame N are taken, later ones kept for the next step. Events
  are never dropped: a late one is reported with the next observation, carrying its own frame.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from sim.carla_errors import SensorTimeout, SimulatorConnectionLost


class FrameQueue:
    """Every-tick data of one source, pushed by :meth:`put` from any thread and read by frame number."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.Queue = queue.Queue()
        self._ahead: Any = None
        self.dropped = 0  # stale items discarded so far

    def put(self, data: Any) -> None:
        """The sensor callback: called on CARLA's thread, must not block or touch the simulator."""
        self._queue.put(data)

    def get(self, frame: int, timeout_s: float) -> Any:
        """The item of ``frame``, waiting at most ``timeout_s`` seconds in all; older items are dropped.

        Raises :class:`SensorTimeout` when it does not come in time and :class:`SimulatorConnectionLost`
        (reason ``frame_skipped``) when a later frame arrives first.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            item = self._ahead
            self._ahead = None
            if item is None:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=max(remaining, 0.0)) if remaining > 0 else \
                        self._queue.get_nowait()
                except queue.Empty:
                    raise SensorTimeout(
                        f"no {self.name} data for frame {frame} within {timeout_s:g} s: the server is overloaded "
                        "or stopped; raise the sensor timeout (e.g. for large images) or restart the server"
                    ) from None
            if item.frame == frame:
                return item
            if item.frame < frame:
                self.dropped += 1
                continue
            self._ahead = item
            raise SimulatorConnectionLost(
                f"{self.name} delivered frame {item.frame} while frame {frame} was expected: a frame was "
                "skipped, which happens when another client also ticks the server; run one ticking client "
                "per server", reason="frame_skipped")

    def clear(self) -> int:
        """Drop everything queued (e.g. after warm-up); returns how many items were dropped."""
        n = 0 if self._ahead is None else 1
        self._ahead = None
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return n
            n += 1


class EventQueue:
    """Events of one source (they come only when something happens), taken by frame."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._events: list[Any] = []

    def put(self, event: Any) -> None:
        """The sensor callback (any thread)."""
        with self._lock:
            self._events.append(event)

    def take_until(self, frame: int) -> list[Any]:
        """Events of frames up to ``frame`` in arrival order; events of later frames stay queued."""
        with self._lock:
            now = [e for e in self._events if e.frame <= frame]
            self._events = [e for e in self._events if e.frame > frame]
        return now

    def clear(self) -> int:
        """Drop all queued events; returns how many."""
        with self._lock:
            n, self._events = len(self._events), []
        return n
