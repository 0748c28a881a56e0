"""The stream server of ``caril serve``: world state and sensor data to subscribed clients.

A client opens one TCP connection per stream it subscribes to, writes the stream id (u32 little-endian)
and from then on only reads messages framed as ``u32 length | payload``; closing the connection is how it
unsubscribes (``sensor.stop()``). :meth:`StreamServer.publish` writes one message to every subscriber of a
stream from the caller's thread with one non-blocking ``sendmsg`` (no hand-off: a message is normally on
the wire when ``publish`` returns). A subscriber that reads slowly never holds up the world or other clients,
as in CARLA: what its socket cannot take now waits in its backlog, which a writer thread of its own drains;
past :data:`MAX_BACKLOG_BYTES` new messages for it are dropped (with a warning) once it holds at least
:data:`MIN_BACKLOG_MESSAGES` (so frames larger than the bound, 4096x4096 BGRA is 64 MiB, still queue), and
one that reads nothing for :data:`SEND_TIMEOUT_S` is disconnected.

Subscribing races with ticking (data sent before the connection lands is lost, as in CARLA). Tokens handed
out by ``get_sensor_token`` are remembered as pending until their connection arrives, and
:meth:`StreamServer.wait_for_pending` lets a synchronous tick wait for them (bounded), so the first frame
after ``listen()`` is not lost.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from sim.carla_server.encoding import STREAM_LENGTH
from sim.carla_server.rpc import _shutdown, listen

try:  # the send-queue size of a socket (Linux, macOS); without it a slow reader's progress is not seen
    import fcntl
    import termios
except ImportError:  # pragma: no cover - Windows
    fcntl = termios = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 5.0
DRAIN_POLL_S = 0.25  # how often a writer waiting on a slow reader checks its progress
HELLO_TIMEOUT_S = 5.0
HANGUP_POLL_S = 1.0  # how often a subscriber's hang-up watch looks at whether the server is closing
SEND_BUFFER_BYTES = 8 << 20
MAX_BACKLOG_BYTES = 64 << 20  # per subscriber: about 80 frames of 448x448 BGRA waiting for a slow reader ...
MIN_BACKLOG_MESSAGES = 3  # ... or this many messages whatever their size: the bound per subscriber is the larger
# of MAX_BACKLOG_BYTES and three of its largest messages (192 MiB at 4096x4096)


class _Subscriber:
    """One subscription's non-blocking socket, and the messages (or the rest of one) it has not taken yet."""

    def __init__(self, sock: socket.socket, stream_id: int) -> None:
        self.sock, self.stream_id = sock, stream_id
        self.lock = threading.Lock()
        self.alive = True
        self.backlog: deque[list[memoryview]] = deque()  # unsent views of whole messages, oldest first
        self.backlog_bytes = 0
        self.dropped = 0

    def send(self, parts: tuple[bytes | memoryview, ...]) -> str:
        """Frame and send one message; what the socket cannot take now goes to the backlog, drained by a
        writer thread. Returns ``"sent"``, ``"queued"``, ``"dropped"`` (the backlog is full) or ``"dead"``
        (the socket has failed)."""
        body = [memoryview(p).cast("B") for p in parts]
        size = sum(v.nbytes for v in body)
        views = [memoryview(STREAM_LENGTH.pack(size)), *body]
        with self.lock:
            if not self.alive:
                return "dead"
            if self.backlog:  # a writer is draining: queue behind it, in order
                return self._queue(views, size)
            try:
                views = _send_some(self.sock, views)
            except OSError:
                self.alive = False
                return "dead"
            if not views:
                return "sent"
            self._queue(views, sum(v.nbytes for v in views), always=True)  # a message begun must end
            threading.Thread(target=self._drain, name=f"carla-stream-{self.stream_id}-writer", daemon=True).start()
            return "queued"

    def _queue(self, views: list[memoryview], size: int, always: bool = False) -> str:
        if not always and self.backlog_bytes + size > MAX_BACKLOG_BYTES and len(self.backlog) >= MIN_BACKLOG_MESSAGES:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("stream %d: its reader is %.0f MB behind; %d messages dropped so far", self.stream_id,
                            self.backlog_bytes / 1e6, self.dropped)
            return "dropped"
        self.backlog.append(views)
        self.backlog_bytes += size
        return "queued"

    def _drain(self) -> None:
        """Send the backlog as the socket takes it. A reader is disconnected only when nothing has left the
        socket for SEND_TIMEOUT_S: a slow reader empties the kernel's queue a little at a time (which does not
        make the socket writable), so the deadline restarts whenever that queue shrinks."""
        with selectors.DefaultSelector() as poller:  # poll/epoll here, select on Windows
            poller.register(self.sock, selectors.EVENT_WRITE)
            if self._drain_with(poller):
                return
        with self.lock:
            self.alive = False
            self.backlog.clear()
        _shutdown(self.sock)

    def _drain_with(self, poller: selectors.BaseSelector) -> bool:
        """The drain loop; True when the backlog is sent (or the subscriber was dropped elsewhere), False
        when this reader is to be disconnected."""
        deadline, unsent = time.monotonic() + SEND_TIMEOUT_S, _unsent_bytes(self.sock)
        while True:
            if not poller.select(DRAIN_POLL_S):
                now_unsent = _unsent_bytes(self.sock)
                if now_unsent is not None and unsent is not None and now_unsent < unsent:
                    deadline = time.monotonic() + SEND_TIMEOUT_S
                unsent = now_unsent
                if time.monotonic() < deadline:
                    continue
                log.warning("stream %d: its reader took nothing for %g s; disconnected", self.stream_id,
                            SEND_TIMEOUT_S)
                return False
            with self.lock:
                if not self.alive or not self.backlog:
                    return True
                head = self.backlog[0]
                before = sum(v.nbytes for v in head)
                try:
                    rest = _send_some(self.sock, head)
                except OSError:
                    return False
                self.backlog_bytes -= before - sum(v.nbytes for v in rest)
                if rest:
                    self.backlog[0] = rest
                else:
                    self.backlog.popleft()
                    if not self.backlog:
                        return True
            deadline, unsent = time.monotonic() + SEND_TIMEOUT_S, _unsent_bytes(self.sock)


