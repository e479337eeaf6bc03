"""Parsing referral documents (JSON and YAML) into the Referral model."""

from __future__ import annotations

import copy
import datetime
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.referral.codes import RedFlag
from gateway.referral.document import Referral, Urgency, parse_referral
from gateway.referral.errors import ReferralValidationError

VALID = {
    "source": "st-marys", "accession_number": "A1234567",
    "patient": {"id": "MRN0012345", "name": "Doe^Jane", "birth_date": "1971-04-12"},
    "urgency": "routine",
    "referrer": {"name": "Dr Alan Smith", "contact": "alan.smith@stmarys.example, +44 20 7946 0000"},
    "clinical": {
        "history": "Low back pain for 10 weeks.", "symptoms": "Burning pain in the left calf.",
        "pain": {"location": "lower back radiating to the left calf", "intensity": 7,
                 "nature": "burning, shooting", "duration_weeks": 10, "radiation": "L5 dermatome"},
        "red_flags": ["progressive_neurological_deficit"],
        "examination": "EHL power 4/5.", "emg": "Not done.", "prior_treatment": "Physiotherapy.",
        "prior_imaging": "None.", "question": "Nerve root compression at L4-L5?",
    },
    "subspecialty": "spine", "study_date": "2024-03-05",
}


def _problems(document: dict, fmt: str = "json") -> list[str]:
    text = json.dumps(document) if fmt == "json" else yaml.safe_dump(document)
    with pytest.raises(ReferralValidationError) as caught:
        parse_referral(text, fmt=fmt)
    return caught.value.problems


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_valid_document_parses_in_both_formats(fmt):
    text = json.dumps(VALID) if fmt == "json" else yaml.safe_dump(VALID)
    referral = parse_referral(text.encode(), fmt=fmt)
    assert referral.accession_number == "A1234567"
    assert referral.patient.birth_date == datetime.date(1971, 4, 12)
    assert referral.clinical.pain.intensity == 7
    assert referral.clinical.red_flags == [RedFlag.PROGRESSIVE_NEUROLOGICAL_DEFICIT]
    assert referral.study_date == datetime.date(2024, 3, 5)


def test_yaml_with_unquoted_dates_parses():
    text = yaml.safe_dump(VALID).replace("'1971-04-12'", "1971-04-12")
    assert "birth_date: 1971-04-12" in text
    assert parse_referral(text, fmt="yaml").patient.birth_date == datetime.date(1971, 4, 12)


def test_missing_accession_is_named():
    document = copy.deepcopy(VALID)
    del document["accession_number"]
    assert _problems(document) == ["accession_number: required"]


def test_blank_accession_is_refused():
    document = dict(VALID, accession_number="   ")
    assert _problems(document) == ["accession_number: must not be empty"]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_pain_intensity_out_of_range_names_path_and_value(fmt):
    document = copy.deepcopy(VALID)
    document["clinical"]["pain"]["intensity"] = 14
    assert _problems(document, fmt) == ["clinical.pain.intensity: must be between 0 and 10 (got 14)"]


def test_unknown_red_flag_is_named_with_its_index():
    document = copy.deepcopy(VALID)
    document["clinical"]["red_flags"].append("sore_toe")
    [problem] = _problems(document)
    assert problem.startswith("clinical.red_flags.1: must be one of:")
    assert problem.endswith("(got 'sore_toe')")


@pytest.mark.parametrize("path", [("extra",), ("patient", "nhs_number"), ("clinical", "pain", "side")])
def test_unknown_key_is_refused_with_its_path(path):
    document = copy.deepcopy(VALID)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "x"
    assert _problems(document) == [f"{'.'.join(path)}: unknown field"]


def test_problem_lines_never_echo_free_text():
    document = copy.deepcopy(VALID)
    document["patient"]["name"] = ["Doe", "Jane"]
    document["patient"]["birth_date"] = "12/04/1971"
    document["referrer"]["contact"] = {"phone": "+44 20 7946 0000"}
    problems = _problems(document)
    assert [p.split(":")[0] for p in problems] == ["patient.name", "patient.birth_date", "referrer.contact"]
    joined = " ".join(problems)
    for secret in ("Doe", "Jane", "1971", "7946"):
        assert secret not in joined


def test_invalid_urgency_echoes_enum_value():
    assert _problems(dict(VALID, urgency="soon")) == ["urgency: must be one of: 'routine' or 'urgent' (got 'soon')"]


