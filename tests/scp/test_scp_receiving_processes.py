"""Receiving processes (``node.receiving_processes``, ``gateway.scp.receivers``): more processes accept on the node's
DICOM port and store durably on their own; the node hears their logs, metrics and wake-ups, restarts one that
dies, and takes them down with it.

To make a receiving process (not the node) take the associations, the node's own process is stopped with
SIGSTOP: it cannot accept, so the kernel's queue is served by the receiving process alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.demo import write_demo_study
from gateway.dicom import status
from gateway.scp.handlers import ScpHandlers
from gateway.scp.policy import AssociationPolicy
from gateway.scp.receiver import InstanceReceiver
from gateway.scp.receiving_process import Channel
from gateway.scp.server import start_scp
from gateway.scp.slots import AssociationSlots
from gateway.storage.models import open_database
from gateway.storage.spool import Spool
from support.dicomfiles import dataset_bytes, sop_instance_uid, spool_files, spool_index
from support.peers import GatewayProcess, child_pids, echo_ok, free_port, storescu, wait_until
from support.scu import associate, send
from test_scp_receive import instances_in_db, rows

HOUR = 3600.0


def receiving_pids(node: GatewayProcess) -> list[int]:
    """The node's receiving processes still alive (children running ``gateway.scp.receiving_process``)."""
    return child_pids(node.proc.pid, b"gateway.scp.receiving_process")


def started_receivers(node: GatewayProcess) -> int:
    return sum(1 for event in node.log_events() if event["event"] == "receiver_started")


def events_of(node: GatewayProcess, name: str, component: str = "receiver-1") -> list[dict]:
    return [e for e in node.log_events() if e["event"] == name and e.get("component") == component]


@contextlib.contextmanager
def node_process_stopped(node: GatewayProcess) -> Iterator[None]:
    """SIGSTOP the node's own process (its receiving processes run on) until the block ends."""
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)


