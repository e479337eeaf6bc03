"""The SQLite channel for commands (gateway.storage.wakeup): a node's Unix datagram socket in its spool directory, poked
by a command once its transaction has committed. Owner-only, topic names only, a stale file taken over, a live
one left alone, deep spool directories, and a command with no node carrying on silently."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from gateway.storage import cases, wakeup
from gateway.storage.models import CaseState, Source, Study, db, open_database
from support.peers import wait_until


def _stale_socket(path: Path) -> None:
    """A socket file whose process is gone, as a node killed with -9 leaves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()


@pytest.fixture
def sqlite_db(tmp_path):
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    yield database
    database.close()


def _node_hub(database, spool: Path) -> tuple[wakeup.Wakeups, list[str], threading.Event]:
    spool.mkdir(parents=True, exist_ok=True)
    hub = wakeup.Wakeups("node-a", database, local_socket=wakeup.socket_path(spool))
    woken: list[str] = []
    event = threading.Event()

    def on(topic: str):
        return lambda: (woken.append(topic), event.set())

    for topic in wakeup.ALL_TOPICS:
        hub.subscribe({topic}, on(topic))
    return hub.start(), woken, event


def test_a_poke_wakes_the_topics_named_and_nothing_else(tmp_path, sqlite_db):
    spool = tmp_path / "spool"
    hub, woken, event = _node_hub(sqlite_db, spool)
    path = wakeup.socket_path(spool)
    try:
        assert hub.local is not None
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in spool.iterdir()] == [wakeup.SOCKET_NAME], "no temporary name left behind"
        assert wakeup.poke(path, [CaseState.HELD, "1.2.826.0.1.3680043.2.1125.9.1", wakeup.REFERRAL])
        wait_until(lambda: sorted(woken) == sorted([CaseState.HELD, wakeup.REFERRAL]), 10, "the poked topics")
        event.clear()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:  # anything else sent there is ignored
            other.sendto(b"\xff\x00 DROP TABLE study; " + b"x" * 4000, str(path))
        assert wakeup.poke(path, [CaseState.COMPLETE])
        wait_until(lambda: woken[-1:] == [CaseState.COMPLETE], 10, "the next poke")
        assert sorted(woken) == sorted([CaseState.HELD, wakeup.REFERRAL, CaseState.COMPLETE])
    finally:
        hub.stop()
    assert not path.exists(), "the node removes its socket at stop"
    assert not wakeup.poke(path, [CaseState.COMPLETE]), "no node: the poke says so, silently"


def test_a_stale_socket_is_taken_over_and_a_live_one_left_alone(tmp_path, sqlite_db):
    spool = tmp_path / "spool"
    spool.mkdir()
    path = wakeup.socket_path(spool)
    _stale_socket(path)
    assert not wakeup.poke(path, [CaseState.COMPLETE]), "a stale socket: nobody reads it"
    hub, woken, _ = _node_hub(sqlite_db, spool)
    second = wakeup.Wakeups("node-b", sqlite_db, local_socket=path)
    try:
        assert hub.local is not None, "the stale file did not stop the node's channel"
        second.start()
        assert second.local is None, "a socket a live node reads is not taken from it"
        assert wakeup.poke(path, [CaseState.COMPLETE])
        wait_until(lambda: woken == [CaseState.COMPLETE], 10, "the first node woken")
    finally:
        second.stop()
        hub.stop()


def test_a_spool_directory_deeper_than_a_socket_address_allows(tmp_path, sqlite_db):
    spool = tmp_path / ("d" * 60) / ("e" * 60) / "spool"
    assert len(os.fsencode(wakeup.socket_path(spool))) > 108
    hub, woken, _ = _node_hub(sqlite_db, spool)
    try:
        assert hub.local is not None and wakeup.socket_path(spool).exists()
        assert wakeup.poke(wakeup.socket_path(spool), [CaseState.ASSIGNED])
        wait_until(lambda: woken == [CaseState.ASSIGNED], 10, "the poke through the directory's descriptor")
    finally:
        hub.stop()
    assert not wakeup.socket_path(spool).exists()


def test_a_command_pokes_once_its_transaction_commits_and_not_on_rollback(tmp_path, sqlite_db):
    spool = tmp_path / "spool"
    hub, woken, _ = _node_hub(sqlite_db, spool)
    command = wakeup.CommandWakeups(sqlite_db, spool)
    with sqlite_db.connection_context():
        source = Source.create(name="st-marys", ae_title="STMARYS_PACS")
        study = Study.create(study_uid="1.2.826.0.1.3680043.2.1125.9.2", calling_ae="STMARYS_PACS", source=source,
                             state=CaseState.QUARANTINED)
    wakeup.install(command)
    try:
        with sqlite_db.connection_context():
            with pytest.raises(RuntimeError), db.atomic():
                assert cases.move(study, CaseState.COMPLETE, reason="released")
                raise RuntimeError("rolled back")
            study.state = CaseState.QUARANTINED
            with db.atomic():
                assert cases.move(study, CaseState.COMPLETE, reason="released")
                assert woken == [], "not before the commit"
        wait_until(lambda: woken == [CaseState.COMPLETE], 10, "the node woken by the committed move")
        assert wakeup.poke(wakeup.socket_path(spool), [CaseState.ASSIGNED])  # datagrams arrive in order
        wait_until(lambda: woken[-1:] == [CaseState.ASSIGNED], 10, "the marker poke")
        assert woken == [CaseState.COMPLETE, CaseState.ASSIGNED], "one wake-up: the rolled-back move sent none"
    finally:
        wakeup.install(None)
        hub.stop()
