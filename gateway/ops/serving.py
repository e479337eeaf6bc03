"""Running a standard-library socket server in a daemon thread, and stopping it (the MLLP listener, gateway.mllp)."""

from __future__ import annotations

import socketserver
import threading


def serve_in_thread(server: socketserver.BaseServer, name: str) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True)
    thread.start()
    return thread


def stop_serving(server: socketserver.BaseServer, thread: threading.Thread | None) -> None:
    """Stop the loop, close the socket, wait for the thread."""
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join()
