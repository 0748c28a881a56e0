"""The RPC transport of ``caril serve``: rpclib-compatible msgpack-rpc over TCP.

One thread per client connection reads a stream of msgpack requests (no length prefix) and answers each in
turn with the handler's result; a handler that raises is answered with an error the client raises as
``RuntimeError``, so no call ever leaves a client waiting. Fire-and-forget calls (CARLA's ``AsyncCall``)
are ordinary requests too and get an answer, which the client discards. A handler may return :class:`Then`:
its result is answered at once and its follow-up runs after (a synchronous tick renders its images there).

After each answer the connection thread polls for the next request for up to ``spin_s`` before it blocks:
a synchronous client's next call (its control and tick) usually comes within a millisecond, and waking a
blocked thread costs about 50 us on a small virtual machine, a twentieth of a 448x448 served tick (measured
with ``caril bench serve``). CARLA's own client spins the same way while it waits for a tick's state.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from sim.carla_server.encoding import Request, decode_request, encode_response, encode_rpc_error, response_error

log = logging.getLogger(__name__)

RECV_BYTES = 1 << 16
SPIN_S = 0.002  # how long a connection thread polls for the next request before it blocks
# what a stream of bytes that is not msgpack raises from the unpacker: BufferFull, FormatError, StackError,
# ExtraData, UnicodeDecodeError (a str that is not UTF-8)
MALFORMED = (msgpack.exceptions.UnpackException, ValueError)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", None)  # not on Windows: there the thread blocks at once


Handler = Callable[[Request], Any]


@dataclass(frozen=True)
class Then:
    """A handler's ``result``, answered at once, and ``after()``, run once the answer is on the wire and
    before the connection reads its next request (it runs even if the answer could not be sent)."""

    result: Any
    after: Callable[[], None]


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(16)
    return sock


class RpcServer:
    """Serves ``handler(request) -> result`` on ``host:port``; ``result`` is the msgpack-ready answer."""

    def __init__(self, host: str, port: int, handler: Handler, spin_s: float = SPIN_S) -> None:
        self.handler = handler
        self.spin_s = spin_s
        self._sock = listen(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="carla-rpc-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and drop every connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = list(self._connections)
        _shutdown(self._sock)
        for conn in connections:
            _shutdown(conn)
        if self._thread.ident is not None:
            self._thread.join(timeout=2.0)

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    _shutdown(conn)
                    return
                self._connections.add(conn)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("client connected from %s:%s", *peer[:2])
            threading.Thread(target=self._serve, args=(conn, f"{peer[0]}:{peer[1]}"), name=f"carla-rpc-{peer[1]}",
                             daemon=True).start()

    def _serve(self, conn: socket.socket, peer: str = "?") -> None:
        """Answer ``conn``'s requests until it hangs up; bytes that are not a CARLA client's msgpack end the
        connection with one warning naming the peer and the reason (the server goes on)."""
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        try:
            while True:
                data = _poll_recv(conn, self.spin_s) or conn.recv(RECV_BYTES)
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    answer, after = self._answer(message)
                    try:
                        conn.sendall(answer)
                    finally:
                        _run(after)
        except OSError:
            return
        except MALFORMED as e:
            log.warning("dropped the connection from %s: not a CARLA 0.9.16 client's requests (%s: %s)", peer,
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "no detail")
        finally:
            with self._lock:
                self._connections.discard(conn)
            _shutdown(conn)
            log.info("client disconnected")

    def _answer(self, message: Any) -> tuple[bytes, Callable[[], None] | None]:
        """The encoded answer to one request, and the follow-up to run once it is sent (or None)."""
        try:
            request = decode_request(message)
        except ValueError as e:
            msgid = message[1] if isinstance(message, list) and len(message) > 1 else 0
            return encode_rpc_error(msgid if isinstance(msgid, int) else 0, str(e)), None
        log.debug("call %s %.200r", request.name, request.args)
        after = None
        try:
            result = self.handler(request)
            if isinstance(result, Then):
                result, after = result.result, result.after
            return encode_response(request.msgid, result), after
        except Exception as e:  # every failure becomes the client's RuntimeError, never a silent hang
            log.exception("call %s failed", request.name)
            return encode_response(request.msgid, response_error(f"caril serve: {request.name} failed: {e}")), after


def _run(after: Callable[[], None] | None) -> None:
    """Run a handler's follow-up; its failure is logged (the client already has its answer)."""
    if after is None:
        return
    try:
        after()
    except Exception:
        log.exception("the follow-up of a call failed")


def _poll_recv(conn: socket.socket, spin_s: float) -> bytes | None:
    """What ``conn`` receives within ``spin_s`` seconds of polling without blocking (b"" if the peer closed);
    None if nothing came (the caller then blocks)."""
    if spin_s <= 0 or _DONTWAIT is None:
        return None
    end = time.perf_counter() + spin_s
    while True:
        try:
            return conn.recv(RECV_BYTES, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            if time.perf_counter() >= end:
                return None


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