def _unsent_bytes(sock: socket.socket) -> int | None:
    """Bytes in the socket's send queue not yet taken by the reader (Linux's SIOCOUTQ; None elsewhere)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, AttributeError, ValueError):
        return None


def _send_some(sock: socket.socket, views: list[memoryview]) -> list[memoryview]:
    """Send as much of ``views`` as the non-blocking socket takes now; returns the unsent rest (empty: all)."""
    views = list(views)
    while views:
        try:
            sent = sock.sendmsg(views)
        except BlockingIOError:
            return views
        while sent and views:
            if sent >= views[0].nbytes:
                sent -= views.pop(0).nbytes
            else:
                views[0], sent = views[0][sent:], 0
    return views


class StreamServer:
    """Accepts stream subscriptions on ``host:port`` and publishes framed messages to them.

    ``on_subscribe(stream_id, send)`` is called for every new subscriber with a function that sends a
    message to that subscriber only (the world uses it to hand a new episode subscriber the latest state).
    """

    def __init__(self, host: str, port: int,
                 on_subscribe: Callable[[int, Callable[..., str]], None] | None = None) -> None:
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
        many it was sent to or queued for (a subscriber whose backlog is full drops it)."""
        with self._changed:
            subs = list(self._subscribers.get(stream_id, ()))
        delivered = 0
        for sub in subs:
            result = sub.send(parts)
            delivered += result in ("sent", "queued")
            if result == "dead":
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
        conn.setblocking(False)  # publish never waits on a reader: see _Subscriber
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
        with selectors.DefaultSelector() as poller:
            poller.register(sub.sock, selectors.EVENT_READ)
            while sub.alive:
                try:
                    if poller.select(HANGUP_POLL_S) and not sub.sock.recv(64):
                        break
                except BlockingIOError:
                    continue
                except (OSError, ValueError):  # closed under us (a ValueError from the selector on Windows)
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
