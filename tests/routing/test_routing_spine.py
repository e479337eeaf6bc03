"""The spine filter: which headers make a study spine, and the completion stage rejecting the rest."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from gateway.config import RoutingConfig
from gateway.routing.spine import SpineDecision, SpineFilter, SpineRules, is_spine
from gateway.stages.completion import CompletionStage
from gateway.storage import cases
from gateway.storage.models import CaseState, Study, utcnow
from routing_db import add_instances, make_case, open_db, write_head_ct


def _header(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _region(scheme: str, code: str) -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = scheme, code, "x"
    return _header(AnatomicRegionSequence=[item])


@pytest.mark.parametrize(("header", "spine", "reason"), [
    (_header(BodyPartExamined="LSPINE"), True, "body_part:LSPINE"),
    (_header(BodyPartExamined="CSPINE"), True, "body_part:CSPINE"),
    (_header(BodyPartExamined="COCCYX"), True, "body_part:COCCYX"),
    (_header(BodyPartExamined="HEAD", StudyDescription="CT HEAD", ProtocolName="HEAD ROUTINE"), False,
     "no_spine_attribute"),
    (_header(BodyPartExamined="HEAD"), False, "no_spine_attribute"),
    (_header(StudyDescription="MRI LUMBAR SPINE"), True, "keyword:LUMBAR"),
    (_header(SeriesDescription="sag t2 l-spine"), True, "keyword:L-SPINE"),
    (_header(ProtocolName="LWS SAG T1"), True, "keyword:LWS"),
    (_header(StudyDescription="MRT HWS"), True, "keyword:HWS"),
    (_header(ProtocolName="SACRAL PLEXUS"), True, "keyword:SACR"),
    (_header(StudyDescription="DOPPLER FLOWS"), False, "no_spine_attribute"),  # "LWS" only at a word start
    (_region("SCT", "122496007"), True, "anatomic_region:SCT"),      # lumbar spine
    (_region("SCT", "1217253001"), True, "anatomic_region:SCT"),     # lumbo-sacral spine
    (_region("SRT", "T-11501"), True, "anatomic_region:SRT"),        # cervical spine, legacy SNOMED RT
    (_region("SCT", "69536005"), False, "no_spine_attribute"),       # head
    (_header(), False, "no_spine_attribute"),
])
def test_spine_table(header, spine, reason):
    decision = is_spine([header])
    assert (decision.spine, decision.reason) == (spine, reason)


def test_any_series_may_say_spine():
    assert is_spine([_header(BodyPartExamined="CHEST"), _header(SeriesDescription="T SPINE SAG")]).spine


def test_body_part_wins_over_keyword_and_lists_come_from_the_config():
    rules = SpineRules.from_config(RoutingConfig(body_parts=["HEAD"], keywords=["BRAIN"]))
    assert is_spine([_header(BodyPartExamined="HEAD")], rules).reason == "body_part:HEAD"
    assert is_spine([_header(BodyPartExamined="LSPINE")], rules).spine is False
    assert is_spine([_header(StudyDescription="MR BRAIN")], rules).reason == "keyword:BRAIN"


def test_malformed_header_counts_as_absent():
    ds = Dataset()
    tag = Tag(0x00180015)
    ds._dict[tag] = RawDataElement(tag, "SQ", 4, b"\xff\xfe\xfd\xfc", 0, False, True)  # undecodable
    assert is_spine([ds]) == SpineDecision(False, "no_spine_attribute")


def test_completion_rejects_a_head_ct_and_completes_a_lumbar_mr(tmp_path, small_study):
    database = open_db(f"sqlite:///{tmp_path}/gw.db")
    spool = tmp_path / "spool"
    with database.connection_context():
        old = utcnow() - dt.timedelta(seconds=120)
        lumbar = make_case(CaseState.RECEIVING, modalities=(), received_at=old)
        add_instances(lumbar, spool, small_study[:3])
        head = make_case(CaseState.RECEIVING, modalities=(), received_at=old)
        add_instances(head, spool, write_head_ct(tmp_path / "head", 2))
        routing = RoutingConfig(stable_after_s=60)
        stage = CompletionStage(routing, SpineFilter(routing, spool))
        assert stage.run_once(utcnow()) == 2
        assert Study.get_by_id(lumbar.id).state == CaseState.COMPLETE
        rejected = Study.get_by_id(head.id)
        assert rejected.state == CaseState.REJECTED_NOT_SPINE
        assert cases.can_move(CaseState.REJECTED_NOT_SPINE, CaseState.COMPLETE)  # an operator may override
