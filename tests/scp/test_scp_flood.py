"""What a flood from another client costs the node (issue 28: a legitimate source's study took 3 s instead of 0.1 s
during bench/hostile.py's flood of short associations, 8.5 s during its sign-in flood). Only an association that
stored instances wakes the completion stage when it ends (each C-ECHO association woke it, and its queries ran the
whole flood); the accepting loop's full garbage collections are bounded in time, not one per 60 connections; the
node's open HTTP connections count as its work when it and its receiving processes share the DICOM port, so that
during an HTTP flood they, not the node's busy threads, take the associations."""

from __future__ import annotations

import datetime as dt
import gc
import os
import socket
import time

import pytest
from starlette.applications import Starlette

from gateway.config import GatewayConfig, HttpConfig
from gateway.dicom import status
from gateway.http.server import HttpServer
from gateway.ops.metrics import GatewayMetrics
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.server import FULL_COLLECTION_EVERY_S, start_scp
from gateway.scp.slots import AssociationSlots
from gateway.stages.context import NodeContext
from gateway.storage import cases, wakeup
from gateway.storage.models import open_database
from gateway.storage.spool import Spool
from support.peers import free_port, wait_until
from support.scu import associate


def _config() -> GatewayConfig:
    return GatewayConfig.model_validate({"node": {"host": "127.0.0.1", "port": free_port()},
                                         "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}]})


def _spool(tmp_path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    return spool


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_only_an_association_that_stored_instances_wakes_completion(tmp_path, database_url, small_study):
    config = _config()
    database = open_database(database_url, max_connections=8)
    spool = _spool(tmp_path)
    hub = wakeup.Wakeups("wake-test", database)
    woken: list[str] = []
    hub.subscribe({wakeup.INSTANCES}, lambda: woken.append(wakeup.INSTANCES))
    context = NodeContext(database, cases.LeaseOwner("wake-test", dt.timedelta(seconds=45)), hub,
                          GatewayMetrics(database))
    handlers = ScpHandlers(AssociationPolicy(config), InstanceReceiver(spool, {}, "wake-test"), context=context)
    server = start_scp(config.node, handlers)
    try:
        for _ in range(5):
            echoing = associate(config.node.port, calling="STMARYS_PACS")
            assert echoing.send_c_echo().Status == status.SUCCESS
            echoing.release()
        storing = associate(config.node.port, calling="STMARYS_PACS")
        assert storing.send_c_store(small_study[0]).Status == status.SUCCESS
        storing.release()
        wait_until(lambda: woken, 30, "the storing association's end to wake completion")
        wait_until(lambda: not handlers._associations, 30, "every association closed")
        assert woken == [wakeup.INSTANCES], "the five C-ECHO associations woke nothing"
    finally:
        server.shutdown()
        database.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_burst_of_connections_makes_at_most_one_full_collection_per_interval(tmp_path, database_url,
                                                                              monkeypatch):
    """200 connections opened and closed: pynetdicom's loop collected in full every 60 of them."""
    config = _config()
    database = open_database(database_url, max_connections=8)
    server = start_scp(config.node, ScpHandlers(AssociationPolicy(config), InstanceReceiver(_spool(tmp_path), {},
                                                                                            "gc-test")))
    collections: list[float] = []
    monkeypatch.setattr(gc, "collect", lambda *args, **kwargs: collections.append(time.monotonic()) or 0)
    started = time.monotonic()
    try:
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", config.node.port), timeout=30):
                pass  # one turn of the accepting loop each
        last = associate(config.node.port, calling="STMARYS_PACS")  # accepted after all of them
        assert last.is_established
        last.release()
        elapsed = time.monotonic() - started
        assert len(collections) <= 1 + elapsed / FULL_COLLECTION_EVERY_S, (len(collections), elapsed)
    finally:
        server.shutdown()
        database.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_process_busy_with_other_work_lets_the_others_accept(tmp_path, database_url):
    config = _config()
    database = open_database(database_url, max_connections=4)
    node_slots = AssociationSlots.create(processes=2, limit=10)
    receiver_slots = AssociationSlots.inherited(os.dup(node_slots.fileno()), 2, 1, 10)
    receiver_slots.accepting()
    server = start_scp(config.node, ScpHandlers(AssociationPolicy(config), InstanceReceiver(_spool(tmp_path), {},
                                                                                            "balance-test"),
                                                slots=node_slots))
    try:
        assert server._least_busy(), "neither serves an association: the node may accept"
        open_http = [3]
        server.other_work = lambda: open_http[0]
        assert not server._least_busy(), "three HTTP connections: the idle receiving process accepts"
        assert receiver_slots.take() and receiver_slots.take() and receiver_slots.take()
        assert server._least_busy(), "the receiving process serves as many: the node accepts again"
    finally:
        server.shutdown()
        database.close()


def test_the_http_server_counts_its_open_connections():
    server = HttpServer(HttpConfig(port=0), Starlette())
    server.start()
    held = []
    try:
        assert server.open_connections() == 0
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(3)]
        wait_until(lambda: server.open_connections() == 3, 30, "three connections counted")
        for sock in held:
            sock.close()
        wait_until(lambda: server.open_connections() == 0, 30, "closed connections no longer counted")
    finally:
        for sock in held:
            sock.close()
        server.stop()
