"""The RPC transport of ``caril serve``: rpclib-compatible msgpack-rpc over TCP.

One thread per client connection reads a stream of msgpack requests (no length prefix) and answers each in
turn with the handler's result; a handler that raises is answered with an error the client raises as
``RuntimeError``, so no call ever leaves a client waiting. Fire-and-forget calls (CARLA's ``AsyncCall``)
are ordinary requests too and get an answer, which the client discards.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from sim.carla_server.encoding import Request, decode_request, encode_response, encode_rpc_error, response_error

log = logging.getLogger(__name__)

RECV_BYTES = 1 << 16


Handler = Callable[[Request], Any]


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

    def __init__(self, host: str, port: int, handler: Handler) -> None:
        self.handler = handler
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
            threading.Thread(target=self._serve, args=(conn,), name=f"carla-rpc-{peer[1]}", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        try:
            while True:
                data = conn.recv(RECV_BYTES)
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    conn.sendall(self._answer(message))
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(conn)
            _shutdown(conn)
            log.info("client disconnected")

    def _answer(self, message: Any) -> bytes:
        try:
            request = decode_request(message)
        except ValueError as e:
            msgid = message[1] if isinstance(message, list) and len(message) > 1 else 0
            return encode_rpc_error(msgid if isinstance(msgid, int) else 0, str(e))
        log.debug("call %s %.200r", request.name, request.args)
        try:
            return encode_response(request.msgid, self.handler(request))
        except Exception as e:  # every failure becomes the client's RuntimeError, never a silent hang
            log.exception("call %s failed", request.name)
            return encode_response(request.msgid, response_error(f"caril serve: {request.name} failed: {e}"))


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
