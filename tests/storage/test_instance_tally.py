"""``instance_tally`` (instances by state, the spool's bytes) and ``study.has_referral`` are kept by the database's
triggers (migration 18): after a mixed workload (inserts one by one and in bulk, state moves, a size change, deletes,
a case deleted with its instances by cascade, writers on several connections at once, transactions rolled back),
they equal a full count, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import peewee
import pytest

from gateway.storage.models import (
    Instance,
    InstanceState,
    Referral,
    Series,
    Source,
    Study,
    db,
    instance_tally,
    migrate,
    open_database,
    recount_instance_tally,
)

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


class Rollback(Exception):
    """Raised inside a transaction to roll it back, as a crash between its writes and its commit would."""


def _case(source: Source, n: int) -> tuple[Study, Series]:
    study = Study.create(study_uid=f"2.25.9{n}", source=source, calling_ae="STMARYS_PACS")
    return study, Series.create(study=study, series_uid=f"2.25.8{n}", modality="MR")


def _instance(study: Study, series: Series, n: int, size: int = 1000, state: str = InstanceState.STORED) -> dict:
    return {"study": study.id, "series": series.id, "sop_instance_uid": f"2.25.7{study.id}.{n}",
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4", "transfer_syntax": "1.2.840.10008.1.2.1", "size": size,
            "sha256": f"{study.id}-{n}", "spool_path": f"objects/{study.id}/{n}", "calling_ae": "STMARYS_PACS",
            "state": state}


def _full_count() -> tuple[dict[str, int], int]:
    counts = {state: n for state, n in Instance.select(Instance.state, peewee.fn.COUNT(Instance.id))
              .group_by(Instance.state).tuples()}
    return counts, int(Instance.select(peewee.fn.COALESCE(peewee.fn.SUM(Instance.size), 0)).scalar())


def _referral_flags() -> dict[int, tuple[bool, bool]]:
    """Study id → (has_referral, whether a referral points at it)."""
    referred = {row.study_id for row in Referral.select(Referral.study).where(Referral.study.is_null(False))}
    return {study.id: (bool(study.has_referral), study.id in referred) for study in Study.select()}


@pytest.fixture
def database(database_url):
    database = open_database(database_url, max_connections=8)
    with database.connection_context():
        yield database, Source.create(name="st-marys", ae_title="STMARYS_PACS")
    database.close_all()


def test_the_tally_equals_a_full_count_after_a_mixed_workload(database):
    _, source = database
    studies = [_case(source, n) for n in range(4)]
    for n in range(5):  # one at a time, as the receiver's group commit does
        Instance.insert(_instance(*studies[0], n, size=1000 + n)).execute()
    Instance.insert_many([_instance(*studies[1], n) for n in range(30)]).execute()  # in bulk, as priors and the bench
    Instance.insert_many([_instance(*studies[2], n, state=InstanceState.QUARANTINED) for n in range(3)]).execute()
    Instance.update(state=InstanceState.DEIDENTIFIED).where(Instance.study == studies[1][0].id).execute()
    Instance.update(state=InstanceState.SUPERSEDED, size=5).where(
        (Instance.study == studies[1][0].id) & (Instance.sop_instance_uid.endswith(".7"))).execute()
    Instance.update(size=Instance.size + 1).where(Instance.study == studies[0][0].id).execute()
    Instance.update(state=InstanceState.STORED).where(Instance.study == studies[2][0].id).execute()
    Instance.delete().where((Instance.study == studies[1][0].id) & (Instance.sop_instance_uid.endswith("3"))).execute()
    Instance.insert_many([_instance(*studies[3], n) for n in range(4)]).execute()
    studies[3][0].delete_instance()  # its instances go by cascade
    counts, _ = instance_tally()
    assert (counts, _) == _full_count()
    assert counts[InstanceState.DEIDENTIFIED] == 26 and InstanceState.QUARANTINED not in counts


def test_a_rolled_back_transaction_leaves_the_tally_right(database):
    _, source = database
    study, series = _case(source, 0)
    Instance.insert_many([_instance(study, series, n) for n in range(6)]).execute()
    before = instance_tally()
    with pytest.raises(Rollback), db.atomic():
        Instance.insert_many([_instance(study, series, n) for n in range(6, 10)]).execute()
        Instance.update(state=InstanceState.DEIDENTIFIED).where(Instance.study == study.id).execute()
        Instance.delete().where(Instance.sop_instance_uid.endswith(".0")).execute()
        raise Rollback
    with pytest.raises(peewee.IntegrityError), db.atomic():  # a statement refused half-way (a duplicate) rolls back
        Instance.insert_many([_instance(study, series, 20), _instance(study, series, 1)]).execute()
    assert instance_tally() == before == _full_count()
    assert before == ({InstanceState.STORED: 6}, 6000)


def test_writers_on_several_connections_at_once_sum_exactly(database):
    """On PostgreSQL each connection adds to its own row of the tally; the sum is the count whatever the rows."""
    database_, source = database
    cases = [_case(source, n) for n in range(4)]
    errors: list[BaseException] = []

    def write(study: Study, series: Series) -> None:
        try:
            with database_.connection_context():
                for n in range(10):
                    with db.atomic():
                        Instance.insert(_instance(study, series, n)).execute()
                        if n % 3 == 0:
                            Instance.update(state=InstanceState.DEIDENTIFIED).where(
                                Instance.sop_instance_uid == f"2.25.7{study.id}.{n}").execute()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=case) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert instance_tally() == _full_count() == ({InstanceState.STORED: 24, InstanceState.DEIDENTIFIED: 16}, 40000)


def test_has_referral_follows_the_referral_that_matches_the_case(database):
    _, source = database
    studies = [_case(source, n)[0] for n in range(4)]

    def referral(accession: str, study: Study | None) -> Referral:
        return Referral.create(source=source, accession_number=accession, patient_id="P", document="{}",
                               received_via="http", study=study)

    first = referral("A1", studies[0])  # created matched
    second = referral("A2", None)  # waiting, then matched
    Referral.update(study=studies[1]).where(Referral.id == second.id).execute()
    Referral.update(study=studies[2]).where(Referral.id == first.id).execute()  # moved to another case
    third = referral("A3", studies[3])
    with pytest.raises(Rollback), db.atomic():
        Referral.update(study=None).where(Referral.id == third.id).execute()
        raise Rollback
    Referral.delete().where(Referral.id == second.id).execute()
    flags = _referral_flags()
    assert all(flag == referred for flag, referred in flags.values())
    assert [flags[study.id][0] for study in studies] == [False, False, True, True]


def test_migration_18_counts_an_existing_database(database):
    """A database of release 17 (no tally, no triggers, no flag) gets them filled from its rows; again, nothing."""
    database_, source = database
    study, series = _case(source, 0)
    other, _ = _case(source, 1)
    Instance.insert_many([_instance(study, series, n, state=InstanceState.DEIDENTIFIED) for n in range(7)]).execute()
    Referral.create(source=source, accession_number="A", patient_id="P", document="{}", received_via="http",
                    study=other)
    _back_to_release_17(database_)
    Instance.insert(_instance(study, series, 99)).execute()  # written by a node of release 17: no trigger
    Study.update(has_referral=False).execute()
    assert migrate(database_) == 18
    assert instance_tally() == _full_count() == ({InstanceState.DEIDENTIFIED: 7, InstanceState.STORED: 1}, 8000)
    assert all(flag == referred for flag, referred in _referral_flags().values())
    assert _referral_flags()[other.id] == (True, True)
    assert migrate(database_) == 18
    assert instance_tally() == _full_count()


def _back_to_release_17(database: peewee.Database) -> None:
    postgres = isinstance(database, peewee.PostgresqlDatabase)
    triggers = [("instance", "instance_tally_inserts"), ("instance", "instance_tally_deletes"),
                ("instance", "instance_tally_updates"),
                ("referral", "study_referral_rows"), ("referral", "study_referral_moves")] if postgres else [
        (None, name) for name in ("instance_tally_insert", "instance_tally_delete", "instance_tally_move",
                                  "study_referral_insert", "study_referral_delete", "study_referral_move")]
    for table, name in triggers:
        database.execute_sql(f'DROP TRIGGER "{name}"' + (f' ON "{table}"' if table else ""))
    database.execute_sql('DROP TABLE "instance_tally"')
    database.execute_sql("DELETE FROM schema_version WHERE version = 18")


def test_a_recount_puts_a_wrong_tally_right(database):
    """After rows loaded with the triggers off (a restore of data only), the documented recount mends the tally."""
    _, source = database
    study, series = _case(source, 0)
    Instance.insert_many([_instance(study, series, n) for n in range(3)]).execute()
    db.execute_sql('UPDATE "instance_tally" SET "stored" = "stored" + 40, "bytes" = 7')
    assert instance_tally() != _full_count()
    recount_instance_tally()
    assert instance_tally() == _full_count() == ({InstanceState.STORED: 3}, 3000)


def test_two_connections_locking_a_study_and_the_tally_in_opposite_order_do_not_deadlock(database):
    """PostgreSQL: each backend writes its own tally row. With rows shared by backend id modulo 64, two
    connections on one row deadlocked when one held the tally row and waited for a study row the other held while
    the other, inserting instances, waited for the tally row: PostgreSQL then aborted one (a C-STORE answered
    0xA700). Here two connections that would have shared a row do just that, and both commit."""
    database_, source = database
    if not isinstance(database_, peewee.PostgresqlDatabase):
        pytest.skip("SQLite has one writer at a time")
    import psycopg2

    study, series = _case(source, 1)
    opened, pair = [], None
    try:
        while pair is None and len(opened) < 65:  # 65 connections hold two backend ids equal modulo 64
            connection = psycopg2.connect(dbname=database_.database, **database_.connect_params)
            connection.autocommit = False
            pid = connection.get_backend_pid()
            pair = next(((other, connection) for other in opened if other.get_backend_pid() % 64 == pid % 64), None)
            opened.append(connection)
        first, second = pair
        insert = ('INSERT INTO "instance" (study_id, series_id, sop_instance_uid, sop_class_uid, transfer_syntax, '
                  "size, sha256, spool_path, calling_ae, state, received_at, version) "
                  "VALUES (%s, %s, %s, '1.2', '1.2.840.10008.1.2.1', 10, %s, %s, 'STMARYS_PACS', 'stored', now(), 1)")
        touch = 'UPDATE "study" SET "calling_ae" = "calling_ae" WHERE "id" = %s'
        first.cursor().execute(insert, (study.id, series.id, "2.25.61", "a", "objects/a"))
        second.cursor().execute(touch, (study.id,))
        blocked = threading.Thread(target=lambda: (first.cursor().execute(touch, (study.id,)), first.commit()))
        blocked.start()  # waits for the study row, holding its tally row
        second.cursor().execute(insert, (study.id, series.id, "2.25.62", "b", "objects/b"))
        second.commit()
        blocked.join(timeout=60)
        assert not blocked.is_alive()
    finally:
        for connection in opened:
            connection.close()
    assert instance_tally() == _full_count() == ({InstanceState.STORED: 2}, 20)


def test_the_rows_of_connections_that_are_gone_are_folded_into_one(database):
    """PostgreSQL: a row per backend that changed instances; once those backends are gone, reading the tally past
    TALLY_FOLD_ROWS rows folds them into slot 0, and the sum stays exact."""
    database_, source = database
    if not isinstance(database_, peewee.PostgresqlDatabase):
        pytest.skip("SQLite keeps slot 0 only")
    import psycopg2

    from gateway.storage.models import TALLY_FOLD_ROWS, InstanceTally, fold_instance_tally

    study, series = _case(source, 2)
    for n in range(TALLY_FOLD_ROWS + 2):
        connection = psycopg2.connect(dbname=database_.database, **database_.connect_params)
        with connection, connection.cursor() as cursor:
            cursor.execute('INSERT INTO "instance" (study_id, series_id, sop_instance_uid, sop_class_uid, '
                           "transfer_syntax, size, sha256, spool_path, calling_ae, state, received_at, version) VALUES "
                           "(%s, %s, %s, '1.2', '1.2.840.10008.1.2.1', 5, %s, %s, 'STMARYS_PACS', 'stored', now(), 1)",
                           (study.id, series.id, f"2.25.63.{n}", f"f{n}", f"objects/f{n}"))
        connection.close()
    assert InstanceTally.select().count() > TALLY_FOLD_ROWS
    deadline = time.monotonic() + 30
    while InstanceTally.select().count() > 2 and time.monotonic() < deadline:
        fold_instance_tally()  # a backend leaves pg_stat_activity shortly after its connection closes
    assert InstanceTally.select().count() <= 2  # slot 0 and this test's own connection
    assert instance_tally() == _full_count() == ({InstanceState.STORED: TALLY_FOLD_ROWS + 2}, 5 * (TALLY_FOLD_ROWS + 2))
