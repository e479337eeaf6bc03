"""Serving an ASGI application with uvicorn in a daemon thread: the listening socket, start, stop, the port.

The limits below the application (issue 28) are set here: the size of a request head (:data:`MAX_HEAD_BYTES`),
the deadlines for the head and the body and the connections per client address
(:func:`gateway.http.limits.guarded_protocol`), the idle time of a kept-alive connection and the node's
connections in all (``http.max_connections``; uvicorn answers 503 beyond).
"""

from __future__ import annotations

import socket
import threading

import structlog
import uvicorn
from starlette.types import ASGIApp

from gateway.config import HttpConfig
from gateway.http.limits import ClientConnections, ConnectionLimits, guarded_protocol

log = structlog.get_logger("http")
MAX_HEAD_BYTES = 16 * 1024  # request line and headers together (h11 answers 400 beyond, ours 431)
STOP_WAIT_S = 30
START_WAIT_S = 10


class HttpServer:
    """``app`` over HTTP where ``config`` says. ``start()`` returns once serving; ``stop()`` is idempotent.

    Args:
        config: where to listen, and the limits of the protocol layer (deadlines, connections).
        app: the application (:func:`gateway.http.app.build_application`).
    """

    def __init__(self, config: HttpConfig, app: ASGIApp) -> None:
        if not isinstance(config, HttpConfig):
            raise TypeError("config must be an HttpConfig")
        self.config = config
        self.app = app
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.clients = ClientConnections(config.max_connections_per_client)

    def open_connections(self) -> int:
        """HTTP connections open now (any thread may ask)."""
        return self.clients.total

    @property
    def port(self) -> int:
        """The bound port (the real one when ``config.port`` is 0).

        Raises:
            RuntimeError: the server is not started.
        """
        if self._socket is None:
            raise RuntimeError("the HTTP server is not started")
        return int(self._socket.getsockname()[1])

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: the server did not start serving within :data:`START_WAIT_S`.
        """
        if self._server is not None:
            return
        self._socket = listening_socket(self.config.host, self.config.port)
        server = uvicorn.Server(self._uvicorn_config())
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self._socket]}, name="http-server",
                                        daemon=True)
        self._thread.start()
        waited = threading.Event()
        for _ in range(int(START_WAIT_S / 0.05)):
            if server.started or not self._thread.is_alive():
                break
            waited.wait(0.05)
        if not server.started:
            self.stop()
            raise RuntimeError("the HTTP server did not start")
        log.info("http_started", port=self.port, component="http")

    def _uvicorn_config(self) -> uvicorn.Config:
        config = self.config
        limits = ConnectionLimits(config.request_header_timeout_s, config.request_body_timeout_s,
                                  config.max_connections_per_client, MAX_HEAD_BYTES)
        return uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", server_header=False, date_header=True,
            http=guarded_protocol(limits, self.clients),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES, timeout_keep_alive=config.keep_alive_s,
            proxy_headers=False, limit_concurrency=config.max_connections,
            # No WebSocket is served. With uvicorn's default (``auto``: wsproto is installed) an upgrade request
            # handed the connection to a WebSocket protocol, whose end never gave the client's slot back: 32
            # upgrade requests from one address (or through the TLS proxy, from everyone) locked it out.
            ws="none")

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        self._socket = None
        self._thread = None


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket for ``host:port`` (IPv6 when ``host`` has a colon), inheritable.

    Raises:
        OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
