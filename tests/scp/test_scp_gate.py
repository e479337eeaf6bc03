"""The negotiation gate over TLS, on the gateway's own SCP in this process: the handshake happens in the
connection's thread within ``node.negotiation_timeout_s``, so a client that connects and says nothing (no
ClientHello) holds up nobody; before, pynetdicom shook hands in its accepting thread and such a client stopped
every other connection."""

from __future__ import annotations

import socket
import ssl

import pytest
import trustme

from gateway.config import GatewayConfig
from gateway.dicom import status
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.server import start_scp
from gateway.storage.models import open_database
from gateway.storage.spool import Spool
from support.peers import free_port
from support.scu import associate


@pytest.fixture
def tls_scp(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    config = GatewayConfig.model_validate({
        "node": {"host": "127.0.0.1", "port": free_port(), "negotiation_timeout_s": 2.0,
                 "tls": {"enabled": True, "cert_file": str(tmp_path / "server.pem"),
                         "key_file": str(tmp_path / "server.pem")}},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}],
    })
    database = open_database(f"sqlite:///{tmp_path}/gateway.db", max_connections=8)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    server = start_scp(config.node, ScpHandlers(AssociationPolicy(config), InstanceReceiver(spool, {}, "test")))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    yield config.node.port, client
    server.shutdown()
    database.close()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.mark.slow  # waits out the gate's timeout: 2 s
def test_a_silent_client_on_the_tls_port_holds_up_nobody_and_is_dropped(tls_scp):
    port, client = tls_scp
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    garbage = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        assoc = associate(port, calling="STMARYS_PACS", ssl_context=client)
        assert assoc.is_established, "a TLS association waited behind a silent connection"
        try:
            assert assoc.send_c_echo().Status == status.SUCCESS
        finally:
            assoc.release()
        assert closed_by_peer(garbage, 10), "a client that is not speaking TLS was kept"
        assert closed_by_peer(silent, 20), "a client that never started its handshake was kept"
    finally:
        silent.close()
        garbage.close()
