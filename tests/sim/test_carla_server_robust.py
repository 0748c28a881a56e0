"""``caril serve`` under misuse: slow stream readers, odd settings, teleports, malformed requests (no client needed)."""

import logging
import math
import socket
import struct
import threading
import time

import msgpack
import numpy as np
import pytest

from sim.carla_server import CarlaServer, streaming
from sim.carla_server.encoding import ActorDescription, EpisodeSettings, Transform, VehicleControl
from sim.carla_server.rpc import RpcServer
from sim.carla_server.streaming import StreamServer
from sim.errors import UsageError

STREAM = 7
CAMERA = {"image_size_x": (2, "64"), "image_size_y": (2, "48"), "fov": (3, "90")}


def subscribe(server: StreamServer, stream_id: int = STREAM) -> socket.socket:
    """A raw stream subscription (what the client's streaming library opens); waits until it is registered."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10.0)
    sock.sendall(struct.pack("<I", stream_id))
    deadline = time.monotonic() + 5.0
    while server.subscribers(stream_id) == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.subscribers(stream_id) == 1
    return sock


def read_message(sock: socket.socket) -> bytes:
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the stream closed mid-message"
            data += chunk
        return data

    return exactly(struct.unpack("<I", exactly(4))[0])


@pytest.fixture()
def streams():
    s = StreamServer("127.0.0.1", 0)
    s.start()
    yield s
    s.close()


def test_a_reader_that_stalls_never_holds_up_publishing_and_gets_whole_messages_in_order(streams, monkeypatch,
                                                                                        caplog):
    monkeypatch.setattr(streaming, "MAX_BACKLOG_BYTES", 8 << 20)
    reader = subscribe(streams)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sim.carla_server.streaming"):
        taken = []
        for k in range(40):  # 40 MiB to a reader that takes nothing: far beyond every socket buffer
            image = np.full(1 << 20, k, np.uint8)  # each message its own buffer, as the world's images are
            taken.append(streams.publish(STREAM, struct.pack("<I", k), image))
    assert time.monotonic() - t0 < 2.0  # each publish returned at once (a blocking send would wait 5 s)
    assert taken[:5] == [1] * 5 and taken[-1] == 0  # sent or queued at first, then dropped
    assert "its reader is" in caplog.text and "messages dropped" in caplog.text
    got = [read_message(reader) for _ in range(5)]
    assert [struct.unpack("<I", m[:4])[0] for m in got] == [0, 1, 2, 3, 4]  # the oldest first, none torn
    assert all(len(m) == 4 + (1 << 20) and m[4:12] == bytes([i] * 8) for i, m in enumerate(got))
    reader.close()


def test_frames_larger_than_the_backlog_bound_still_queue_a_few_deep(streams, monkeypatch):
    """A 4096x4096 BGRA frame is as large as the whole bound: a reader a frame or two behind must get them."""
    monkeypatch.setattr(streaming, "MAX_BACKLOG_BYTES", 1 << 20)
    monkeypatch.setattr(streaming, "SEND_BUFFER_BYTES", 1 << 16)  # as small as on any host
    reader = subscribe(streams)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    frame = 4 << 20  # four times the bound, far beyond the socket buffers
    taken = [streams.publish(STREAM, struct.pack("<I", k), np.full(frame, k, np.uint8)) for k in range(6)]
    assert taken == [1, 1, 1, 0, 0, 0]  # the first begun, two more queued (three held), then dropped
    got = [read_message(reader) for _ in range(3)]
    assert [struct.unpack("<I", m[:4])[0] for m in got] == [0, 1, 2]
    assert all(len(m) == 4 + frame and m[-1] == i for i, m in enumerate(got))
    reader.close()


def test_a_reader_that_takes_nothing_for_the_send_timeout_is_disconnected(streams, monkeypatch):
    monkeypatch.setattr(streaming, "SEND_TIMEOUT_S", 0.3)
    reader = subscribe(streams)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    for _ in range(20):
        streams.publish(STREAM, np.zeros(1 << 20, np.uint8))
    deadline = time.monotonic() + 5.0
    while streams.subscribers(STREAM) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streams.subscribers(STREAM) == 0
    reader.close()


def test_a_slow_but_steady_reader_stays_connected(streams, monkeypatch):
    """The socket of a slow reader rarely becomes writable (Linux waits for a third of the buffer to free);
    its progress is seen in the send queue, so only a reader that takes nothing is dropped."""
    monkeypatch.setattr(streaming, "SEND_TIMEOUT_S", 0.5)
    monkeypatch.setattr(streaming, "DRAIN_POLL_S", 0.05)
    reader = subscribe(streams)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    stop, got = threading.Event(), []

    def read_slowly():
        while not stop.is_set():
            got.append(len(reader.recv(16 << 10)))
            time.sleep(0.02)  # about 0.8 MB/s

    thread = threading.Thread(target=read_slowly, daemon=True)
    thread.start()
    for _ in range(15):  # 10 MB/s offered for 1.5 s: the backlog grows, the reader keeps taking
        streams.publish(STREAM, np.zeros(1 << 20, np.uint8))
        time.sleep(0.1)
    assert streams.subscribers(STREAM) == 1 and sum(got) > 0
    stop.set()
    reader.close()
    thread.join(2.0)


@pytest.fixture()
def server():
    s = CarlaServer(host="127.0.0.1", port=0, streaming_port=0, map_name="one-turn")
    yield s
    s.close()


def test_a_stalled_camera_reader_does_not_freeze_the_world_or_other_calls(server, monkeypatch):
    monkeypatch.setattr(streaming, "MAX_BACKLOG_BYTES", 4 << 20)
    world = server.world
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    cam = world.spawn(ActorDescription(2, "sensor.camera.rgb", {**CAMERA, "image_size_x": (2, "800"),
                                                                "image_size_y": (2, "600")}),
                      Transform(1.5, 0, 2.4, 0, 0, 0), car.id)
    reader = subscribe(server.streams, cam.stream_id)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    world.apply_settings(EpisodeSettings(synchronous_mode=True, fixed_delta_seconds=0.05))
    first = world.frame
    ticking = threading.Thread(target=lambda: [world.tick() for _ in range(40)])  # 1.9 MB frames, never read
    t0 = time.monotonic()
    ticking.start()
    time.sleep(0.05)
    t1 = time.monotonic()
    world.apply_control(car.id, VehicleControl(throttle=0.5))  # takes the world lock between two ticks
    assert time.monotonic() - t1 < 1.0
    ticking.join(10.0)
    assert world.frame == first + 40 and time.monotonic() - t0 < 5.0
    reader.close()


def test_calls_get_the_lock_while_the_async_ticker_runs_behind(server, monkeypatch):
    """Ticks slower than the step: the ticker must still leave the world lock to the RPC threads."""
    world = server.world
    tick = world.tick
    monkeypatch.setattr(world, "tick", lambda: (time.sleep(0.02), tick())[1])  # 20 ms per tick, 1 ms steps
    world.apply_settings(EpisodeSettings(fixed_delta_seconds=0.001))
    time.sleep(0.2)
    for _ in range(5):
        t0 = time.monotonic()
        world.apply_settings(EpisodeSettings(fixed_delta_seconds=0.001))
        assert time.monotonic() - t0 < 0.5


def test_fixed_delta_seconds_must_be_a_finite_step(server):
    for bad in (math.inf, math.nan, 11.0):
        with pytest.raises(UsageError, match="is not a step caril serve can take"):
            server.world.apply_settings(EpisodeSettings(fixed_delta_seconds=bad))
    assert server.world.apply_settings(EpisodeSettings(fixed_delta_seconds=0.0)) >= 0  # 0: a variable step


def test_the_async_ticker_follows_new_settings_at_once(server):
    world = server.world
    world.apply_settings(EpisodeSettings(fixed_delta_seconds=10.0))  # one tick per 10 s of wall time
    time.sleep(0.2)
    before = world.frame
    world.apply_settings(EpisodeSettings(fixed_delta_seconds=0.05))  # back to 20 Hz: no 10 s wait first
    time.sleep(0.5)
    assert world.frame - before >= 4


def test_set_transform_moves_an_attached_camera_and_it_renders_from_there(server):
    world = server.world
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    cam = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(1.5, 0, 2.4, 0, 0, 0), car.id)
    mount = Transform(-6.0, 0.5, 5.0, -20.0, 10.0, 0.0)
    twin = world.spawn(ActorDescription(3, "sensor.camera.rgb", CAMERA), mount, car.id)
    target = world.world_transform(twin)
    world.set_transform(cam.id, target)  # CARLA's set_transform takes a world transform
    moved = world.world_transform(cam)
    assert np.allclose([moved.x, moved.y, moved.z, moved.pitch, moved.yaw, moved.roll],
                       [target.x, target.y, target.z, target.pitch, target.yaw, target.roll], atol=1e-6)
    assert cam.parent == car.id
    assert (cam.config.x_m, cam.config.z_m, cam.config.pitch_deg) == pytest.approx((-6.0, 5.0, -20.0))
    a = world.render(_shot(world, cam))
    b = world.render(_shot(world, twin))
    assert np.array_equal(a, b)


def _shot(world, cam):
    from sim.carla_server.world import Shot

    return Shot(cam, *world._view(cam), world.frame, world.elapsed_s, world.world_transform(cam))


def test_a_car_teleported_into_a_building_drives_out_but_never_deeper_in(server):
    world = server.world
    (x0, y0), (x1, y1) = world.map.collision.boxes[0].min(axis=0), world.map.collision.boxes[0].max(axis=0)
    half_length = world.params.length_m / 2
    world.apply_settings(EpisodeSettings(synchronous_mode=True, fixed_delta_seconds=0.05))
    # inside the building, facing its east wall: it drives out through it (it was stuck for good before)
    inside = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    world.set_transform(inside.id, Transform(float(x0 + x1) / 2, float(y0 + y1) / 2, 0.3, 0.0, 0.0, 0.0))
    world.apply_control(inside.id, VehicleControl(throttle=1.0))
    for _ in range(80):
        world.tick()
    assert inside.state.x_m > x1 + half_length and inside.state.y_m == pytest.approx((y0 + y1) / 2)
    world.destroy(inside.id)
    # its nose 0.3 m into the west wall, facing in: full throttle moves it no deeper
    nose_in = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    start = float(x0) + 0.3 - half_length
    world.set_transform(nose_in.id, Transform(start, float(y0 + y1) / 2, 0.3, 0.0, 0.0, 0.0))
    world.apply_control(nose_in.id, VehicleControl(throttle=1.0))
    for _ in range(40):
        world.tick()
    assert nose_in.state.x_m == pytest.approx(start) and nose_in.state.speed_mps == 0.0


def test_a_car_straddling_a_building_corner_never_gets_deeper_in(server):
    """Driving away from an obstacle's centre is not driving out of it: at a corner, aimed inwards, the car
    may not cut through the building."""
    from sim.scene import penetration_depth
    from sim.sensors import footprint

    world = server.world
    box = world.map.collision.boxes[0]
    x1, y1 = box.max(axis=0)
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    world.set_transform(car.id, Transform(float(x1) - 4.0, float(y1), 0.3, 0.0, -20.0, 0.0))
    world.apply_settings(EpisodeSettings(synchronous_mode=True, fixed_delta_seconds=0.05))
    world.apply_control(car.id, VehicleControl(throttle=1.0))

    def depth():
        s = car.state
        return penetration_depth(footprint(s.x_m, s.y_m, s.yaw_rad, world.params), box)

    start = depth()
    assert start > 0.5
    depths = []
    for _ in range(80):
        world.tick()
        depths.append(depth())
    assert max(depths) <= start + 1e-9


def test_a_malformed_request_is_answered_with_an_error():
    rpc = RpcServer.__new__(RpcServer)
    rpc.handler = lambda request: [[1, "never"]]
    for message in ([0, 7, "version", 5], [0, "x", "version", []], [0, 7]):
        answer, after = rpc._answer(message)
        kind, msgid, error, result = msgpack.unpackb(answer, raw=False)
        assert after is None and kind == 1 and msgid == (7 if message[1:2] == [7] else 0)
        assert "not a msgpack-rpc request" in error
    rpc.handler = lambda request: object()  # a result msgpack cannot encode: still an answer
    kind, msgid, error, result = msgpack.unpackb(rpc._answer([0, 9, "version", [[False]]])[0], raw=False)
    assert (kind, msgid, error) == (1, 9, None) and "version failed" in result[0][1][0]


@pytest.mark.parametrize("garbage, reason", [
    (b"\xa3\xff\xfe\xfd", "UnicodeDecodeError"),  # a msgpack str that is not UTF-8
    (b"\xc1", "FormatError"),  # a byte msgpack never uses
    (b"\x91" * 2000, "StackError"),  # arrays nested deeper than the unpacker goes
])
def test_a_malformed_connection_is_one_warning_naming_the_peer_and_the_server_goes_on(garbage, reason, caplog):
    rpc = RpcServer("127.0.0.1", 0, lambda request: [[1, "0.9.16"]])
    rpc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="sim.carla_server.rpc"):
            bad = socket.create_connection(("127.0.0.1", rpc.port))
            port = bad.getsockname()[1]
            bad.sendall(garbage)
            assert bad.recv(16) == b""  # the server hangs up on it
            bad.close()
            good = socket.create_connection(("127.0.0.1", rpc.port))  # ... and still answers others
            assert call(good, msgpack.Unpacker(raw=False), 3, "version")[:3] == [1, 3, None]
            good.close()
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and not warnings[0].exc_info
        message = warnings[0].getMessage()
        assert message.startswith(f"dropped the connection from 127.0.0.1:{port}: not a CARLA 0.9.16 client's")
        assert reason in message
    finally:
        rpc.close()


def call(sock: socket.socket, unpacker: msgpack.Unpacker, msgid: int, name: str, *args) -> list:
    """One msgpack-rpc call on a raw connection; returns the response message."""
    sock.sendall(msgpack.packb([0, msgid, name, list(args)]))
    while True:
        for message in unpacker:
            return message
        data = sock.recv(1 << 16)
        assert data, "the server closed the connection"
        unpacker.feed(data)


def test_a_synchronous_tick_is_answered_before_its_images_render(server, monkeypatch):
    """As with CARLA, world.tick() returns while the images are still on their way; they still come."""
    world = server.world
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    cam = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(1.5, 0, 2.4, 0, 0, 0), car.id)
    reader = subscribe(server.streams, cam.stream_id)
    world.apply_settings(EpisodeSettings(synchronous_mode=True, fixed_delta_seconds=0.05))
    answered, rendered = threading.Event(), []
    render = type(world).render

    def held_render(self, shot):
        assert answered.wait(5.0), "the render ran before the tick was answered"
        rendered.append(shot.frame)
        return render(self, shot)

    monkeypatch.setattr(type(world), "render", held_render)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10.0) as rpc:
        kind, msgid, error, result = call(rpc, msgpack.Unpacker(), 5, "tick_cue")
        answered.set()
        frame = result[0][1]
        header = read_message(reader)
    assert (kind, msgid, error) == (1, 5, None) and rendered == [frame] == [world.frame]
    assert struct.unpack_from("<Q", header, 8)[0] == frame  # the image is stamped with the answered frame
    reader.close()


def test_a_follow_up_runs_after_its_answer_is_sent_and_its_failure_is_logged(caplog):
    from sim.carla_server.rpc import Then

    received, ran = {1: threading.Event(), 2: threading.Event()}, []

    def after(n):
        assert received[n].wait(5.0), "the follow-up ran before the answer was sent"
        ran.append(n)
        if n == 1:
            raise RuntimeError("render failed")

    rpc = RpcServer("127.0.0.1", 0, lambda request: Then([[1, request.msgid]], lambda: after(request.msgid)))
    rpc.start()
    try:
        with socket.create_connection(("127.0.0.1", rpc.port), timeout=10.0) as sock:
            unpacker = msgpack.Unpacker()
            for n in (1, 2):
                assert call(sock, unpacker, n, "tick_cue") == [1, n, None, [[1, n]]]
                received[n].set()
            deadline = time.monotonic() + 5.0
            while len(ran) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
    finally:
        rpc.close()
    assert ran == [1, 2]  # the connection went on after the first follow-up failed
    assert "the follow-up of a call failed" in caplog.text and "render failed" in caplog.text


def test_polling_for_the_next_request_returns_what_comes_within_the_window():
    from sim.carla_server.rpc import _poll_recv

    def poll(sock: socket.socket, spin_s: float) -> bytes | None:
        """_poll_recv in a thread, so a version that blocks fails here instead of hanging the run."""
        out = []
        worker = threading.Thread(target=lambda: out.append(_poll_recv(sock, spin_s)), daemon=True)
        worker.start()
        worker.join(spin_s + 5.0)
        assert out, "_poll_recv blocked"
        return out[0]

    a, b = socket.socketpair()
    with a, b:
        threading.Timer(0.002, lambda: b.sendall(b"next")).start()
        assert poll(a, 2.0) == b"next"
        t0 = time.perf_counter()
        assert poll(a, 0.01) is None and time.perf_counter() - t0 >= 0.01  # nothing: the caller blocks
        assert poll(a, 0.0) is None
        b.shutdown(socket.SHUT_WR)
        assert poll(a, 1.0) == b""  # the peer closed


def test_a_camera_destroyed_between_advance_and_capture_is_not_rendered(server, monkeypatch):
    world = server.world
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    cams = [world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(1.5, 0, 2.4, 0, 0, 0), car.id)
            for _ in range(2)]
    readers = [subscribe(server.streams, c.stream_id) for c in cams]
    rendered = []
    monkeypatch.setattr(type(world), "render", lambda self, shot: rendered.append(shot.camera.id) or
                        np.zeros((48, 64, 3), np.uint8))
    frame, shots = world.advance()
    assert sorted(s.camera.id for s in shots) == sorted(c.id for c in cams) and frame == world.frame
    world.destroy(cams[0].id)
    world.capture(shots)
    assert rendered == [cams[1].id]
    for r in readers:
        r.close()


def test_two_clients_ticking_at_once_get_every_image_once_and_in_frame_order(server):
    """The images of a step render after its answer; another client's step in between must not overtake them."""
    world = server.world
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    cam = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(1.5, 0, 2.4, 0, 0, 0), car.id)
    reader = subscribe(server.streams, cam.stream_id)
    world.apply_settings(EpisodeSettings(synchronous_mode=True, fixed_delta_seconds=0.05))
    first = world.frame

    def ticks(n: int) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10.0) as sock:
            unpacker = msgpack.Unpacker()
            for i in range(n):
                assert call(sock, unpacker, i, "tick_cue")[2] is None

    clients = [threading.Thread(target=ticks, args=(100,)) for _ in range(2)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(30.0)
    frames = [struct.unpack_from("<Q", read_message(reader), 8)[0] for _ in range(200)]
    assert frames == list(range(first + 1, first + 201)) and world.frame == first + 200
    reader.close()


def test_cameras_mount_anywhere_and_render_from_above_the_ground(server, monkeypatch, caplog):
    """CARLA takes any mount: one under a raised parent, one on a car at z=0, one moved below the ground all
    keep streaming; the embedded camera renders from at least LOW_CAMERA_RENDER_Z_M, said once per camera."""
    from sim.carla_server.world import LOW_CAMERA_RENDER_Z_M

    world = server.world
    world.set_transform(world.spectator.id, Transform(0.0, 0.0, 10.0, 0.0, 0.0, 0.0))
    hung = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(0, 0, -2.0, 0, 0, 0),
                       world.spectator.id)
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    low = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(1.0, 0, 0.0, 0, 0, 0), car.id)
    free = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(5.0, 1.0, 3.0, 0, 0, 0))
    readers = [subscribe(server.streams, c.stream_id) for c in (hung, low, free)]
    heights = {}
    monkeypatch.setattr(type(world), "render", lambda self, shot: heights.setdefault(shot.camera.id, []).append(
        shot.config.z_m) or np.zeros((48, 64, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="sim.carla_server.world"):
        world.tick()
        world.set_transform(free.id, Transform(5.0, 1.0, -1.0, 0, 0, 0))
        world.tick()
        world.tick()
    assert heights[hung.id] == [8.0] * 3 and heights[low.id] == [LOW_CAMERA_RENDER_Z_M] * 3
    assert heights[free.id] == [3.0, LOW_CAMERA_RENDER_Z_M, LOW_CAMERA_RENDER_Z_M]
    warnings = [r.getMessage() for r in caplog.records if "at or below the ground" in r.getMessage()]
    floor = f"it renders from z={LOW_CAMERA_RENDER_Z_M:.3f} m"
    assert sorted(warnings) == sorted([f"camera {low.id} is at z=0.000 m, at or below the ground: {floor}",
                                       f"camera {free.id} is at z=-1.000 m, at or below the ground: {floor}"])
    for r in readers:
        r.close()


def test_a_car_camera_moved_below_the_ground_or_just_above_it(server, monkeypatch):
    """set_transform on a car's camera: below the ground it renders from LOW_CAMERA_RENDER_Z_M; any height the
    embedded camera takes (over 5 cm) is kept exactly, so the image stays the embedded one."""
    from sim.carla_server.world import LOW_CAMERA_RENDER_Z_M

    world = server.world
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    cam = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(1.5, 0, 0.055, 0, 0, 0), car.id)
    reader = subscribe(server.streams, cam.stream_id)
    heights = []
    monkeypatch.setattr(type(world), "render", lambda self, shot: heights.append(shot.config.z_m) or
                        np.zeros((48, 64, 3), np.uint8))
    world.tick()
    x, y, _, _, yaw, _ = world.map.spawn_points[0]
    world.set_transform(cam.id, Transform(x, y, -0.5, 0.0, yaw, 0.0))  # a world pose under the car
    world.tick()
    assert heights == [0.055, LOW_CAMERA_RENDER_Z_M] and cam.parent == car.id
    reader.close()


def test_a_camera_rebuilt_again_and_again_is_named_in_the_log(server, caplog):
    from sim.carla_server.world import REBUILDS_TO_WARN

    world = server.world
    cam = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(5.0, 1.0, 3.0, 0, 0, 0))
    reader = subscribe(server.streams, cam.stream_id)
    with caplog.at_level(logging.WARNING, logger="sim.carla_server.world"):
        for k in range(REBUILDS_TO_WARN + 2):
            world.set_transform(cam.id, Transform(5.0, 1.0, 3.0 + 0.1 * k, 0, 0, 0))  # a new height each frame
            world.tick()
    rebuilt = [r.getMessage() for r in caplog.records if "rebuilds its renderer" in r.getMessage()]
    assert cam.builds == REBUILDS_TO_WARN + 2 and len(rebuilt) == 1
    assert rebuilt[0].startswith(f"camera {cam.id} changed its mount, height, pitch, roll or size "
                                 f"{REBUILDS_TO_WARN - 1} times")
    reader.close()


def test_simulate_physics_switches_a_car_and_is_taken_by_any_other_actor(server):
    world = server.world
    car = world.spawn(ActorDescription(1, "vehicle.tesla.model3"), Transform(*world.map.spawn_points[0]))
    cam = world.spawn(ActorDescription(2, "sensor.camera.rgb", CAMERA), Transform(1.5, 0, 2.4, 0, 0, 0), car.id)
    world.set_target_velocity(car.id, (5.0, 0.0, 0.0))
    world.set_simulate_physics(car.id, False)
    assert car.physics is False and car.state.speed_mps == 0.0
    for actor in (cam, world.spectator):
        world.set_simulate_physics(actor.id, False)  # as in CARLA: accepted, and nothing to switch here
    with pytest.raises(UsageError, match="is not an actor of this world"):
        world.set_simulate_physics(9999, False)
    with pytest.raises(UsageError, match=f"^actor {cam.id} is a sensor.camera.rgb, not a vehicle$"):
        world.apply_control(cam.id, VehicleControl(throttle=1.0))
