"""Frame-matched queues: data from other threads, late and stale items, time-outs, skipped frames."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from sim.carla_errors import SensorTimeout, SimulatorConnectionLost
from sim.carla_sync import EventQueue, FrameQueue


@dataclass
class Item:
    frame: int
    payload: str = ""


def test_returns_the_item_of_the_asked_frame_and_drops_stale_ones():
    q = FrameQueue("camera")
    for f in (10, 11, 12):
        q.put(Item(f, f"img{f}"))
    assert q.get(12, timeout_s=1.0).payload == "img12"
    assert q.dropped == 2


def test_waits_for_an_item_put_later_from_another_thread():
    q = FrameQueue("camera")
    q.put(Item(4))  # stale: from the previous tick
    timer = threading.Timer(0.05, q.put, args=(Item(5, "late"),))
    timer.start()
    assert q.get(5, timeout_s=2.0).payload == "late"
    timer.join()
    assert q.dropped == 1


def test_times_out_with_a_message_that_names_sensor_and_frame():
    q = FrameQueue("camera")
    q.put(Item(3))
    with pytest.raises(SensorTimeout, match=r"no camera data for frame 4 within 0\.05 s") as info:
        q.get(4, timeout_s=0.05)
    assert info.value.reason == "sensor_timeout"


def test_a_later_frame_means_ours_was_skipped_and_is_kept_for_its_turn():
    q = FrameQueue("camera")
    q.put(Item(9, "nine"))
    with pytest.raises(SimulatorConnectionLost, match="delivered frame 9 while frame 8 was expected") as info:
        q.get(8, timeout_s=1.0)
    assert info.value.reason == "frame_skipped"
    assert q.get(9, timeout_s=0.01).payload == "nine"


def test_clear_drops_everything_queued():
    q = FrameQueue("camera")
    for f in range(5):
        q.put(Item(f))
    assert q.clear() == 5
    with pytest.raises(SensorTimeout):
        q.get(4, timeout_s=0.01)


def test_events_are_taken_up_to_the_frame_and_later_ones_kept():
    q = EventQueue("collision")
    for f in (3, 5, 4, 7):
        q.put(Item(f))
    assert [e.frame for e in q.take_until(5)] == [3, 5, 4]
    assert q.take_until(6) == []
    assert [e.frame for e in q.take_until(7)] == [7]


def test_events_put_from_many_threads_are_all_kept():
    q = EventQueue("lane invasion")
    threads = [threading.Thread(target=lambda k=k: [q.put(Item(k)) for _ in range(100)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(q.take_until(10)) == 400
    assert q.clear() == 0
