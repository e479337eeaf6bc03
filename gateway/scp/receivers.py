"""The node's receiving processes (``node.receiving_processes``): started, heard and restarted by the node.

Each is a ``gateway.scp.receiving_process`` accepting on the node's own listening socket; see that module for
what it does and why. Each writes its own events to the node's log; the node reads each one's pipe in a thread
of its own: metrics go to its ``/metrics``, wake-ups to its stages. A receiving process that exits while the
node runs is logged (``receiver_exited``) and started again after a pause that grows while it keeps failing;
the instances it had acknowledged are on disk and in the database, and the ones it had not are sent again by
their senders.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from gateway.backoff import Backoff
from gateway.config import GatewayConfig
from gateway.scp.receiving_process import FORWARDED_METRICS, process_name, resolved_count
from gateway.scp.slots import AssociationSlots
from gateway.stages.context import NodeContext

log = structlog.get_logger("scp")

RESTART_BACKOFF_S = (1.0, 30.0)  # first and longest pause before a receiving process that exited starts again
RESTART_BACKOFF = Backoff(*RESTART_BACKOFF_S)
STOP_TIMEOUT_S = 10.0            # a receiving process told to stop is killed after this long


@dataclass
class _Receiver:
    number: int
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    failures: int = 0
    started_at: float = field(default_factory=time.monotonic)


class ReceivingProcesses:
    """Starts ``node.receiving_processes`` receiving processes on ``listening`` (the node's bound socket) and keeps
    them running until :meth:`stop`. What they send up the pipe goes to the node's ``context``: their metrics
    to its metrics, their wake-ups to its hub (and timers)."""

    def __init__(self, config: GatewayConfig, listening_fd: int, slots: AssociationSlots,
                 context: NodeContext) -> None:
        self.config = config
        self.listening_fd = listening_fd
        self.slots = slots
        self.context = context
        self.node_id = context.node_id
        self._forwarded: dict[str, Callable[..., None]] = {
            name: getattr(context.metrics, name) for name in FORWARDED_METRICS}
        self._config_json = config.model_dump_json(by_alias=True)
        self._stopping = threading.Event()
        self._receivers = [_Receiver(n) for n in range(1, resolved_count(config.node.receiving_processes) + 1)]

    def pids(self) -> list[int]:
        return [r.process.pid for r in self._receivers if r.process is not None and r.process.poll() is None]

    def start(self) -> ReceivingProcesses:
        for receiver in self._receivers:
            self._spawn(receiver)
        return self

    def stop(self) -> None:
        """Close every receiving process's standard input (it stops taking connections and exits); kill what
        is still running after ``STOP_TIMEOUT_S``."""
        self._stopping.set()
        for receiver in self._receivers:
            if receiver.process is not None and receiver.process.stdin is not None:
                try:
                    receiver.process.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for receiver in self._receivers:
            process = receiver.process
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for receiver in self._receivers:
            if receiver.reader is not None:
                receiver.reader.join(5)

    def _spawn(self, receiver: _Receiver) -> None:
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.scp.receiving_process", str(os.getpid()), str(self.listening_fd),
                 str(write_end), str(self.slots.fileno()), str(receiver.number), self.node_id],
                stdin=subprocess.PIPE, pass_fds=(self.listening_fd, write_end, self.slots.fileno()), close_fds=True)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        receiver.process, receiver.started_at = process, time.monotonic()
        try:
            assert process.stdin is not None
            process.stdin.write(self._config_json.encode("utf-8") + b"\n")
            process.stdin.flush()
        except OSError:
            pass  # it died at once: its pipe closes, and _hear reports it and starts it again
        receiver.reader = threading.Thread(target=self._hear, args=(receiver, read_end),
                                           name=f"{process_name(receiver.number)}-pipe", daemon=True)
        receiver.reader.start()
        self.context.metrics.receiving_processes(len(self.pids()))

    def _hear(self, receiver: _Receiver, read_end: int) -> None:
        """Read one receiving process's pipe until it closes, then restart the process unless the node stops."""
        with open(read_end, "rb", buffering=65536) as pipe:
            for line in pipe:
                self._handle(receiver, line)
        process = receiver.process
        code = process.wait() if process is not None else None
        self.slots.empty(receiver.number)  # its associations ended with it
        if self._stopping.is_set():
            return
        self.context.metrics.receiving_processes(len(self.pids()), exited=True)
        self._restart_after_exit(receiver, code)

    def _restart_after_exit(self, receiver: _Receiver, code: int | None) -> None:
        """Start it again after a pause that doubles (up to RESTART_BACKOFF_S[1]) while it keeps exiting early."""
        ran_long = time.monotonic() - receiver.started_at > RESTART_BACKOFF_S[1]
        receiver.failures = 1 if ran_long else receiver.failures + 1
        log.error("receiver_exited", component=process_name(receiver.number), status=code,
                  reason=f"starting it again in {self._pause(receiver):g} s")
        while not self._stopping.wait(self._pause(receiver)):
            try:
                self._spawn(receiver)
                return
            except OSError as exc:
                receiver.failures += 1
                log.error("receiver_not_started", component=process_name(receiver.number), error=str(exc),
                          reason=f"trying again in {self._pause(receiver):g} s")

    @staticmethod
    def _pause(receiver: _Receiver) -> float:
        return RESTART_BACKOFF.wait_s(receiver.failures)

    def _handle(self, receiver: _Receiver, line: bytes) -> None:
        try:
            message = json.loads(line)
            if "metrics" in message:
                for name, args in message["metrics"]:
                    self._forwarded[name](*args)
            elif "wake" in message:
                if self.context.wakeups is not None:
                    self.context.wakeups.deliver(str(message["wake"]))
            elif "wake_at" in message:
                topic, when = message["wake_at"]
                self.context.wake_at(str(topic), dt.datetime.fromisoformat(when))
        except Exception as exc:  # noqa: BLE001 - one bad line never stops the node hearing the process
            log.warning("receiver_message_unreadable", component=process_name(receiver.number),
                        error=type(exc).__name__)
