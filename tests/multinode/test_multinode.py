"""Several nodes on one PostgreSQL database and one shared spool split the work, never deliver a case twice,
and pick up the cases of a node that died; three of them start at once on a fresh database."""

from __future__ import annotations

import collections
import threading

from gateway.demo import DemoPatient, write_demo_study
from gateway.storage.models import make_database
from support.peers import GatewayProcess, storescu, wait_until
from support.recorder import RecordingSCP


def _nodes(tmp_path, url: str, reviewer: RecordingSCP, count: int = 2, query: bool = False,
           lease_s: float = 3) -> list[GatewayProcess]:
    shared = {"spool_dir": str(tmp_path / "shared-spool")}
    extra = {
        "routing": {"stable_after_s": 1, "poll_s": 0.3, "claim_lease_s": lease_s},
        "referrals": {"wait_s": 0, "on_timeout": "route"},
        "deid": {"secret_file": str(tmp_path / "shared.key")},
    }
    reviewers = [{"name": "dr-a", "ae_title": reviewer.ae_title, "host": "127.0.0.1", "port": reviewer.port,
                  "query": query}]
    return [GatewayProcess(tmp_path / f"node{i}", url, storage=shared, reviewers=reviewers, extra=extra)
            for i in range(count)]


def _rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    database = make_database(url, max_connections=1)
    try:
        with database.connection_context():
            return [tuple(row) for row in database.execute_sql(sql, params).fetchall()]
    finally:
        database.close_all()


def _states(url: str) -> list[str]:
    return [state for (state,) in _rows(url, "SELECT state FROM study")]


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


def _start_together(nodes: list[GatewayProcess]) -> None:
    """Start every node at the same moment (one thread each); every node's failure is reported."""
    failures: list[BaseException] = []

    def start(node: GatewayProcess) -> None:
        try:
            node.start(timeout=240)
        except BaseException as exc:  # noqa: BLE001 - gathered and raised below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [], failures


def _delivering_node(url: str, nodes: list[GatewayProcess]) -> GatewayProcess | None:
    """The node holding the delivery claim of a case being delivered (its claim is ``<host>-<port>/delivery``)."""
    for (claimed_by,) in _rows(url, "SELECT claimed_by FROM study WHERE state = 'delivering' AND claimed_by "
                                    "LIKE %s", ("%/delivery",)):
        port = int(claimed_by.split("/")[0].rsplit("-", 1)[1])
        return next((node for node in nodes if node.port == port and node.proc is not None), None)
    return None


def test_three_nodes_started_at_once_share_studies_and_one_dies_mid_delivery(tmp_path, pg_cluster):
    """Three nodes start at once on a fresh database; three studies, each sent half to one node and half to
    another; the node delivering a case is killed (kill -9) mid-delivery. Every study arrives whole, once, under
    one pseudonymous study UID (the reviewer answers the takeover's C-FIND, so nothing is sent twice), the audit
    has one 'sent' per case, and no delivered case is claimed again (delivering once per case, in every log)."""
    url = pg_cluster.new_database()
    reviewer = RecordingSCP(delay_s=0.25).start()  # slow, so that the kill lands mid-delivery
    # A lease of 10 s: three nodes' notes stages on two loaded cores can outlast 3 s between renewals, and
    # another node then takes the case over while it is still being worked on (docs/operations.md §11, item 8).
    nodes = _nodes(tmp_path, url, reviewer, count=3, query=True, lease_s=10)
    studies = [write_demo_study(tmp_path / f"study{k}", 12, seed=10 + k, rows=128, cols=128,
                                patient=DemoPatient(patient_id=f"MRN77{k:05d}", accession=f"C{k:07d}"))
               for k in range(3)]
    try:
        _start_together(nodes)
        senders = [threading.Thread(target=storescu, args=("127.0.0.1", nodes[(k + half) % 3].port,
                                                           study[half::2]), kwargs={"calling": "STMARYS_PACS"})
                   for k, study in enumerate(studies) for half in (0, 1)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        victim = wait_until(lambda: reviewer.count() >= 2 and _delivering_node(url, nodes), 180,
                            "a node delivering a case", interval=0.02)
        victim.kill()
        wait_until(lambda: _states(url) == ["delivered"] * 3, 240, "the three cases to be delivered")

        pseudonymous = {uid for (uid,) in _rows(url, "SELECT pseudo_study_uid FROM study")}
        received = reviewer.studies()
        assert set(received) == pseudonymous and len(pseudonymous) == 3, "one pseudonymous study UID per study"
        assert sorted(len(uids) for uids in received.values()) == [len(s) + 2 for s in studies], \
            "every image, the notes SR and PDF of every study"
        assert reviewer.duplicates() == {}, "nothing sent twice"
        assert len(reviewer.patient_names) == 3 and all(n.startswith("SPINEGW^") for n in reviewer.patient_names)
        keys = {key for (key,) in _rows(url, "SELECT key FROM study")}
        sent = collections.Counter(key for (key,) in _rows(
            url, "SELECT study_key FROM audit_event WHERE action = 'sent' AND outcome = 'success'"))
        assert sent == {key: 1 for key in keys}, "one audit 'sent' per real transfer"
        delivering = collections.Counter(e["case"] for node in nodes for e in node.log_events()
                                         if e["event"] == "case_state_changed" and e.get("state") == "delivering")
        assert delivering == {key: 1 for key in keys}, "no delivered case went delivering again"
    finally:
        for node in nodes:
            node.stop()
        reviewer.stop()
