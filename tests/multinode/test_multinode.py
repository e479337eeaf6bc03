"""Several nodes on one PostgreSQL database and one shared spool split the work, never deliver a case twice,
and pick up the cases of a node that died."""

from __future__ import annotations

import threading

from gateway.storage.models import make_database
from support.peers import GatewayProcess, storescu, wait_until
from support.recorder import RecordingSCP


def _nodes(tmp_path, url: str, reviewer: RecordingSCP, count: int = 2) -> list[GatewayProcess]:
    shared = {"spool_dir": str(tmp_path / "shared-spool")}
    extra = {
        "routing": {"stable_after_s": 1, "poll_s": 0.3, "claim_lease_s": 3},
        "referrals": {"wait_s": 0, "on_timeout": "route"},
        "deid": {"secret_file": str(tmp_path / "shared.key")},
    }
    reviewers = [{"name": "dr-a", "ae_title": reviewer.ae_title, "host": "127.0.0.1", "port": reviewer.port}]
    return [GatewayProcess(tmp_path / f"node{i}", url, storage=shared, reviewers=reviewers, extra=extra)
            for i in range(count)]


def _states(url: str) -> list[str]:
    database = make_database(url, max_connections=2)
    with database.connection_context():
        return [row[0] for row in database.execute_sql("SELECT state FROM study").fetchall()]


def test_two_nodes_split_a_study_and_deliver_it_once(tmp_path, pg_cluster, small_study):
    url = pg_cluster.new_database()
    reviewer = RecordingSCP().start()
    nodes = _nodes(tmp_path, url, reviewer)
    for node in nodes:
        node.start()
    try:
        halves = [small_study[::2], small_study[1::2]]
        senders = [threading.Thread(target=storescu, args=("127.0.0.1", node.port, half),
                                    kwargs={"calling": "STMARYS_PACS"}) for node, half in zip(nodes, halves)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        wait_until(lambda: _states(url) == ["delivered"], 90, "the case to be delivered")
        # every image plus the notes SR and PDF, each exactly once
        assert reviewer.count() == len(small_study) + 2
        assert reviewer.duplicates() == {}
        assert len(reviewer.patient_names) == 1 and next(iter(reviewer.patient_names)).startswith("SPINEGW^")
    finally:
        for node in nodes:
            node.stop()
        reviewer.stop()


def test_a_dead_nodes_case_is_taken_over(tmp_path, pg_cluster, small_study):
    url = pg_cluster.new_database()
    reviewer = RecordingSCP(delay_s=0.25).start()  # a slow reviewer, so the kill lands mid-delivery
    first, second = _nodes(tmp_path, url, reviewer)
    first.start()
    try:
        assert storescu("127.0.0.1", first.port, small_study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: reviewer.count() >= 3, 90, "the delivery to start")
        first.kill()
        second.start()
        wait_until(lambda: _states(url) == ["delivered"], 120, "the other node to finish the delivery")
        assert reviewer.count() == len(small_study) + 2
        # An object whose C-STORE response was lost in the crash may be sent again (same SOP Instance UID,
        # which a PACS files as the same instance); nothing else is.
        assert sum(n - 1 for n in reviewer.duplicates().values()) <= 1
    finally:
        second.stop()
        first.stop()
        reviewer.stop()
