"""TLS on the associations the gateway opens (issue 25): a reviewer that speaks only TLS, DCMTK's storescp
``+tls`` asking for the gateway's certificate (mutual TLS), with a PKI made by openssl in the test.

- The case reaches the TLS reviewer; ``spine-gateway echo`` reaches it through TLS too.
- A reviewer configured for TLS that answers in clear text gets nothing, not even an association: no fallback.
- A reviewer whose certificate another CA signed gets nothing.
"""

from __future__ import annotations

import pytest

from gateway.demo import write_demo_study
from support.peers import DcmtkStoreSCP, GatewayProcess, storescu, wait_until
from support.pki import make_pki

pytestmark = pytest.mark.slow
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 50}},
        "referrals": {"wait_s": 0}}  # no referral: the case goes with "No referral received" notes


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_storescp(workdir, server_pki, client_pki) -> DcmtkStoreSCP:
    """storescp with TLS only (``server_pki``'s certificate), requiring a client certificate that
    ``client_pki``'s CA signed; its start probe is echoscu with that client certificate."""
    return DcmtkStoreSCP(
        workdir, ae_title="REVIEW_A",
        extra_args=["+tls", str(server_pki.server_key), str(server_pki.server_cert), "+cf",
                    str(client_pki.ca_cert)],
        probe_args=["+tls", str(client_pki.client_key), str(client_pki.client_cert), "+cf",
                    str(server_pki.ca_cert)]).start()


def _node(tmp_path, port: int, pki) -> GatewayProcess:
    tls = {"enabled": True, "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
           "key_file": str(pki.client_key)}
    return GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw.db", reviewers=[
        {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": port, "tls": tls}], extra=FAST)


def _received(scp: DcmtkStoreSCP) -> list:
    return [p for p in scp.out_dir.iterdir() if p.is_file()]


def test_a_case_reaches_a_reviewer_over_mutual_tls_and_echo_goes_the_same_way(tmp_path, pki):
    study = write_demo_study(tmp_path / "study", 3, rows=64, cols=64)
    scp = _tls_storescp(tmp_path / "scp", pki, pki)
    node = _node(tmp_path, scp.port, pki)
    try:
        node.start()
        assert storescu("127.0.0.1", node.port, study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: node.status()["cases_by_state"].get("delivered") == 1, 120, "the case delivered")
        echo = node.cli("echo", "dr-a", check=False)
    finally:
        node.stop()
        scp.stop()
    assert len(_received(scp)) > len(study), "the images and the notes objects"
    assert echo.returncode == 0 and "C-ECHO success" in echo.stdout


def test_a_tls_reviewer_answering_in_clear_text_gets_nothing(tmp_path, pki):
    study = write_demo_study(tmp_path / "study", 2, rows=64, cols=64)
    plain = DcmtkStoreSCP(tmp_path / "scp", ae_title="REVIEW_A", extra_args=["-v"]).start()
    node = _node(tmp_path, plain.port, pki)
    try:
        node.start()
        assert storescu("127.0.0.1", node.port, study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: _held_without_reviewer(node), 120, "the case held: its only reviewer failed C-ECHO")
        echo = node.cli("echo", "dr-a", check=False)
        states = node.status()["cases_by_state"]
    finally:
        node.stop()
        plain.stop()
    assert _received(plain) == [] and "delivered" not in states
    assert echo.returncode != 0
    log = plain.log_text()
    assert "Unrecognized PDU type: 16" in log, "storescp saw TLS handshakes (record type 0x16) from the gateway"
    assert log.count("Association Acknowledged") == 1, "no association in clear text: only its start probe's"


def test_a_reviewer_whose_certificate_another_ca_signed_gets_nothing(tmp_path, pki):
    study = write_demo_study(tmp_path / "study", 2, rows=64, cols=64)
    other = make_pki(tmp_path / "other-pki", name="other")
    scp = _tls_storescp(tmp_path / "scp", other, pki)  # trusts our client, but is not trusted by us
    node = _node(tmp_path, scp.port, pki)
    try:
        node.start()
        assert storescu("127.0.0.1", node.port, study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: _held_without_reviewer(node), 120, "the case held: its only reviewer failed C-ECHO")
    finally:
        node.stop()
        scp.stop()
    assert _received(scp) == []


def _held_without_reviewer(node: GatewayProcess) -> bool:
    """The TLS C-ECHO failed (peer health), so assignment skips the reviewer and the case waits for one."""
    status = node.status()
    peer = next((p for p in status.get("peers", []) if p["peer"] == "reviewer:dr-a"), None)
    return peer is not None and not peer["ok"] and status["cases_by_state"].get("held") == 1
