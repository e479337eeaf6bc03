"""The referrer's case list in pages (``views.referrer_cases``): every referral and every study without one of the
source, once each, newest first across the pages, rows sharing a time at a page's end kept together, another
source's rows never, and a critical result's state on its row."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.storage.models import CriticalResult, Referral, Source, Study, open_database, utcnow
from gateway.web import views

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def sources(database_url):
    database = open_database(database_url, max_connections=2)
    with database.connection_context():
        yield Source.create(name="st-marys", ae_title="STMARYS_PACS"), Source.create(name="north", ae_title="NORTH")
    database.close_all()


#: The source's rows in the order made: (kind, hours before now), kind "r" a referral matched to its study, "w" a
#: referral waiting (its study is listed too, as one without a referral) or "s" a study without one. Several share
#: a time, across a page's end too (pages of 3).
MINE = [("r", 0), ("s", 1), ("w", 2), ("s", 2), ("r", 3), ("r", 3), ("s", 3), ("r", 3), ("w", 4), ("s", 5), ("r", 6)]
OTHER = [("r", 2), ("s", 3)]


def _fill(mine: Source, other: Source) -> list[tuple[str, str]]:
    """The rows of ``MINE`` and ``OTHER``; ``mine``'s as the list shows them: (received, accession or "")."""
    now = utcnow().replace(microsecond=0)
    expected = []
    for n, (kind, hours) in enumerate([*MINE, *OTHER]):
        source, at = (mine if n < len(MINE) else other), now - dt.timedelta(hours=hours)
        study = Study.create(study_uid=f"2.25.6{n}", source=source, calling_ae="X", first_received_at=at)
        rows = [(views.when(at), "")]
        if kind in "rw":
            Referral.create(source=source, accession_number=f"A{n}", patient_id="P", document="{}",
                            received_via="http", received_at=at, study=study if kind == "r" else None)
            rows = [(views.when(at), f"A{n}")] + (rows if kind == "w" else [])
        if n == 7:
            CriticalResult.create(study=study, flagged_by="cli")
        expected += rows if source == mine else []
    return expected


def test_the_pages_hold_every_case_once_newest_first(sources):
    expected = _fill(*sources)
    pages: list[list[tuple[str, str]]] = []
    before = None
    while True:
        page = views.referrer_cases("st-marys", before, limit=3)
        pages.append([(row.received, row.accession) for row in page.rows])
        if page.older is None:
            break
        before = page.older
    assert sorted(row for page in pages for row in page) == sorted(expected)  # each once
    in_place = [[row for row in page if row[1] != "A7"] for page in pages]  # A7, critical, is on the first page
    assert all(min(newer)[0] > max(older)[0] for newer, older in zip(in_place, in_place[1:], strict=False))
    assert len(pages) >= 4 and max(len(page) for page in pages) > 3  # rows sharing a time kept together
    assert views.referrer_cases("st-marys").older is None  # one page of the default size holds them all
    assert [row.critical for row in views.referrer_cases("st-marys").rows if row.accession == "A7"] == ["new"]
    assert views.referrer_cases("st-marys").rows[0].accession == "A7"  # an unacknowledged critical result first
    assert ("A7", "new") in [(row.accession, row.critical) for row in views.referrer_cases("st-marys", limit=3).rows]


def test_a_critical_result_not_acknowledged_is_on_the_first_page_only(sources):
    expected = _fill(*sources)
    first = views.referrer_cases("st-marys", limit=3)
    assert first.rows[0].accession == "A7" and first.rows[0].critical == "new" and len(first.rows) > 3
    rest, before = [], first.older
    while before is not None:
        page = views.referrer_cases("st-marys", before, limit=3)
        rest += [(row.received, row.accession) for row in page.rows]
        before = page.older
    assert sorted([(row.received, row.accession) for row in first.rows] + rest) == sorted(expected)
    CriticalResult.update(acknowledged_at=utcnow()).execute()  # acknowledged: back in its place, one page further
    assert "A7" not in [row.accession for row in views.referrer_cases("st-marys", limit=3).rows]
    assert views.referrer_cases("nowhere") == views.ReferrerPage([], None)
