"""Which ended associations wake the completion stage: those that stored instances, not the others (issue 28: a
flood of C-ECHO associations from another host woke completion for each one, and its queries ran the whole
flood while a legitimate source's study waited for its commits)."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.config import GatewayConfig
from gateway.dicom import status
from gateway.ops.metrics import GatewayMetrics
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.server import start_scp
from gateway.stages.context import NodeContext
from gateway.storage import cases, wakeup
from gateway.storage.models import open_database
from gateway.storage.spool import Spool
from support.peers import free_port, wait_until
from support.scu import associate


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_only_an_association_that_stored_instances_wakes_completion(tmp_path, database_url, small_study):
    config = GatewayConfig.model_validate({
        "node": {"host": "127.0.0.1", "port": free_port()},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}]})
    database = open_database(database_url, max_connections=8)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
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
