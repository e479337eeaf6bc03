"""HL7 v2 ORM^O01 / OMI^O23 to Referral, and ACK building."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from hl7apy.parser import parse_message
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.referral.codes import RedFlag
from gateway.referral.document import Referral, Urgency
from gateway.referral.errors import HL7ParseError
from gateway.referral.hl7 import build_ack, parse_hl7_referral

SOURCES = {"STMARYS": "st-marys"}
FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()


@pytest.fixture
def orm() -> str:
    return _fixture("orm_o01.hl7")


@pytest.fixture
def omi() -> str:
    return _fixture("omi_o23.hl7")


def test_fixtures_use_carriage_returns(orm, omi):
    for message in (orm, omi):
        assert "\n" not in message and message.count("\r") >= 8


def test_orm_o01_maps_to_referral(orm):
    referral = parse_hl7_referral(orm, SOURCES)
    assert referral.source == "st-marys"
    assert referral.accession_number == "A1234567"  # OBR-18
    assert referral.patient.id == "MRN0012345"
    assert referral.patient.name == "Doe^Jane"
    assert referral.patient.birth_date == datetime.date(1971, 4, 12)
    assert referral.referrer.name == "Dr Alan Smith"
    assert referral.urgency is Urgency.ROUTINE
    assert referral.study_date == datetime.date(2024, 3, 5)
    clinical = referral.clinical
    assert clinical.question == "Exclude nerve root compression at L4-L5 or L5/S1"
    assert clinical.history.startswith("Low back pain radiating to the left calf")
    assert "Diagnosis: Radiculopathy, lumbar region" in clinical.history
    assert "worse at night" in clinical.symptoms and "without improvement" in clinical.symptoms
    assert clinical.pain.intensity == 7
    assert clinical.red_flags == [RedFlag.PROGRESSIVE_NEUROLOGICAL_DEFICIT]
    assert clinical.examination == "Reduced ankle reflex on the left, EHL power 4/5."


def test_omi_o23_takes_accession_from_ipc_1(omi):
    referral = parse_hl7_referral(omi.encode(), SOURCES)
    assert referral.accession_number == "A7654321"
    assert referral.patient.name == "Roe^Richard"
    assert referral.patient.birth_date == datetime.date(1958, 7, 4)
    assert referral.clinical.question == "Cervical myelopathy? C5/6 stenosis"
    assert referral.clinical.pain.intensity == 5


def test_lf_separators_and_mllp_framing_are_tolerated(orm):
    framed = "\x0b" + orm.replace("\r", "\n") + "\x1c\r"
    assert parse_hl7_referral(framed, SOURCES).accession_number == "A1234567"


def test_stat_priority_makes_it_urgent(omi):
    urgent = omi.replace("TQ1|1||||||||R^Routine^HL70485", "TQ1|1||||||||S^Stat^HL70485")
    assert urgent != omi
    assert parse_hl7_referral(urgent, SOURCES).urgency is Urgency.URGENT


def test_unknown_facility_is_refused(orm):
    with pytest.raises(HL7ParseError, match="MSH-4"):
        parse_hl7_referral(orm, {"OTHER": "other"})


def test_unsupported_message_type_is_refused(orm):
    with pytest.raises(HL7ParseError, match="MSH-9"):
        parse_hl7_referral(orm.replace("ORM^O01^ORM_O01", "ADT^A01^ADT_A01"), SOURCES)


def test_missing_accession_is_refused(omi):
    without = "\r".join(s for s in omi.split("\r") if not s.startswith(("IPC", "ORC")))
    without = without.replace("OBR|1|PLC777^RIS|FIL888^PACS|", "OBR|1|PLC777^RIS||")
    with pytest.raises(HL7ParseError, match="accession"):
        parse_hl7_referral(without, SOURCES)


def test_out_of_range_pain_is_refused_naming_the_field(orm):
    bad = orm.replace("verbal numeric rating^LN||7|", "verbal numeric rating^LN||14|")
    with pytest.raises(HL7ParseError, match=r"clinical\.pain\.intensity"):
        parse_hl7_referral(bad, SOURCES)


@pytest.mark.parametrize("raw", ["", "hello world", "PID|1||X", "MSH|^~\\&|x", "MSH|"])
def test_malformed_messages_raise_hl7_parse_error(raw):
    with pytest.raises(HL7ParseError) as caught:
        parse_hl7_referral(raw, SOURCES)
    assert "\n" not in str(caught.value)


def test_bad_birth_date_is_named_not_echoed(orm):
    with pytest.raises(HL7ParseError, match="PID-7") as caught:
        parse_hl7_referral(orm.replace("|19710412|", "|19711340|"), SOURCES)
    assert "1971" not in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("MSHPIDOBRX|^~\\&\r0123"), max_size=120))
def test_any_text_parses_or_raises_hl7_parse_error(raw):
    try:
        assert isinstance(parse_hl7_referral("MSH|^~\\&|" + raw, SOURCES), Referral)
    except HL7ParseError as refused:
        assert "\n" not in str(refused)  # one line naming the field, as every refusal


def _segments(ack: str) -> dict[str, list[str]]:
    return {line.split("|")[0]: line.split("|") for line in ack.split("\r") if line}


def test_positive_ack(orm):
    ack = build_ack(orm, accept=True, error_text=None)
    segments = _segments(ack)
    assert segments["MSA"][1:3] == ["AA", "MSG00001"]
    msh = segments["MSH"]
    assert msh[2:4] == ["SPINEGW", "SPINEGW"] and msh[4] == "RIS"  # sender and receiver swapped
    assert msh[8] == "ACK^O01^ACK" and msh[11] == "2.5"
    assert "ERR" not in segments
    assert parse_message(ack, find_groups=False).msa.msa_1.to_er7() == "AA"  # hl7apy reads it back


def test_application_error_ack_escapes_text(omi):
    segments = _segments(build_ack(omi, accept=False, error_text="study | not found"))
    assert segments["MSA"][1:4] == ["AE", "MSG00002", "study \\F\\ not found"]
    assert segments["MSH"][8] == "ACK^O23^ACK"
    assert segments["ERR"][3].startswith("207^") and segments["ERR"][4] == "E"


def test_reject_ack(orm):
    segments = _segments(build_ack(orm, accept=False, error_text="unsupported", reject=True, control_id="C1"))
    assert segments["MSA"][1:3] == ["AR", "MSG00001"]
    assert segments["MSH"][9] == "C1"


def test_ack_of_garbage_raises(orm):
    with pytest.raises(HL7ParseError):
        build_ack("not hl7", accept=True, error_text=None)


def test_patient_address_phones_email_and_other_ids_are_mapped(orm):
    pid = ("PID|1||MRN0012345^^^STM^MR~NHS9434765919^^^NHS^NH~OTH-55120^^^KGH^PI||Doe^Jane^^^Ms||19710412|F|||"
           "14 Wychwood Crescent^Flat 2^Thrapston^Northants^NN14 4QT^GBR||^PRN^PH^^44^1832^736415~"
           "^NET^Internet^jane.doe@mail.example|^WPN^PH^^44^20^79460123")
    message = "\r".join(pid if line.startswith("PID|") else line for line in orm.split("\r"))
    patient = parse_hl7_referral(message, SOURCES).patient
    assert patient.id == "MRN0012345"
    assert patient.other_ids == ["NHS9434765919", "OTH-55120"]
    assert (patient.address.street, patient.address.other, patient.address.town, patient.address.region,
            patient.address.postcode, patient.address.country) == (
        "14 Wychwood Crescent", "Flat 2", "Thrapston", "Northants", "NN14 4QT", "GBR")
    assert patient.phones == ["+44 1832 736415", "+44 20 79460123"]
    assert patient.email == "jane.doe@mail.example"


def test_the_fixture_address_and_phone_are_kept(orm):
    patient = parse_hl7_referral(orm, SOURCES).patient
    assert patient.address.street == "1 High Street" and patient.address.postcode == "W1A 1AA"
    assert patient.phones == ["+44 20 79460123"] and patient.other_ids == []