@pytest.mark.parametrize("text,fmt,expected", [
    ("{not json", "json", "<document>: not valid JSON (line 1, column 2)"),
    ("[1, 2]", "json", "<document>: must be a mapping"),
    ("a: [1, 2", "yaml", "<document>: not valid YAML"),
    (b"\xff\xfe\x00", "json", "<document>: not UTF-8 text"),
])
def test_undecodable_documents(text, fmt, expected):
    with pytest.raises(ReferralValidationError) as caught:
        parse_referral(text, fmt=fmt)
    assert caught.value.problems[0].startswith(expected)


def test_unknown_format_is_a_value_error():
    with pytest.raises(ValueError, match="fmt"):
        parse_referral("{}", fmt="xml")


@pytest.mark.parametrize("flags,stated,expected", [
    ([], "routine", Urgency.ROUTINE),
    ([], "urgent", Urgency.URGENT),
    (["night_or_rest_pain", "no_improvement_6_weeks", "age_over_50_new_pain"], "routine", Urgency.ROUTINE),
    (["cauda_equina"], "routine", Urgency.URGENT),
    (["iv_drug_use"], "routine", Urgency.URGENT),
])
def test_effective_urgency(flags, stated, expected):
    document = copy.deepcopy(VALID)
    document["clinical"]["red_flags"] = flags
    document["urgency"] = stated
    assert parse_referral(json.dumps(document)).effective_urgency is expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200), st.sampled_from(["json", "yaml"]))
def test_any_input_parses_or_raises_the_validation_error(data, fmt):
    try:
        assert isinstance(parse_referral(data, fmt=fmt), Referral)
    except ReferralValidationError as error:
        assert error.problems and all("\n" not in p for p in error.problems)


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.integers() | st.text(max_size=10), lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.sampled_from(["source", "patient", "id", "x"]), c, max_size=3)))
def test_any_json_value_parses_or_raises_the_validation_error(value):
    try:
        parse_referral(json.dumps(value))
    except ReferralValidationError as error:
        assert all(":" in p for p in error.problems)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_patient_address_phones_email_and_other_ids_are_optional_fields(fmt):
    document = copy.deepcopy(VALID)
    document["patient"].update({
        "address": {"street": "14 Wychwood Crescent", "town": "Thrapston", "postcode": "NN14 4QT", "country": "UK"},
        "phones": ["01832 736415", "+44 7700 900123"], "email": "jane.doe@mail.example",
        "other_ids": ["NHS9434765919"]})
    text = json.dumps(document) if fmt == "json" else yaml.safe_dump(document)
    patient = parse_referral(text, fmt).patient
    assert patient.address.town == "Thrapston" and patient.address.region is None
    assert patient.phones == ["01832 736415", "+44 7700 900123"] and patient.other_ids == ["NHS9434765919"]
    assert patient.email == "jane.doe@mail.example"
    assert parse_referral(json.dumps(VALID)).patient.address is None


def test_a_bad_address_is_named_without_echoing_it():
    document = copy.deepcopy(VALID)
    document["patient"]["address"] = {"street": "14 Wychwood Crescent", "flat": "2"}
    document["patient"]["phones"] = "01832 736415"
    with pytest.raises(ReferralValidationError) as error:
        parse_referral(json.dumps(document))
    assert error.value.problems == ["patient.address.flat: unknown field", "patient.phones: must be a list"]
    assert "736415" not in str(error.value.problems)


@pytest.mark.parametrize("name", ["Al Mansoori^Khalid=المنصوري^خالد", "Yamada^Tarou=山田^太郎=やまだ^たろう",
                                  "=山田^太郎"])
def test_a_name_with_component_groups_is_a_dicom_name(name):
    document = copy.deepcopy(VALID)
    document["patient"]["name"] = name
    assert parse_referral(json.dumps(document)).patient.name == name


@pytest.mark.parametrize(("name", "problem"), [("A=B=C=D", "at most 3"), ("^Jane", "family name"),
                                               ("Doe\\Jane", "backslash")])
def test_a_name_a_pacs_cannot_take_is_refused(name, problem):
    document = copy.deepcopy(VALID)
    document["patient"]["name"] = name
    with pytest.raises(ReferralValidationError) as refused:
        parse_referral(json.dumps(document))
    assert problem in str(refused.value)
