"""A WebSocket upgrade request does not keep its client's connection slot: the node serves no WebSocket, so the
request is answered as plain HTTP and its connection, once closed, frees the slot (before, uvicorn handed it to a
WebSocket protocol that never gave the slot back, and ``max_connections_per_client`` upgrade requests locked the
address out for good)."""

from __future__ import annotations

import socket

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.config import HttpConfig
from gateway.http.server import HttpServer

UPGRADE = (b"GET / HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
PLAIN = b"GET / HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"


def _exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` (which asks the server to close after its answer) and read until the server has closed the
    connection: by then it has ended the connection's protocol (the same callback of its one event loop)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


def test_upgrade_requests_do_not_use_up_the_clients_connections():
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    server = HttpServer(HttpConfig(port=0, max_connections_per_client=2), app)
    server.start()
    try:
        for _ in range(4):
            _exchange(server.port, UPGRADE)
        assert _exchange(server.port, PLAIN).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()
