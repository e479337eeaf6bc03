"""The running gateway: wires the configuration, database, spool and SCP together, and stops them cleanly."""

from __future__ import annotations

import signal
import threading

import structlog

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.models import SCHEMA_VERSION, Source, db, open_database, sync_sources
from gateway.ops.http import HttpServer, standard_health_checks
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.server import start_scp
from gateway.scp.spool import Spool

log = structlog.get_logger("node")


class GatewayNode:
    """One gateway process. ``start()`` returns once the SCP is listening."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.spool = Spool(config.storage.spool_dir, config.storage.min_free_bytes)
        self.server = None
        self.http: HttpServer | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        open_database(self.config.storage.database, max_connections=self.config.node.max_associations + 8)
        sync_sources([(s.name, s.ae_title) for s in self.config.sources])
        with db.connection_context():
            source_ids = {row.ae_title: row.id for row in Source.select()}
        removed = self.spool.prepare()
        if removed:
            log.warning("spool_partial_files_removed", count=removed)
        handlers = ScpHandlers(AssociationPolicy(self.config), InstanceReceiver(self.spool, source_ids))
        self.server = start_scp(self.config.node, handlers)
        if self.config.http.enabled:
            checks = standard_health_checks(db, lambda: self.server is not None, self.config.storage.spool_dir,
                                            self.config.storage.min_free_bytes)
            self.http = HttpServer(self.config.http, checks)
            self.http.start()
        log.info("gateway_started", ae_title=self.config.node.ae_title, port=self.config.node.port,
                 version=__version__, to_version=SCHEMA_VERSION, tls=self.config.node.tls.enabled)

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())
        self.start()
        try:
            self._stop.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if not db.is_closed():
            db.close()
        log.info("gateway_stopped")
