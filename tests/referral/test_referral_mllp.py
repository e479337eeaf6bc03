"""The MLLP listener in-process: framing across reads, several messages a connection, any bytes answered, and
its limits (size cap, message deadline, stop, a failure of ours) over real sockets.

The listener stores through the real intake into a real (SQLite) database.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.config import Hl7Config
from gateway.mllp.server import END_BLOCK, MllpLimits, MllpServer, answer_message, frame, unframe
from gateway.referral.intake import store_referral
from gateway.storage.models import Referral
from referral_cases import close_world, make_world

ORM = (Path(__file__).parent / "fixtures" / "orm_o01.hl7").read_bytes()
FACILITIES = {"STMARYS": "st-marys"}


def store(referral):
    return store_referral(referral, "hl7")


@pytest.fixture
def world(tmp_path):
    yield make_world(tmp_path)
    close_world()


@pytest.fixture
def listener(world):
    server = MllpServer(Hl7Config(enabled=True, host="127.0.0.1", port=0, facilities=FACILITIES))
    server.start()
    yield server
    server.stop()


def _read_answers(connection: socket.socket, count: int) -> list[str]:
    data = b""
    while data.count(END_BLOCK) < count:
        chunk = connection.recv(65536)
        assert chunk, "connection closed early"
        data += chunk
    return [unframe(part + END_BLOCK).decode() for part in data.split(END_BLOCK)[:count]]


def test_frame_split_over_reads_and_two_messages_on_one_connection(listener):
    second = ORM.replace(b"MSG00001", b"MSG00002").replace(b"A1234567", b"B7654321")
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as connection:
        framed = frame(ORM)
        connection.sendall(framed[:40])
        connection.sendall(framed[40:] + frame(second))
        answers = _read_answers(connection, 2)
    assert "MSA|AA|MSG00001" in answers[0] and "MSA|AA|MSG00002" in answers[1]
    with Referral._meta.database.connection_context():
        assert [r.received_via for r in Referral.select()] == ["hl7", "hl7"]


def test_unsupported_message_type_is_rejected(world):
    adt = ORM.replace(b"ORM^O01^ORM_O01", b"ADT^A01^ADT_A01")
    answer = answer_message(adt, FACILITIES, store)
    assert "MSA|AR|MSG00001" in answer
    assert Referral.select().count() == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_get_a_negative_ack_and_store_nothing(world, junk):
    answer = answer_message(junk, FACILITIES, store)
    assert answer.startswith("MSH|") and ("MSA|AR" in answer or "MSA|AE" in answer)
    assert Referral.select().count() == 0


def _limited_listener(**limits) -> MllpServer:
    server = MllpServer(Hl7Config(enabled=True, host="127.0.0.1", port=0, facilities=FACILITIES),
                        limits=MllpLimits(**limits))
    server.start()
    return server


def _closed_within(connection: socket.socket, seconds: float) -> float:
    """Seconds until the server closed the connection (its reads end); fails past ``seconds``."""
    connection.settimeout(seconds)
    started = time.monotonic()
    while connection.recv(65536):
        pass
    return time.monotonic() - started


def test_a_message_over_the_size_cap_is_refused_and_the_connection_closed(world):
    server = _limited_listener(max_message_bytes=4096)
    try:
        big = ORM.replace(b"NTE|1|P|", b"NTE|1|P|" + b"x" * 5000)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
            connection.sendall(frame(big))
            answer = _read_answers(connection, 1)[0]
            assert "MSA|AR||message too large" in answer
            _closed_within(connection, 10)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
            connection.sendall(frame(ORM))  # the server goes on
            assert "MSA|AA|MSG00001" in _read_answers(connection, 1)[0]
    finally:
        server.stop()
    with Referral._meta.database.connection_context():
        assert Referral.select().count() == 1


def test_a_message_not_complete_by_its_deadline_closes_the_connection(world):
    server = _limited_listener(message_deadline_s=1.0, read_timeout_s=30.0)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
            connection.sendall(frame(ORM))  # a whole message in time is answered
            assert "MSA|AA|MSG00001" in _read_answers(connection, 1)[0]
            connection.sendall(frame(ORM)[:100])
            assert _closed_within(connection, 10) < 10  # the idle timeout would be 30 s
    finally:
        server.stop()


def test_stop_ends_open_connections(listener):
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as connection:
        connection.sendall(frame(ORM))
        assert "MSA|AA|MSG00001" in _read_answers(connection, 1)[0]  # its handler runs
        connection.sendall(frame(ORM)[:100])
        started = time.monotonic()
        listener.stop()
        assert time.monotonic() - started < 10
        _closed_within(connection, 10)


def test_a_failure_of_ours_answers_ae_and_the_connection_goes_on(listener):
    database = Referral._meta.database
    second = ORM.replace(b"MSG00001", b"MSG00002")
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as connection:
        with database.connection_context():
            database.execute_sql("ALTER TABLE referral RENAME TO referral_away")
        with capture_logs() as logs:
            connection.sendall(frame(ORM))
            answer = _read_answers(connection, 1)[0]
        assert "MSA|AE|MSG00001|internal error; send again later" in answer
        assert {"event": "hl7_answer_failed", "status": "AE", "error": "OperationalError", "component": "hl7",
                "log_level": "error"} in logs
        with database.connection_context():
            database.execute_sql("ALTER TABLE referral_away RENAME TO referral")
        connection.sendall(frame(second))
        assert "MSA|AA|MSG00002" in _read_answers(connection, 1)[0]
    with database.connection_context():
        assert Referral.select().count() == 1
