"""pynetdicom event handlers: small, each returns a status, all state lives in the receiver and the database.

Statuses answered to C-STORE:
    0x0000  stored durably (or already stored with the same bytes)
    0xA700  out of resources: disk full, free space under the floor, database unavailable; or an instance larger
            than ``node.max_instance_bytes`` (refused as soon as its size passes it, nothing of it kept: PS3.4
            Table B.2-1's A7xx "Refused: Out of Resources" is the status for an SCP that will not take this
            much, where Cxxx "Cannot understand" would claim the data set was unreadable)
    0xA900  the dataset's SOP Class/Instance UID contradicts the request or its presentation context
    0xC000  cannot understand: undecodable dataset, or missing/invalid Study, Series or SOP Instance UID
    0x0124  refused, not authorized: the caller may not store this here (a reviewer may store only its report
            for a case assigned to it; a source may not store a report into a pseudonymous study: see
            ``gateway.scp.report_intake``)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol

import structlog
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association

from gateway.dicom import status
from gateway.dicom.filemeta import part10_header
from gateway.dicom.net import NODELAY_HANDLER, BoundedDataSet, bound_received_data_sets
from gateway.errors import InvalidInstance, OutOfResources, SpoolError
from gateway.ops import audit
from gateway.reports.codes import REPORT_CLASSES
from gateway.scp.commitment_intake import CommitmentIntake
from gateway.scp.gate import Throttle
from gateway.scp.policy import AssociationPolicy, AssociationRefused, Caller
from gateway.scp.quarantine import QuarantineBudget
from gateway.scp.rate import AssociationRate
from gateway.scp.receiver import AssociationCache, InstanceReceiver, ReceivedInstance, elapsed_ms
from gateway.scp.slots import NODE_FULL, AssociationSlots
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage import wakeup
from gateway.storage.models import QuarantinedObject

log = structlog.get_logger("scp")
SWEEP_S = 0.5  # how often a receiving process looks for associations that ended unannounced (ScpHandlers.sweep_ended)


@dataclass
class AssociationStats:
    caller: Caller
    peer: str
    started: float = field(default_factory=time.perf_counter)
    instances: int = 0
    bytes: int = 0
    failures: int = 0
    cache: AssociationCache = field(default_factory=AssociationCache)
    studies: dict[str, int] = field(default_factory=dict)  # study key -> instances stored
    holds_slot: bool = False  # counted in the node-wide AssociationSlots
    peer_keys: tuple[str, ...] = ()  # its AE title's and host's keys in those slots' per-peer counts


def _named(caller: Caller) -> dict[str, str]:
    """The log key naming a caller by its role: ``source=`` for a source, ``reviewer=`` for a reviewer."""
    return {"reviewer" if caller.role == "reviewer" else "source": caller.name}


def _received_bytes(dataset: BytesIO) -> memoryview | bytes:
    """The dataset's bytes as pynetdicom collected them, without copying half a megabyte: a view of its
    buffer, which nothing writes to once the message is complete (pynetdicom starts a new one for the next)."""
    try:
        return dataset.getbuffer()
    except (AttributeError, BufferError, ValueError):
        return dataset.getvalue()


def _status(code: int, comment: str = "") -> Dataset:
    rsp = Dataset()
    rsp.Status = code
    if comment:
        rsp.ErrorComment = comment[:64]
    return rsp


class ReportGate(Protocol):
    """What the SCP needs of the report intake (``gateway.scp.report_intake.ReportIntake``)."""

    def receive(self, received: ReceivedInstance, reviewer: str) -> Any: ...

    def check_source_upload(self, received: ReceivedInstance) -> None: ...


class ScpHandlers(WithNodeContext):
    """Binds the SCP's events to the association policy, the instance receiver and the report intake.
    ``context``: the process's database and metrics (the node's; a receiving process's forward to the node)."""

    def __init__(self, policy: AssociationPolicy, receiver: InstanceReceiver,
                 reports: ReportGate | None = None, slots: AssociationSlots | None = None, *,
                 ae_share: int | None = None, host_share: int | None = None,
                 quarantine: QuarantineBudget | None = None, max_instance_bytes: int | None = None,
                 commitments: CommitmentIntake | None = None, rate: AssociationRate | None = None,
                 context: NodeContext | None = None) -> None:
        self._context = context
        self.policy = policy
        self.receiver = receiver
        self.reports = reports
        self.slots = slots  # node.max_associations across processes (gateway.scp.slots); None: pynetdicom's own
        limit = slots.limit if slots is not None else 1000
        self.ae_share = ae_share or limit  # node.ae_share / host_share: a peer's part of the slots
        self.host_share = host_share or limit
        self.quarantine = quarantine  # None: every refused C-STORE is kept (tests of the handlers alone)
        self.max_instance_bytes = max_instance_bytes
        self.commitments = commitments  # Storage Commitment requests (None: every N-ACTION refused)
        self.rate = rate  # node.association_rate_per_peer, checked in the gate (None: no limit)
        self._rejections = Throttle()
        self._over_budget = Throttle()
        self._slot_lock = threading.Lock()
        # held strongly: an association's place is given back by _closed, never dropped with the object
        self._associations: dict[Association, AssociationStats] = {}
        self._sweeper: threading.Thread | None = None

    def bindings(self) -> list[tuple]:
        bounded = []
        if self.max_instance_bytes is not None:
            bounded = [(evt.EVT_CONN_OPEN, bound_received_data_sets,
                        [self.max_instance_bytes, self.receiver.spool.tmp])]
        return [
            NODELAY_HANDLER,
            *bounded,
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_RELEASED, self.on_closed),
            (evt.EVT_ABORTED, self.on_closed),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_N_ACTION, self.on_n_action),
            (evt.EVT_N_EVENT_REPORT, self.on_n_event_report),
            (evt.EVT_CONN_CLOSE, self.on_connection_closed),
        ]

    def on_requested(self, event: evt.Event) -> None:
        """Admit or reject the association before negotiation (A-ASSOCIATE-RJ with the matching reason)."""
        requestor = event.assoc.requestor
        calling = str(requestor.primitive.calling_ae_title or "")
        called = str(requestor.primitive.called_ae_title or "")
        peer = requestor.address
        try:
            caller = self.policy.admit(calling, called, peer)
            peer_keys = self._take_slot(caller, peer)
        except AssociationRefused as refusal:
            # logged before the answer (a peer that has its A-ASSOCIATE-RJ finds the line written), audited after
            count = self._log_rejection(refusal.reason, calling.strip(), called.strip(), peer)
            event.assoc.acse.send_reject(refusal.result, refusal.source, refusal.diagnostic)
            event.assoc.kill()
            self._rejected(refusal, calling, peer, count)
            return
        self._associations[event.assoc] = AssociationStats(caller, peer, holds_slot=self.slots is not None,
                                                           peer_keys=peer_keys)
        with self._slot_lock:
            self._start_sweeper()
        self.context.metrics.record_association("accepted")
        log.info("association_accepted", **_named(caller), calling_ae=caller.ae_title, peer=peer)

    def _rejected(self, refusal: AssociationRefused, calling: str, peer: str, count: int | None) -> None:
        """Count a rejected association and audit it (``count``: from ``_log_rejection``, None when held back)."""
        self.context.metrics.record_association("rejected")
        if count is not None:
            self._audit("association_refused", calling.strip()[:16], peer, None, "refused",
                        refusal.reason if count == 1 else f"{refusal.reason} ({count} times)")

    def rate_refusal(self, peer: str, calling: str | None, called: str | None) -> AssociationRefused | None:
        """Called in the negotiation gate's thread for a connection that has sent its A-ASSOCIATE-RQ, before an
        association is made of it: the refusal to answer when its host, or its AE title, opens associations
        faster than ``node.association_rate_per_peer`` (logged and audited here), else None. ``calling`` and
        ``called``: the AE titles of the request (None over TLS, where the gate cannot read them: the host's rate
        alone applies). The AE title counts only when the policy admits it from this host, so that a peer calling
        with another's AE title from elsewhere spends its own host's rate, not that AE title's."""
        if self.rate is None:
            return None
        keys = [f"host:{peer}"]
        if calling is not None and called is not None:
            try:
                keys.append(f"ae:{self.policy.admit(calling, called, peer).ae_title}")
            except AssociationRefused:
                pass  # refused in negotiation, with its own reason
        if self.rate.take(keys) is None:
            return None
        refusal = AssociationRefused.over_rate()
        count = self._log_rejection(refusal.reason, (calling or "").strip(), (called or "").strip(), peer)
        self._rejected(refusal, calling or "", peer, count)
        return refusal

    def _take_slot(self, caller: Caller, peer: str) -> tuple[str, ...]:
        """A place under ``node.max_associations`` and under the caller's AE title's and host's shares of it.
        Returns the peer keys to give back with the place.

        Raises:
            AssociationRefused: the node is full, or the AE title or host holds its share (transient).
        """
        if self.slots is None:
            return ()
        self.sweep_ended()
        shares = {f"ae:{caller.ae_title}": self.ae_share, f"host:{peer}": self.host_share}
        full = self.slots.take_within(shares)
        if full == NODE_FULL:
            raise AssociationRefused.local_limit()
        if full is not None:
            raise AssociationRefused.over_share("ae_share_exceeded" if full.startswith("ae:")
                                                else "host_share_exceeded")
        return tuple(shares)

    def _log_rejection(self, reason: str, calling: str, called: str, peer: str) -> int | None:
        """Log a rejected association once per (reason, calling AE, host) every few seconds, with the count of
        rejections it stands for (returned, for the audit row; None when held back): a peer reconnecting in a
        loop must not flood the log or the audit."""
        count = self._rejections.due((reason, calling[:16], peer))
        if count is not None:
            log.warning("association_rejected", reason=reason, calling_ae=calling, called_ae=called, peer=peer,
                        count=count)
        return count

    def on_closed(self, event: evt.Event) -> None:
        self._closed(event.assoc)

    def sweep_ended(self) -> None:
        """Close every association whose thread has ended without a release or abort event (pynetdicom ends one
        so when its DUL thread dies of an exception, as on an A-ABORT PDU whose source is invalid): its place
        under the slots and its peers' shares is given back. Public API only (``Thread.is_alive``), so it holds
        on stock pynetdicom as well."""
        for assoc in [assoc for assoc in list(self._associations) if not assoc.is_alive()]:
            self._closed(assoc)

    def _start_sweeper(self) -> None:
        """Sweep ended associations every ``SWEEP_S`` while this process serves: a place held by an association
        that ended unannounced is back within that time even when no other caller comes to this process."""
        if self._sweeper is not None:
            return

        def sweep_forever() -> None:
            while True:
                time.sleep(SWEEP_S)
                self.sweep_ended()

        self._sweeper = threading.Thread(target=sweep_forever, name="association-sweeper", daemon=True)
        self._sweeper.start()

    def _closed(self, assoc: Association) -> None:
        """Give back the association's place, log and audit its end: once, whichever of ``on_closed`` and
        ``sweep_ended`` comes first (the stats are popped atomically)."""
        stats = self._associations.pop(assoc, None)
        if stats is None:
            return
        self._give_back_slot(stats)
        aborted = assoc.is_aborted or not assoc.is_released
        self.context.metrics.record_association("aborted" if aborted else "released")
        for study_key, count in stats.studies.items():
            self._audit("received", stats.caller.ae_title, stats.peer, study_key, "success", f"{count} instance(s)")
        if stats.instances and self.context.wakeups is not None:
            # completion looks at the studies receiving (and sets their stability timer) after an association
            # that stored something, not after every one: a flood of C-ECHO associations kept it querying
            self.context.wakeups.deliver(wakeup.INSTANCES)
        log.info("association_closed", **_named(stats.caller), state="aborted" if aborted else "released",
                 instances=stats.instances, bytes=stats.bytes, count=stats.failures,
                 duration_ms=elapsed_ms(stats.started))

    def on_connection_closed(self, event: evt.Event) -> None:
        """The connection of an association that ended without a release or an abort event still frees its place.
        The association stays for ``on_closed`` (which may run after this, in another thread) to log and audit."""
        stats = self._associations.get(event.assoc)
        if stats is not None:
            self._give_back_slot(stats)

    def _give_back_slot(self, stats: AssociationStats) -> None:
        with self._slot_lock:  # on_closed and on_connection_closed may both come, from two threads
            if not stats.holds_slot or self.slots is None:
                return
            stats.holds_slot = False
        self.slots.give_back(stats.peer_keys)

    def on_echo(self, event: evt.Event) -> int:
        """C-ECHO: always 0x0000 (Success) for an admitted caller."""
        return status.SUCCESS

    def on_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """N-ACTION, Storage Commitment Push Model: see ``gateway.scp.commitment_intake`` for the statuses."""
        stats = self._associations.get(event.assoc)
        if stats is None or self.commitments is None:
            return status.NOT_AUTHORIZED, None
        return self.commitments.take(event, stats.caller, stats.peer)

    def on_n_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """N-EVENT-REPORT, Storage Commitment Push Model (a reviewer's report on our request): see
        ``gateway.scp.commitment_intake`` for the statuses."""
        stats = self._associations.get(event.assoc)
        if stats is None or self.commitments is None:
            return status.NOT_AUTHORIZED, None
        return self.commitments.take_report(event, stats.caller, stats.peer)

    def on_store(self, event: evt.Event) -> Dataset | int:
        """C-STORE: see the module docstring for the statuses."""
        started = time.perf_counter()
        stats = self._associations.get(event.assoc)
        if stats is None:  # not admitted through on_requested: cannot happen, refuse rather than guess
            return _status(status.NOT_AUTHORIZED, "association not admitted")
        received: ReceivedInstance | None = None
        data_set = event.request.DataSet
        size = data_set.size if isinstance(data_set, BoundedDataSet) else len(_received_bytes(data_set))
        if self.max_instance_bytes is not None and size > self.max_instance_bytes:
            return self._too_large(stats, size, started)
        if isinstance(data_set, BoundedDataSet) and data_set.failed is not None:
            return self._fail(stats, status.OUT_OF_RESOURCES, "spool_error", str(data_set.failed), started)
        try:
            received = self._received(event, stats)
            if stats.caller.role != "source":
                return self._report(stats, received, started)
            if self.reports is not None:
                self.reports.check_source_upload(received)
            result = self.receiver.receive(received, stats.cache)
        except InvalidInstance as refusal:
            part10 = received.part10 if received is not None else b""
            return self._refuse(stats, part10, refusal.status, refusal.reason, refusal.detail, started,
                                getattr(refusal, "event", "instance_refused"), getattr(refusal, "study_key", None))
        except OutOfResources as exc:
            return self._fail(stats, status.OUT_OF_RESOURCES, "out_of_resources", str(exc), started)
        except SpoolError as exc:
            return self._fail(stats, status.OUT_OF_RESOURCES, "spool_error", str(exc), started)
        finally:
            if isinstance(data_set, BoundedDataSet):
                data_set.discard()  # a spilled file not placed in the spool (placed: already renamed away)
        stats.instances += 1
        stats.bytes += received.size
        stats.studies[result.study_key] = stats.studies.get(result.study_key, 0) + 1
        self.context.metrics.record_instance("duplicate" if result.duplicate else "stored", received.size,
                                             time.perf_counter() - started)
        log.info("instance_duplicate" if result.duplicate else "instance_stored", case=result.study_key,
                 source=stats.caller.name, status=status.SUCCESS, version=result.version, bytes=received.size,
                 sop_class=received.context_sop_class, duration_ms=elapsed_ms(started))
        return status.SUCCESS

    def _report(self, stats: AssociationStats, received: ReceivedInstance, started: float) -> Dataset:
        """A reviewer's C-STORE: its report, through the report intake (which raises to refuse)."""
        if self.reports is None:
            raise InvalidInstance("reviewer_may_not_store_studies", status.NOT_AUTHORIZED)
        receipt = self.reports.receive(received, stats.caller.name)
        stats.instances += 1
        stats.bytes += received.size
        log.info("report_received", case=receipt.study_key, reviewer=stats.caller.name, status=status.SUCCESS,
                 sop_class=received.context_sop_class, reason="duplicate" if receipt.duplicate else None,
                 duration_ms=elapsed_ms(started))
        if not receipt.duplicate:
            self._audit("report_received", stats.caller.ae_title, stats.peer, receipt.study_key, "success",
                        f"{received.context_sop_class} from reviewer {stats.caller.name}")
        return _status(status.SUCCESS)

    def _too_large(self, stats: AssociationStats, size: int, started: float) -> Dataset:
        """An instance over ``node.max_instance_bytes``: refused with 0xA700, nothing of it kept (it was dropped
        as it arrived), logged and audited once per peer every few seconds."""
        stats.failures += 1
        self.context.metrics.record_instance("refused", 0, time.perf_counter() - started)
        count = self._over_budget.due((stats.caller.ae_title, "instance_too_large"))
        if count is not None:
            log.warning("instance_refused", **_named(stats.caller), status=status.OUT_OF_RESOURCES,
                        reason="instance_too_large", bytes=size, count=count, duration_ms=elapsed_ms(started))
            self._audit("instance_refused", stats.caller.ae_title, stats.peer, None, "refused",
                        f"instance_too_large: {size} bytes over node.max_instance_bytes"
                        + (f" ({count} times)" if count > 1 else ""))
        return _status(status.OUT_OF_RESOURCES, "instance_too_large")

    @staticmethod
    def _received(event: evt.Event, stats: AssociationStats) -> ReceivedInstance:
        """The request as the receiver takes it: the dataset's bytes as sent, and the file meta to put before it.

        Raises:
            InvalidInstance: a UID in the request that is not even ASCII (0xC000).
        """
        request = event.request
        transfer_syntax = str(event.context.transfer_syntax)
        affected_instance = str(request.AffectedSOPInstanceUID or "")
        try:
            meta = part10_header(str(request.AffectedSOPClassUID or ""), affected_instance, transfer_syntax)
        except UnicodeEncodeError:
            raise InvalidInstance("invalid_uids", status.CANNOT_UNDERSTAND, "request UIDs") from None
        context_sop_class = str(event.context.abstract_syntax)
        data_set = request.DataSet
        spilled = data_set if isinstance(data_set, BoundedDataSet) and data_set.spilled else None
        dataset: bytes | memoryview = _received_bytes(data_set) if spilled is None else b""
        if spilled is not None and (stats.caller.role != "source" or context_sop_class in REPORT_CLASSES):
            # a report (or a source's SR or PDF, checked by the report intake) is read in memory, as every
            # report is: a report of more than SPILL_AFTER_BYTES is rare, and at most max_instance_bytes
            with open(spilled.finish(), "rb") as file:
                file.seek(len(spilled.meta))
                dataset = file.read()
            spilled.discard()
            spilled = None
        return ReceivedInstance(
            meta=meta if spilled is None else spilled.meta,
            dataset=dataset,
            context_sop_class=context_sop_class,
            affected_sop_instance=affected_instance,
            transfer_syntax=transfer_syntax,
            calling_ae=stats.caller.ae_title,
            spilled=spilled,
        )

    def _refuse(self, stats: AssociationStats, part10: bytes, code: int, reason: str, detail: str,
                started: float, event: str = "instance_refused", study_key: str | None = None) -> Dataset:
        """Answer a refusal, keep the bytes in quarantine within the peer's budget, record why (logged and
        audited as ``event``; past the budget, once per peer and reason every few seconds, with a count)."""
        stats.failures += 1
        self.context.metrics.record_instance("refused", len(part10), time.perf_counter() - started)
        if self.quarantine is not None and not self.quarantine.allows(stats.caller.ae_title, len(part10)):
            count = self._over_budget.due((stats.caller.ae_title, reason))
            if count is not None:
                log.warning(event, **_named(stats.caller), case=study_key, status=code, reason=reason, count=count,
                            error="quarantine budget of the peer spent: not kept",
                            duration_ms=elapsed_ms(started))
                self._audit(event, stats.caller.ae_title, stats.peer, study_key, "refused",
                            f"{reason} ({count} times, not kept: quarantine budget spent)")
            return _status(code, reason)
        self._keep(stats, part10, code, reason, detail)
        log.warning(event, **_named(stats.caller), case=study_key, status=code, reason=reason,
                    duration_ms=elapsed_ms(started))
        self._audit(event, stats.caller.ae_title, stats.peer, study_key, "refused", reason)
        return _status(code, reason)

    def _keep(self, stats: AssociationStats, part10: bytes, code: int, reason: str, detail: str) -> None:
        """The refused bytes in the spool's quarantine and their row (best effort: never raises)."""
        path = self.receiver.spool.quarantine(part10) if part10 else None
        try:
            with self.context.database.connection_context():
                QuarantinedObject.create(
                    calling_ae=stats.caller.ae_title, peer_host=stats.peer, reason=reason, detail=detail[:500],
                    status=code, size=len(part10),
                    spool_path=self.receiver.spool.relative(path) if path and path.name else None)
        except Exception:  # noqa: BLE001 - the refusal must still be answered and logged
            log.error("quarantine_record_failed", reason=reason, **_named(stats.caller))

    @staticmethod
    def _audit(action: str, actor_ae: str, peer: str, study_key: str | None, outcome: str, detail: str) -> None:
        """Audit from the edge: a failure to audit is logged, never turned into a DICOM failure."""
        try:
            audit.record(action, actor_ae=actor_ae, actor_host=peer, study_key=study_key, outcome=outcome,
                         detail=detail)
        except Exception:  # noqa: BLE001 - audit.record has already logged why
            pass

    def _fail(self, stats: AssociationStats, code: int, reason: str, detail: str, started: float) -> Dataset:
        stats.failures += 1
        self.context.metrics.record_instance("failed", 0, time.perf_counter() - started)
        log.error("instance_not_stored", **_named(stats.caller), status=code, reason=reason, error=detail,
                  duration_ms=elapsed_ms(started))
        return _status(code, reason)
