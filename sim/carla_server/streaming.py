"""The stream server of ``caril serve``: world state and sensor data to subscribed clients.

A client opens one TCP connection per stream it subscribes to, writes the stream id (u32 little-endian)
and from then on only reads messages framed as ``u32 length | payload``; closing the connection is how it
unsubscribes (``sensor.stop()``). :meth:`StreamServer.publish` writes one message to every subscriber of a
stream from the caller's thread (no hand-off: a tick's data is on the wire when ``tick`` returns); a
subscriber that stops reading for :data:`SEND_TIMEOUT_S` is dropped.

Subscribing races with ticking (data sent before the connection lands is lost, as in CARLA). Tokens handed
out by ``get_sensor_token`` are remembered as pending until their connection arrives, and
:meth:`StreamServer.wait_for_pending` lets a synchronous tick wait for them (bounded), so the first frame
after ``listen()`` is not lost.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from sim.carla_server.encoding import STREAM_LENGTH
from sim.carla_server.rpc import _shutdown, listen

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 5.0
HELLO_TIMEOUT_S = 5.0
SEND_BUFFER_BYTES = 8 << 20


class _Subscriber:
    def __init__(self, sock: socket.socket, stream_id: int) -> None:
        self.sock, self.stream_id = sock, stream_id
        self.lock = threading.Lock()
        self.alive = True

    def send(self, parts: tuple[bytes | memoryview, ...]) -> bool:
        """Write one framed message; False (and the subscriber is dead) when the socket fails."""
        body = [memoryview(p).cast("B") for p in parts]
        views = [memoryview(STREAM_LENGTH.pack(sum(v.nbytes for v in body))), *body]
        with self.lock:
            if not self.alive:
                return False
            try:
                while views:
                    sent = self.sock.sendmsg(views)
                    while sent and views:
                        if sent >= len(views[0]):
                            sent -= len(views.pop(0))
                        else:
                            views[0], sent = views[0][sent:], 0
            except OSError:
                self.alive = False
                return False
        return True


class StreamServer:
    """Accepts stream subscriptions on ``host:port`` and publishes framed messages to them.

    ``on_subscribe(stream_id, send)`` is called for every new subscriber with a function that sends a
    message to that subscriber only (the world uses it to hand a new episode subscriber the latest state).
    """

    def __init__(self, host: str, port: int,
                 on_subscribe: Callable[[int, Callable[..., bool]], None] | None = None) -> None:
        self._sock = listen(host, port)
        self.port = self._sock.getsockname()[1]
        self.on_subscribe = on_subscribe
        self._subscribers: dict[int, list[_Subscriber]] = {}
        self._pending: dict[int, float] = {}
        self._changed = threading.Condition()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="carla-stream-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            sockets = list(self._sockets)
            self._changed.notify_all()
        _shutdown(self._sock)
        for s in sockets:
            _shutdown(s)
        if self._thread.ident is not None:
            self._thread.join(timeout=2.0)

    # -- subscriptions --------------------------------------------------------------------------------------
    def expect(self, stream_id: int) -> None:
        """A token for ``stream_id`` was handed out: its connection is pending until it arrives."""
        with self._changed:
            self._pending[stream_id] = time.monotonic()

    def subscribers(self, stream_id: int) -> int:
        with self._changed:
            return sum(s.alive for s in self._subscribers.get(stream_id, ()))

    def wait_for_pending(self, timeout_s: float) -> bool:
        """Wait until every pending stream has connected; after ``timeout_s`` give up on the stragglers (a
        client that asked for a token and never connected) and return False."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._pending and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("streams %s were never subscribed; ticking without them", sorted(self._pending))
                    self._pending.clear()
                    return False
                self._changed.wait(left)
        return True

    def drop_stream(self, stream_id: int) -> None:
        """Close every subscription of a stream (its sensor was destroyed)."""
        with self._changed:
            subs = self._subscribers.pop(stream_id, [])
            self._pending.pop(stream_id, None)
        for sub in subs:
            sub.alive = False
            _shutdown(sub.sock)

    # -- publishing -----------------------------------------------------------------------------------------
    def publish(self, stream_id: int, *parts: bytes | memoryview) -> int:
        """Send one message (the concatenated ``parts``) to every subscriber of ``stream_id``; returns how
        many received it."""
        with self._changed:
            subs = list(self._subscribers.get(stream_id, ()))
        delivered = 0
        for sub in subs:
            if sub.send(parts):
                delivered += 1
            else:
                self._forget(sub)
        return delivered

    # -- internals ------------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hello, args=(conn,), name="carla-stream", daemon=True).start()

    def _hello(self, conn: socket.socket) -> None:
        """Read the stream id, register the subscriber, then wait for the client to hang up."""
        with self._changed:
            if self._closed:
                _shutdown(conn)
                return
            self._sockets.add(conn)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        conn.settimeout(HELLO_TIMEOUT_S)
        try:
            data = b""
            while len(data) < 4:
                chunk = conn.recv(4 - len(data))
                if not chunk:
                    raise OSError("closed before naming a stream")
                data += chunk
        except OSError:
            self._close_socket(conn)
            return
        stream_id = STREAM_LENGTH.unpack(data)[0]
        conn.settimeout(SEND_TIMEOUT_S)
        sub = _Subscriber(conn, stream_id)
        with self._changed:
            self._subscribers.setdefault(stream_id, []).append(sub)
            self._pending.pop(stream_id, None)
            self._changed.notify_all()
        log.debug("stream %d subscribed", stream_id)
        if self.on_subscribe is not None:
            self.on_subscribe(stream_id, lambda *parts: sub.send(parts))
        self._wait_hangup(sub)

    def _wait_hangup(self, sub: _Subscriber) -> None:
        while sub.alive:
            try:
                if not sub.sock.recv(64):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        sub.alive = False
        self._forget(sub)

    def _forget(self, sub: _Subscriber) -> None:
        with self._changed:
            subs = self._subscribers.get(sub.stream_id, [])
            if sub in subs:
                subs.remove(sub)
                log.debug("stream %d unsubscribed", sub.stream_id)
        self._close_socket(sub.sock)

    def _close_socket(self, conn: socket.socket) -> None:
        with self._changed:
            self._sockets.discard(conn)
        _shutdown(conn)
