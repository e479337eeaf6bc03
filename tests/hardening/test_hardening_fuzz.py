"""Hostile input against a running gateway's SCP, over raw TCP: malformed PDUs, garbage datasets behind
valid headers, absurd VRs, lengths and nesting, and slow clients holding associations.

After every input the node must be alive, answer a normal C-ECHO within a bounded time, and hold no
Instance row that it did not acknowledge with 0x0000 for exactly those bytes. The number of inputs tried
per kind is printed at the end of the module (run with ``-s`` to see it, or read ``fuzz-inputs.txt`` in the
test's temporary directory).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from gateway.dicom.net import NODELAY_HANDLER
from hardening_support import (
    GATEWAY_AE,
    MR_STORAGE,
    SOURCE_AE,
    RawPeer,
    associate_rq,
    c_echo_command,
    c_store_command,
    p_data,
    pdu,
    query,
    thread_count,
    thread_stacks,
)
from support.peers import GatewayProcess, PeerStartError, wait_until

ECHO_DEADLINE_S = 10.0
TRIED: Counter = Counter()
_uids = itertools.count(1)
# Every node option the fuzzer relies on: short timeouts so that a stalled peer is dropped within seconds.
# No association rate: the hostile inputs come from the legitimate source's own AE title and host, an association
# or two per example, at up to 50 a second here (node.association_rate_per_peer is tested in test_hardening_peers).
FUZZ_NODE = {"max_associations": 6, "acse_timeout_s": 2, "network_timeout_s": 3, "dimse_timeout_s": 5,
             "association_rate_per_peer": None}
# Examples per hostile-input test; bench/fuzz.py raises it for a long run (and draws new examples).
EXAMPLES = int(os.environ.get("SPINE_GATEWAY_FUZZ_EXAMPLES", "100"))
HYPOTHESIS = settings(max_examples=EXAMPLES, deadline=None,
                      derandomize=os.environ.get("SPINE_GATEWAY_FUZZ_RANDOM") != "1",
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Acknowledged:
    """Datasets the gateway answered 0x0000 to, by SOP Instance UID."""

    def __init__(self) -> None:
        self.by_uid: dict[str, set[str]] = {}

    def add(self, uid: str, dataset: bytes) -> None:
        self.by_uid.setdefault(uid, set()).add(hashlib.sha256(dataset).hexdigest())


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz")
    gateway = GatewayProcess(workdir / "gw", f"sqlite:///{workdir}/gateway.db", node=FUZZ_NODE,
                             extra={"http": {"enabled": False}})
    gateway.database_url = f"sqlite:///{workdir}/gateway.db"
    gateway.acknowledged = Acknowledged()
    gateway.start()
    yield gateway
    gateway.stop()
    report = ", ".join(f"{kind}={count}" for kind, count in sorted(TRIED.items()))
    summary = f"hostile inputs tried: {sum(TRIED.values())} ({report})"
    (workdir / "fuzz-inputs.txt").write_text(summary + "\n")
    print("\n" + summary)


def echo_once(port: int) -> bool:
    ae = AE(ae_title=SOURCE_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AE, evt_handlers=[NODELAY_HANDLER])
    if not assoc.is_established:
        return False
    try:
        return getattr(assoc.send_c_echo(), "Status", None) == 0x0000
    finally:
        assoc.release()


def assert_healthy(node: GatewayProcess) -> None:
    """Alive, answering C-ECHO within the deadline, and every stored instance acknowledged for its bytes."""
    assert node.proc.poll() is None, "the gateway process died"
    wait_until(lambda: echo_once(node.port), ECHO_DEADLINE_S, "a C-ECHO answer after a hostile input",
               interval=0.2)
    for uid, sha in query(node.database_url, "SELECT sop_instance_uid, sha256 FROM instance"):
        assert sha in node.acknowledged.by_uid.get(uid, set()), "an instance is stored that was never acknowledged"


def associated_peer(node: GatewayProcess, timeout: float = 5) -> RawPeer:
    """A raw connection with an accepted association. Slots held by the previous hostile peer are freed
    within the node's timeouts, so the request is retried until then."""
    def attempt() -> RawPeer | None:
        peer = RawPeer(node.port, timeout=timeout)
        if peer.associate():
            return peer
        peer.close()
        return None

    return wait_until(attempt, ECHO_DEADLINE_S, "an accepted association", interval=0.2)


def next_uid() -> str:
    return f"2.25.{int(time.time() * 1000)}{next(_uids):06d}"  # unique across runs on one database


