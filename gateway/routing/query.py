"""What a reviewer already holds, asked by C-FIND: delivery exactly once after an interrupted attempt.

The ledger (``Delivery``) is written in batches (``routing.send``), so a node killed in the middle of an attempt
does not know whether the objects of its last batch reached the reviewer. For a reviewer configured with
``query: true`` the delivery stage asks it (Study Root C-FIND at IMAGE level, by the case's pseudonymous Study
Instance UID, returning every SOP Instance UID it holds) and records those as sent instead of sending them
again. Without it, or when the query fails, they are sent again: at least once (docs/operations.md).
"""

from __future__ import annotations

import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from gateway.config import NodeConfig, ReviewerConfig
from gateway.dicom.net import NODELAY_HANDLER
from gateway.dicom.tls import tls_args

log = structlog.get_logger("routing.query")

PENDING_STATUSES = frozenset({0xFF00, 0xFF01})
SUCCESS = 0x0000


def instances_held(node: NodeConfig, reviewer: ReviewerConfig, study_uid: str) -> set[str] | None:
    """The SOP Instance UIDs of ``study_uid`` that ``reviewer`` holds, or None when it cannot be known (no
    association, the C-FIND refused or cut short): the caller then sends them all again."""
    ae = AE(ae_title=node.ae_title)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (node.acse_timeout_s, node.dimse_timeout_s,
                                                             node.network_timeout_s)
    ae.connection_timeout = node.acse_timeout_s
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(reviewer.host, reviewer.port, ae_title=reviewer.ae_title, evt_handlers=[NODELAY_HANDLER],
                         tls_args=tls_args(reviewer))
    if not assoc.is_established:
        log.warning("reviewer_query_failed", reviewer=reviewer.name, reason="no association")
        return None
    try:
        return _find(assoc, reviewer, study_uid)
    finally:
        if assoc.is_established:
            assoc.release()


def _find(assoc, reviewer: ReviewerConfig, study_uid: str) -> set[str] | None:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    held: set[str] = set()
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = getattr(status, "Status", None)
        if code in PENDING_STATUSES:
            if identifier is not None and identifier.get("SOPInstanceUID"):
                held.add(str(identifier.SOPInstanceUID))
        elif code == SUCCESS:
            return held
        else:
            log.warning("reviewer_query_failed", reviewer=reviewer.name,
                        status=code if code is not None else "no response")
            return None
    return None
