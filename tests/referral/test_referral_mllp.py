"""The MLLP listener in-process: framing across reads, several messages a connection, and any bytes answered.

The listener stores through the real intake into a real (SQLite) database.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Hl7Config
from gateway.models import Referral
from gateway.referral.intake import store_referral
from gateway.referral.mllp import END_BLOCK, MllpServer, answer_message, frame, unframe
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