def store_raw(node: GatewayProcess, uid: str, dataset: bytes, fragments: int = 1) -> int | None:
    """A well-formed association and C-STORE command carrying ``dataset`` (possibly garbage); its status."""
    peer = associated_peer(node)
    try:
        peer.send(p_data(1, c_store_command(uid), command=True))
        size = max(1, -(-len(dataset) // fragments))
        chunks = [dataset[i:i + size] for i in range(0, len(dataset), size)] or [b""]
        for index, chunk in enumerate(chunks):
            peer.send(p_data(1, chunk, command=False, last=index == len(chunks) - 1))
        code = peer.command_status()
        if code == 0x0000:
            node.acknowledged.add(uid, dataset)
        peer.release()
        return code
    finally:
        peer.close()


# -- explicit VR little endian, written by hand so that anything can be wrong ------------------------------

def element(group: int, elem: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    length = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV", b"SV", b"UV"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, length) + value
    return struct.pack("<HH2sH", group, elem, vr, length & 0xFFFF) + value


def _ui(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def header_elements(uid: str) -> tuple[bytes, bytes]:
    """(elements before group 0x0009, elements after): the UIDs a C-STORE needs, in tag order."""
    before = (element(0x0008, 0x0016, b"UI", _ui(MR_STORAGE)) + element(0x0008, 0x0018, b"UI", _ui(uid))
              + element(0x0008, 0x0060, b"CS", b"MR"))
    after = (element(0x0020, 0x000D, b"UI", _ui(f"{uid}.1")) + element(0x0020, 0x000E, b"UI", _ui(f"{uid}.2")))
    return before, after


def nested_sequences(depth: int) -> bytes:
    """(0009,1010) SQ nested ``depth`` deep, undefined lengths everywhere."""
    inner = element(0x0009, 0x1011, b"LO", b"x ")
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        inner = (struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF) + item
                 + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return element(0x0009, 0x0010, b"LO", b"HOSTILE ") + inner


hostile_middle = st.one_of(
    st.builds(nested_sequences, st.sampled_from([17, 50, 1000])).map(lambda b: ("deep_nesting", b)),
    st.builds(lambda vr, value: element(0x0009, 0x0010, vr, value),
              st.binary(min_size=2, max_size=2), st.binary(max_size=64)).map(lambda b: ("absurd_vr", b)),
    st.builds(lambda vr, length, value: element(0x0009, 0x0010, vr, value, length),
              st.sampled_from([b"OB", b"UN", b"LO", b"SQ", b"UT"]), st.integers(0, 0xFFFFFFFF),
              st.binary(max_size=64)).map(lambda b: ("absurd_length", b)),
    st.binary(min_size=1, max_size=256).map(lambda b: ("garbage_element", b)),
)


@HYPOTHESIS
@given(raw=st.binary(min_size=0, max_size=2048))
def test_random_bytes_instead_of_a_pdu(node, raw):
    TRIED["random_bytes"] += 1
    peer = RawPeer(node.port)
    peer.send(raw)
    peer.close()
    assert_healthy(node)


@HYPOTHESIS
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       length=st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)))
def test_mangled_associate_requests(node, cut, flips, length):
    TRIED["mangled_associate_rq"] += 1
    data = bytearray(associate_rq())
    for position, value in flips:
        if position < len(data):
            data[position] = value
    if length is not None:
        data[2:6] = struct.pack(">I", length)
    peer = RawPeer(node.port, timeout=5)
    peer.send(bytes(data[:cut] if cut < len(data) else data))
    peer.close()
    assert_healthy(node)


@HYPOTHESIS
@given(pdu_type=st.integers(0, 255), body=st.binary(max_size=1024),
       declared=st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)), wait_answer=st.booleans())
def test_garbage_pdus_after_a_valid_association(node, pdu_type, body, declared, wait_answer):
    TRIED["garbage_pdu_after_association"] += 1
    peer = associated_peer(node)
    try:
        data = bytearray(pdu(pdu_type, body))
        if declared is not None:
            data[2:6] = struct.pack(">I", declared)
        peer.send(bytes(data))
        if wait_answer:
            peer.read_pdu()
    finally:
        peer.close()
    assert_healthy(node)


@HYPOTHESIS
@given(pdvs=st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 255), st.integers(0, 255),
                               st.binary(max_size=200)), min_size=1, max_size=4))
def test_p_data_with_inconsistent_pdv_items(node, pdvs):
    TRIED["inconsistent_pdv_items"] += 1
    body = b"".join(struct.pack(">IBB", length, context, header) + data for length, context, header, data in pdvs)
    peer = associated_peer(node)
    try:
        peer.send(pdu(0x04, body))
        peer.read_pdu()
    finally:
        peer.close()
    assert_healthy(node)


@HYPOTHESIS
@given(dataset=st.binary(min_size=0, max_size=4096), fragments=st.integers(1, 4))
def test_valid_command_then_garbage_dataset(node, dataset, fragments):
    TRIED["garbage_dataset"] += 1
    code = store_raw(node, next_uid(), dataset, fragments)
    assert code != 0x0000, "random bytes were acknowledged as an image"
    assert_healthy(node)


@HYPOTHESIS
@given(middle=hostile_middle, truncate=st.one_of(st.none(), st.integers(1, 64)))
def test_hostile_datasets_are_refused_or_stored_intact(node, middle, truncate):
    kind, hostile = middle
    TRIED[f"dataset_{kind}"] += 1
    uid = next_uid()
    before, after = header_elements(uid)
    dataset = before + hostile + after
    if truncate is not None:
        dataset = dataset[:-truncate]
    code = store_raw(node, uid, dataset)
    if code == 0x0000:
        stored = {sha for (sha,) in query(node.database_url,
                                          "SELECT sha256 FROM instance WHERE sop_instance_uid = ?", (uid,))}
        assert hashlib.sha256(dataset).hexdigest() in stored, "acknowledged but not stored as sent"
    if kind == "deep_nesting":
        assert code != 0x0000, "a 17+ deep sequence nesting was acknowledged"
    assert_healthy(node)


