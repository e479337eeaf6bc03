"""The referral form's dates in the source's format (gateway.web.dates), read back on the server."""

from __future__ import annotations

import pytest

from gateway.config import SourceConfig
from gateway.referral.document import Referral
from gateway.web.dates import ISO_DATES, DateFormat
from gateway.web.forms import form_values, parse_referral_form


def _source(**fields) -> DateFormat:
    source = SourceConfig.model_validate({"name": "s", "ae_title": "S", **fields})
    return DateFormat.of(source.locale, source.day_first)


@pytest.mark.parametrize(("fields", "pattern", "example"), [
    ({}, "dd/mm/yyyy", "19/01/1959"),  # the default locale, en-GB
    ({"locale": "en-US"}, "mm/dd/yyyy", "01/19/1959"),
    ({"locale": "de-DE"}, "dd.mm.yyyy", "19.01.1959"),
    ({"locale": "nl-NL"}, "dd-mm-yyyy", "19-01-1959"),
    ({"locale": "sv-SE"}, "yyyy-mm-dd", "1959-01-19"),
    ({"locale": "en-GB", "date_order": "month_first"}, "mm/dd/yyyy", "01/19/1959"),
])
def test_a_source_writes_dates_in_its_locale(fields, pattern, example):
    dates = _source(**fields)
    assert (dates.pattern, dates.example) == (pattern, example)
    assert dates.parse(example) == "1959-01-19"
    assert dates.parse("1959-01-19") == "1959-01-19", "ISO is read whatever the locale"
    assert dates.written("1959-01-19") == example


def test_a_uk_date_is_day_first_and_a_us_date_month_first():
    assert _source(locale="en-GB").parse("02/03/2020") == "2020-03-02"
    assert _source(locale="en-US").parse("02/03/2020") == "2020-02-03"
    assert _source(locale="en-GB").parse(" 2/3/2020 ") == "2020-03-02"


@pytest.mark.parametrize(("typed", "message"), [
    ("19591901", "write the date as dd/mm/yyyy, e.g. 19/01/1959"),
    ("1/19/1959", "there is no such date: write it as dd/mm/yyyy, e.g. 19/01/1959"),
    ("31/02/2020", "there is no such date"),
    ("19/01/59", "write the year with four digits"),
    ("19/01/1959/1", "write the date as dd/mm/yyyy"),
    ("１９/01/1959", "write the date as dd/mm/yyyy"),  # full-width digits: not the ASCII a PACS takes
])
def test_a_date_not_in_the_format_says_how_to_write_it(typed, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _source().parse(typed)


def test_the_form_reads_its_dates_in_the_source_format_and_keeps_them_as_typed():
    fields = {"patient.family": "Doe", "patient.id": "P1", "accession_number": "A1",
              "patient.birth_date": "19/01/1959", "study_date": "02/03/2020"}
    good = parse_referral_form(fields, [], "st-marys", dates=_source())
    assert good.errors == {}
    assert str(good.value.patient.birth_date) == "1959-01-19" and str(good.value.study_date) == "2020-03-02"
    us = parse_referral_form(fields, [], "st-marys", dates=_source(locale="en-US"))
    assert us.errors == {"patient.birth_date": ["there is no such date: write it as mm/dd/yyyy, e.g. 01/19/1959"]}
    assert us.value is None and us.values["patient.birth_date"] == "19/01/1959", "the text stays as typed"
    future = parse_referral_form({**fields, "patient.birth_date": "01/01/2030"}, [], "st-marys", dates=_source())
    assert "in the future" in future.errors["patient.birth_date"][0], "the schema's checks still run"


def test_a_correction_shows_the_stored_dates_in_the_source_format():
    document = Referral.model_validate({"source": "st-marys", "accession_number": "A1", "patient": {
        "id": "P1", "name": "Doe^Jane", "birth_date": "1959-01-19"}, "study_date": "2020-03-02"})
    assert form_values(document, _source(locale="de-DE"))["patient.birth_date"] == "19.01.1959"
    assert form_values(document, _source(locale="de-DE"))["study_date"] == "02.03.2020"
    assert form_values(document)["patient.birth_date"] == "1959-01-19" == ISO_DATES.written("1959-01-19")
