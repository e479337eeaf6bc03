"""TLS on the DICOM port with client certificates (issue 25): DCMTK's storescu ``+tls`` against a node whose
``node.tls`` requires a certificate its CA signed, with a PKI made by openssl in the test.

- A sender whose certificate the node's CA signed: the study is stored (mutual TLS).
- A sender without a certificate, with one another CA signed, or in clear text: nothing is stored.
"""

from __future__ import annotations

import pytest

from gateway.demo import write_demo_study
from support.peers import GatewayProcess, storescu, wait_until
from support.pki import make_pki

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), name="hospital")


@pytest.fixture(scope="module")
def node(tmp_path_factory, pki):
    workdir = tmp_path_factory.mktemp("tls-node")
    tls = {"enabled": True, "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
           "ca_file": str(pki.ca_cert), "require_client_cert": True}
    node = GatewayProcess(workdir / "gw", f"sqlite:///{workdir}/gw.db", node={"tls": tls},
                          extra={"routing": {"stable_after_s": 3600}},  # the study stays received: counted below
                          probe_args=_client_args(pki.client_key, pki.client_cert, pki.ca_cert))
    node.start()
    yield node
    node.stop()


def _client_args(key, cert, ca) -> list[str]:
    return ["+tls", str(key), str(cert), "+cf", str(ca)]


def _instances(node: GatewayProcess) -> int:
    return sum(1 for event in node.log_events() if event["event"] == "instance_stored")


def test_a_sender_with_a_certificate_of_the_nodes_ca_is_stored(node, pki, tmp_path):
    study = write_demo_study(tmp_path / "study", 2, rows=32, cols=32)
    before = _instances(node)
    sent = storescu("127.0.0.1", node.port, study, calling="STMARYS_PACS",
                    extra_args=_client_args(pki.client_key, pki.client_cert, pki.ca_cert))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_until(lambda: _instances(node) == before + 2, 60, "both instances stored")


WAYS = ["no certificate", "another CA's certificate", "clear text"]


@pytest.mark.parametrize("how", WAYS)
def test_a_sender_the_node_cannot_authenticate_stores_nothing(node, pki, tmp_path, how):
    seed = 10 + WAYS.index(how)  # every study of the module its own UIDs: a repeat would be a duplicate
    study = write_demo_study(tmp_path / "study", 1, rows=32, cols=32, seed=seed)
    other = make_pki(tmp_path / "other", name="other")
    args = {"no certificate": ["+tla", "+cf", str(pki.ca_cert)],
            "another CA's certificate": _client_args(other.client_key, other.client_cert, pki.ca_cert),
            "clear text": []}[how]
    before = _instances(node)
    sent = storescu("127.0.0.1", node.port, study, calling="STMARYS_PACS", extra_args=args, timeout=60)
    assert sent.returncode != 0, how
    # The node still serves a sender it can authenticate, and the refused one stored nothing.
    good = write_demo_study(tmp_path / "good", 1, rows=32, cols=32, seed=seed + 10)
    assert storescu("127.0.0.1", node.port, good, calling="STMARYS_PACS",
                    extra_args=_client_args(pki.client_key, pki.client_cert, pki.ca_cert)).returncode == 0
    wait_until(lambda: _instances(node) >= before + 1, 60, "the good sender's instance stored")
    assert _instances(node) == before + 1, how
