"""A syslog collector for the tests: RFC 5425 (TLS, octet-counted frames) with Python's ssl, or RFC 5426 (UDP),
on a loopback port, keeping every message it gets."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path


class SyslogCollector:
    def __init__(self, port: int, *, transport: str = "tls", cert: Path | None = None, key: Path | None = None,
                 client_ca: Path | None = None) -> None:
        self.port = port
        self.transport = transport
        self.messages: list[bytes] = []
        self.handshake_failures = 0
        self._context: ssl.SSLContext | None = None
        if transport == "tls":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(cert), str(key))
            if client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(str(client_ca))
            self._context = context
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> SyslogCollector:
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        if self.transport != "udp":
            self._sock.listen(8)
        target = self._receive_datagrams if self.transport == "udp" else self._accept
        self._spawn(target)
        return self

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_failures += 1
            conn.close()
            return
        buffer = b""
        with tls:
            while not self._stopping.is_set():
                try:
                    chunk = tls.recv(65536)
                except TimeoutError:
                    continue
                except (ssl.SSLError, OSError):
                    return
                if not chunk:
                    return
                buffer += chunk
                buffer = self._frames(buffer)

    def _frames(self, buffer: bytes) -> bytes:
        while b" " in buffer:
            length, rest = buffer.split(b" ", 1)
            size = int(length)
            if len(rest) < size:
                break
            with self._lock:
                self.messages.append(rest[:size])
            buffer = rest[size:]
        return buffer

    def _receive_datagrams(self) -> None:
        while not self._stopping.is_set():
            try:
                data, _ = self._sock.recvfrom(70000)
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.messages.append(data)

    def received(self) -> list[bytes]:
        with self._lock:
            return list(self.messages)

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            self._sock.close()
        for thread in self._threads:
            thread.join(5)