def test_a_valid_raw_store_is_acknowledged_and_stored(node):
    """The raw client itself is right: a well-formed dataset gets 0x0000 and a row (so refusals above mean it)."""
    TRIED["control_valid_store"] += 1
    uid = next_uid()
    before, after = header_elements(uid)
    dataset = before + element(0x0009, 0x0010, b"LO", b"FINE") + after
    assert store_raw(node, uid, dataset) == 0x0000
    assert query(node.database_url, "SELECT COUNT(*) FROM instance WHERE sop_instance_uid = ?", (uid,)) == [(1,)]
    peer = associated_peer(node)
    peer.send(p_data(3, c_echo_command(), command=True))
    assert peer.command_status() == 0x0000
    peer.release()
    assert_healthy(node)


# -- slow clients ------------------------------------------------------------------------------------------

# Pools that start their threads as work comes, not at start (the spool writers', the wake-up timers'): after a
# round of slow peers they may hold a thread or two more than just after start. A leak of association threads
# (one per slow peer: four and six below) still shows. The stages' pool is started whole with the node
# (``gateway.stages.pipeline.StartedThreadPool``): it grew by five threads in the first half-minute and failed here.
LAZY_POOL_THREADS = 2


def _settled_threads(node: GatewayProcess, at_most: int, timeout: float) -> int:
    pid = node.proc.pid
    at_most += LAZY_POOL_THREADS
    try:
        wait_until(lambda: thread_count(pid) <= at_most, timeout, f"the gateway's threads to fall back to {at_most}")
    except PeerStartError as exc:
        stacks = thread_stacks(pid, node.workdir / "gateway.stderr")
        raise PeerStartError(f"{exc} (still {thread_count(pid)}); the node's threads:\n{stacks}") from None
    return thread_count(pid)


def test_slow_clients_hold_slots_until_the_timeouts_then_free_them(tmp_path):
    """Four of five slots held by peers that never finish (two silent, one partial A-ASSOCIATE-RQ, one
    partial P-DATA): the node answers C-ECHO at once on the free slot and drops every slow peer within its
    timeouts (a partial PDU used to hold its slot and thread forever), with no thread left behind."""
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db",
                          node={"max_associations": 5, "acse_timeout_s": 1.5, "negotiation_timeout_s": 1.5,
                                "network_timeout_s": 2, "dimse_timeout_s": 3},
                          # wake-ups off: each ended association wakes the stages through the wake-up timers' pool,
                          # which starts its threads as it goes; this count is of association threads
                          extra={"http": {"enabled": False}, "routing": {"wakeups": False}}).start()
    try:
        baseline = thread_count(node.proc.pid)
        silent = [RawPeer(node.port, timeout=30) for _ in range(2)]
        stalled = RawPeer(node.port, timeout=30)
        stalled.send(associate_rq()[:20])  # a partial A-ASSOCIATE-RQ, then nothing
        half = RawPeer(node.port, timeout=30)
        assert half.associate()
        half.send(p_data(1, c_store_command(next_uid()), command=True)[:30])  # a partial P-DATA, then nothing
        TRIED["slow_clients"] += 4
        assert echo_once(node.port), "no C-ECHO answer while slow peers hold four of five slots"
        wait_until(lambda: all(_closed(p) for p in [*silent, stalled, half]), 20, "slow peers to be dropped")
        assert echo_once(node.port)
        _settled_threads(node, baseline, 20)
    finally:
        node.stop()


def _closed(peer: RawPeer) -> bool:
    """True when the gateway has closed the connection (recv returns EOF or the socket is reset)."""
    peer.sock.settimeout(0.05)
    try:
        while True:
            data = peer.sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_all_slots_held_by_silent_peers_are_freed_by_the_timeouts(tmp_path):
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db",
                          node={"max_associations": 3, "acse_timeout_s": 1.5, "negotiation_timeout_s": 1.5,
                                "network_timeout_s": 2, "dimse_timeout_s": 3},
                          # wake-ups off, as above
                          extra={"http": {"enabled": False}, "routing": {"wakeups": False}}).start()
    try:
        baseline = thread_count(node.proc.pid)
        silent = [RawPeer(node.port, timeout=30) for _ in range(6)]
        TRIED["slow_clients"] += len(silent)
        # An association request is answered (rejected while full, or accepted) within a bounded time,
        # and once the silent peers are dropped the slots are free again.
        wait_until(lambda: echo_once(node.port), 20, "a C-ECHO once the silent peers time out", interval=0.2)
        wait_until(lambda: all(_closed(p) for p in silent), 20, "silent peers to be dropped")
        for peer in silent:
            peer.close()
        _settled_threads(node, baseline, 20)
        assert node.proc.poll() is None
    finally:
        node.stop()
