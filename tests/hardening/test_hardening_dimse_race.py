"""pynetdicom's reactor can take a C-STORE response off the DIMSE queue before ``send_c_store`` does (its
pause races; pynetdicom #435, #875): the gateway then waited ``dimse_timeout`` and sent the object again.
Seen once or twice per 3,000-instance run of bench/load.py. ``gateway.dicom.net`` gives such a response back
to the waiting sender; this drives the reactor's side of the race by hand on a real association."""

from __future__ import annotations

from pydicom.uid import MRImageStorage
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from gateway.dicom.net import NODELAY_HANDLER
from hardening_support import CountingReviewer


def _response(message_id: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = MRImageStorage
    rsp.AffectedSOPInstanceUID = "2.25.1"
    rsp.Status = 0x0000
    return rsp


def test_a_response_taken_by_the_reactor_while_a_sender_waits_goes_back_to_the_sender():
    reviewer = CountingReviewer().start()
    ae = AE(ae_title="SPINEGW")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", reviewer.port, ae_title=reviewer.ae_title, evt_handlers=[NODELAY_HANDLER])
    try:
        assert assoc.is_established
        # A sender is waiting (send_c_store clears the checkpoint): the stolen response is given back.
        assoc._reactor_checkpoint.clear()
        assoc._serve_request(_response(7), 1)
        context_id, msg = assoc.dimse.get_msg(block=False)
        assert (context_id, msg.MessageIDBeingRespondedTo) == (1, 7)
        # Nobody waits: a stray response is dropped as pynetdicom always did (never left for a later sender).
        assoc._reactor_checkpoint.set()
        assoc._serve_request(_response(8), 1)
        assert assoc.dimse.get_msg(block=False) == (None, None)
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()
        reviewer.stop()