def metric(node: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def receiving_node(workdir: Path, database_url: str, processes: int = 1, **node: object) -> GatewayProcess:
    gateway = GatewayProcess(workdir, database_url, node={"receiving_processes": processes, **node},
                             extra={"routing": {"stable_after_s": 1.0, "poll_s": HOUR, "echo_interval_s": HOUR}})
    gateway.start()
    wait_until(lambda: started_receivers(gateway) >= processes, 60, "the receiving processes")
    return gateway


@pytest.fixture(scope="module")
def five_studies(tmp_path_factory) -> list[list[Path]]:
    return [write_demo_study(tmp_path_factory.mktemp(f"sender-{n}"), 20, seed=60 + n, rows=128, cols=128)
            for n in range(5)]


def test_a_receiving_process_stores_durably_and_the_node_hears_it(tmp_path, database_url, small_study):
    """With the node's own process stopped, its receiving process takes a study from DCMTK's storescu and an
    unknown caller: the study is acknowledged, on disk and committed before the node runs again; afterwards the
    node's log has the receiving process's events, /metrics counts them, and the forwarded wake-up completes the
    case although the stages poll only hourly."""
    node = receiving_node(tmp_path / "gw", database_url)
    try:
        with node_process_stopped(node):
            result = storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS")
            assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr[-500:]
            stored = instances_in_db(database_url)
            assert len(stored) == len(small_study), "acknowledged before its row was committed"
            spool = spool_index(node.spool_dir)
            assert all(spool[sop_instance_uid(p)] == dataset_bytes(p) for p in small_study)
            assert not echo_ok("127.0.0.1", node.port, "INTRUDER", node.ae_title)
        tags = {tag for (tag,) in rows(database_url, "SELECT DISTINCT node FROM instance")}
        assert len(tags) == 1 and next(iter(tags)).endswith("-r1"), tags
        wait_until(lambda: len(events_of(node, "instance_stored")) == len(small_study), 30,
                   "the receiving process's instance_stored events in the node's log")
        rejected = events_of(node, "association_rejected")
        assert [e["reason"] for e in rejected] == ["calling_ae_not_recognized"]
        wait_until(lambda: metric(node, 'spine_gateway_instances_received_total{result="stored"}')
                   >= len(small_study), 30, "the stored instances in /metrics")
        wait_until(lambda: [e for e in node.log_events()
                            if e["event"] == "case_state_changed" and e.get("state") == "complete"], 30,
                   "completion, woken by the receiving process (stages poll hourly)")
    finally:
        node.stop()


def test_kill_9_of_a_receiving_process_loses_nothing_acknowledged_and_it_is_restarted(
        tmp_path, database_url, five_studies):
    """kill -9 of the receiving process while it takes five senders: every instance it acknowledged has its row
    and intact file, the node logs the exit and starts it again, and everything sent again is stored once."""
    node = receiving_node(tmp_path / "gw", database_url)
    every = [path for files in five_studies for path in files]
    objects = node.spool_dir / "objects"
    try:
        (victim,) = receiving_pids(node)
        statuses: list[list[int | None]] = [[] for _ in five_studies]

        def sender(index: int, files: list[Path]) -> None:
            with contextlib.suppress(ConnectionError):
                statuses[index] = send(node.port, files, calling="STMARYS_PACS")

        with node_process_stopped(node):
            threads = [threading.Thread(target=sender, args=(i, f)) for i, f in enumerate(five_studies)]
            for thread in threads:
                thread.start()
            wait_until(lambda: objects.exists() and sum(1 for _ in objects.rglob("*.dcm")) >= 30, 120,
                       "30 instances in the spool", interval=0.005)
            os.kill(victim, signal.SIGKILL)
            for thread in threads:
                thread.join(120)
        acknowledged = [path for files, codes in zip(five_studies, statuses) for path, code in zip(files, codes)
                        if code == status.SUCCESS]
        assert 20 <= len(acknowledged) < len(every), "the kill should land mid-transfer"
        stored, spool = instances_in_db(database_url), spool_index(node.spool_dir)
        for path in acknowledged:
            uid = sop_instance_uid(path)
            assert uid in stored and spool[uid] == dataset_bytes(path), f"{path.name} acknowledged but lost"
        wait_until(lambda: events_of(node, "receiver_exited"), 30, "receiver_exited in the node's log")
        wait_until(lambda: receiving_pids(node) and victim not in receiving_pids(node), 30, "a new receiving process")
        assert metric(node, "spine_gateway_receiving_process_exits_total") == 1
        wait_until(lambda: metric(node, "spine_gateway_receiving_processes") == 1, 30, "the gauge back at 1")
        again = [send(node.port, files, calling="STMARYS_PACS") for files in five_studies]
        assert again == [[status.SUCCESS] * len(files) for files in five_studies]
        assert len(instances_in_db(database_url)) == len(every)
        assert len(spool_files(node.spool_dir)) == len(every)
    finally:
        node.stop()


def test_the_receiving_processes_end_with_the_node_stopped_or_killed(tmp_path):
    """A stopped node stops its receiving processes; a node killed with -9 takes them down too, so the port is
    free at once for the node started again."""
    node = receiving_node(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", processes=2)
    pids = receiving_pids(node)
    assert len(pids) == 2
    node.stop()
    assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids)

    node = receiving_node(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", processes=2)
    pids = receiving_pids(node)
    node.kill()
    wait_until(lambda: not any(_alive(pid) for pid in pids), 10, "the receiving processes to die with the node")
    node.start()  # same port: nothing holds it any more
    try:
        assert echo_ok("127.0.0.1", node.port, "STMARYS_PACS", node.ae_title)
    finally:
        node.stop()


def test_a_receiving_process_sent_sigterm_stops_cleanly_and_is_started_again(tmp_path):
    """systemd stops a service by sending SIGTERM to each of its processes: a receiving process stops as when the
    node closes its input (``receiver_stopped``); if the node runs on, it starts the process again."""
    node = receiving_node(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db")
    try:
        (first,) = receiving_pids(node)
        os.kill(first, signal.SIGTERM)
        wait_until(lambda: events_of(node, "receiver_stopped"), 30, "receiver_stopped")
        wait_until(lambda: [e for e in events_of(node, "receiver_exited") if e["status"] == 0], 30,
                   "receiver_exited with status 0")
        wait_until(lambda: receiving_pids(node) and first not in receiving_pids(node), 30, "a new receiving process")
        assert echo_ok("127.0.0.1", node.port, "STMARYS_PACS", node.ae_title)
    finally:
        node.stop()


def test_max_associations_counts_every_process(tmp_path):
    """node.max_associations is the node's, not each process's: with three processes and a limit of 3 the fourth
    association is rejected (transient, local limit), and a released place is taken again."""
    node = receiving_node(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", processes=2, max_associations=3,
                          max_associations_per_peer=3)
    held = [associate(node.port, calling="STMARYS_PACS") for _ in range(3)]
    try:
        assert all(a.is_established for a in held)
        fourth = associate(node.port, calling="STMARYS_PACS")
        assert fourth.is_rejected
        assert fourth.acceptor.primitive.result == status.REJECTED_TRANSIENT
        assert [e for e in node.log_events()
                if e["event"] == "association_rejected" and e["reason"] == "too_many_associations"]
        held.pop().release()
        wait_until(lambda: _established_then_released(node.port), 10, "a place given back")
    finally:
        for assoc in held:
            assoc.release()
        node.stop()


def test_associations_are_shared_out_evenly_between_the_processes(tmp_path):
    """Each new connection goes to a process serving the fewest associations (not to whichever the kernel wakes
    first), so that senders arriving together are received on every core."""
    node = receiving_node(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", processes=1)
    held = []

    def accepted() -> list[str]:
        return [e.get("component") for e in node.log_events() if e["event"] == "association_accepted"]
    try:
        before = len(accepted())  # the start-up check's echo
        for _ in range(4):
            held.append(associate(node.port, calling="STMARYS_PACS"))
            assert held[-1].is_established
        wait_until(lambda: len(accepted()) == before + 4, 10, "the four associations logged")
        components = accepted()[before:]
        assert components.count("receiver-1") == 2, f"2 of 4 associations in the receiving process: {components}"
    finally:
        for assoc in held:
            assoc.release()
        node.stop()


class _UnreadableCount(AssociationSlots):
    def least_busy(self, negotiating: int = 0) -> bool:
        raise OSError("the shared count cannot be read")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_shared_count_that_cannot_be_read_never_stops_a_process_accepting(tmp_path, database_url):
    config = GatewayConfig.model_validate({
        "node": {"host": "127.0.0.1", "port": free_port()},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}],
    })
    database = open_database(database_url, max_connections=4)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    slots = _UnreadableCount.create(processes=2, limit=10)
    server = start_scp(config.node, ScpHandlers(AssociationPolicy(config), InstanceReceiver(spool, {}, "test"),
                                                slots=slots))
    try:
        for _ in range(2):  # the second while this process serves more than the other
            assoc = associate(config.node.port, calling="STMARYS_PACS")
            assert assoc.is_established
            assoc.release()
    finally:
        server.shutdown()
        database.close()


def _established_then_released(port: int) -> bool:
    assoc = associate(port, calling="STMARYS_PACS")
    if assoc.is_established:
        assoc.release()
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class TestAssociationSlots:
    """The shared count on its own: each ``AssociationSlots`` opens the node's file again, as each process does."""

    def test_the_limit_is_the_sum_of_every_process(self):
        node = AssociationSlots.create(processes=3, limit=3)
        first, second = (AssociationSlots.inherited(os.dup(node.fileno()), 3, n, 3) for n in (1, 2))
        assert node.take() and first.take() and second.take()
        assert not node.take() and not first.take() and not second.take()
        second.give_back()
        assert first.take()
        assert node.total() == 3
        first.empty(1)  # its process died with two associations
        assert node.total() == 1

    def test_a_process_accepts_only_while_no_other_serves_fewer(self):
        node = AssociationSlots.create(processes=3, limit=10)
        first, second = (AssociationSlots.inherited(os.dup(node.fileno()), 3, n, 10) for n in (1, 2))
        assert node.take() and node.least_busy(), "the receiving processes do not accept yet: not waited for"
        first.accepting()
        assert not node.least_busy() and first.least_busy()
        assert not first.least_busy(negotiating=2), "connections still negotiating count as associations"
        assert first.take() and first.take()
        assert node.least_busy() and not first.least_busy()
        second.accepting()
        assert second.least_busy() and not node.least_busy()
        second.empty(2)  # it died: the others no longer wait for it
        assert node.least_busy()
        assert node.total() == 3

    def test_a_peer_holds_at_most_its_share_in_every_process_together(self):
        node = AssociationSlots.create(processes=2, limit=10)
        other = AssociationSlots.inherited(os.dup(node.fileno()), 2, 1, 10)
        shares = {"ae:PACS": 2, "host:10.0.0.1": 3}
        assert node.take_within(shares) is None and other.take_within(shares) is None
        assert node.take_within(shares) == "ae:PACS" and other.take_within(shares) == "ae:PACS"
        assert other.take_within({"ae:OTHER": 2, "host:10.0.0.1": 3}) is None
        assert node.take_within({"ae:THIRD": 2, "host:10.0.0.1": 3}) == "host:10.0.0.1"
        assert node.peer_total("ae:PACS") == 2 and node.peer_total("host:10.0.0.1") == 3 and node.total() == 3
        node.give_back(tuple(shares))
        assert other.take_within(shares) is None, "a share given back in one process is free in the other"
        other.empty(1)  # its process died with its three associations: their shares with them
        assert node.peer_total("ae:PACS") == 0 and node.peer_total("host:10.0.0.1") == 0 and node.total() == 0
        assert node.take_within({"ae:x": 1}) is None and node.take_within({"ae:y": 1}) is None
        assert AssociationSlots.create(1, 2).take_within({}) is None

    def test_threads_and_openers_racing_never_pass_the_limit(self):
        node = AssociationSlots.create(2, 50)
        openers = [node, AssociationSlots.inherited(os.dup(node.fileno()), 2, 1, 50)]
        taken: list[bool] = []
        lock = threading.Lock()

        def grab(slots: AssociationSlots) -> None:
            for _ in range(40):
                got = slots.take()
                with lock:
                    taken.append(got)

        threads = [threading.Thread(target=grab, args=(openers[i % 2],)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(taken) == 50 and openers[0].total() == 50


def test_metrics_go_to_the_node_together_and_before_any_message_sent_after_them():
    """One line for the metrics of a moment (not one per C-STORE), flushed on a timer or ahead of a wake-up."""
    read_end, write_end = os.pipe()
    channel = Channel(write_end)
    with open(read_end, "rb") as pipe:
        channel.send_soon(["record_instance", ["stored", 10, 0.01]])
        channel.send_soon(["record_commit_group", [2]])
        channel.send({"wake": "instances"})
        assert json.loads(pipe.readline()) == {"metrics": [["record_instance", ["stored", 10, 0.01]],
                                                           ["record_commit_group", [2]]]}
        assert json.loads(pipe.readline()) == {"wake": "instances"}
        channel.send_soon(["record_association", ["accepted"]])
        started = time.monotonic()
        assert json.loads(pipe.readline()) == {"metrics": [["record_association", ["accepted"]]]}
        assert time.monotonic() - started < 5, "flushed by the timer"
    os.close(write_end)
