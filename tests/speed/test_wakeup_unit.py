"""Wake-ups inside one process: delivered after the commit and never before, lost on rollback, coalesced runs,
timers, and PostgreSQL's NOTIFY (sent in the transaction, heard by a listener that reconnects)."""

from __future__ import annotations

import datetime as dt
import select
import subprocess
import sys
import threading

import peewee
import psycopg2
import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from gateway.storage import cases, wakeup
from gateway.storage.models import CaseState, Source, Study, db, make_database, open_database, utcnow
from support.peers import wait_until

OWNER = cases.LeaseOwner("node-a")  # the claims' owner, as a node's context hands it in


def test_a_wake_during_a_run_makes_exactly_one_more_run_and_never_two_at_once():
    started, release = threading.Event(), threading.Event()
    runs, active, most_active, kicks = [], [0], [0], []

    def work() -> None:
        active[0] += 1
        most_active[0] = max(most_active[0], active[0])
        runs.append(1)
        if len(runs) == 1:
            started.set()
            release.wait(30)
        active[0] -= 1

    run = wakeup.CoalescedRun(work, kick=lambda: kicks.append(1))
    first = threading.Thread(target=run.run)
    first.start()
    assert started.wait(30)
    run.wake()
    run.wake()
    run.run()  # the poll firing meanwhile: it must not start a second run of the stage
    assert kicks == [] and len(runs) == 1
    release.set()
    first.join(30)
    assert len(runs) == 2, "the wake-ups during the run make one more run, coalesced"
    assert most_active[0] == 1
    run.wake()
    assert kicks == [1], "an idle stage is scheduled at once"


@pytest.fixture
def case_db(database_url):
    database = open_database(database_url, max_connections=4)
    other = make_database(database_url, max_connections=2)  # a second connection pool: sees committed rows only
    with database.connection_context():
        source, _ = Source.get_or_create(name="st-marys", defaults={"ae_title": "STMARYS_PACS"})
        study = Study.create(study_uid="1.2.826.0.1.3680043.2.1125.9.1", calling_ae="STMARYS_PACS", source=source,
                             state=CaseState.NOTES_ATTACHED, reviewer="dr-a")
    hub = wakeup.Wakeups("node-a", database).start()
    wakeup.install(hub)
    yield database, other, study, hub
    wakeup.install(None)
    hub.stop()
    other.close()
    database.close()


def _committed_state(other, study: Study) -> str:
    with other.connection_context():
        return other.execute_sql("SELECT state FROM study WHERE id = %s".replace("%s", other.param),
                                 (study.id,)).fetchone()[0]


def test_a_state_change_wakes_its_stage_after_the_commit_and_not_after_a_rollback(case_db):
    database, other, study, hub = case_db
    seen: list[str] = []
    hub.subscribe({CaseState.ASSIGNED, CaseState.DELIVERING}, lambda: seen.append(_committed_state(other, study)))
    with database.connection_context():
        with db.atomic():
            assert cases.move(study, CaseState.ASSIGNED, reason="test")
            assert seen == [], "woken before the commit"
        assert seen == [CaseState.ASSIGNED], "woken once, and the woken stage sees the committed state"
        with pytest.raises(RuntimeError), db.atomic():
            assert cases.move(study, CaseState.DELIVERING, reason="test")
            raise RuntimeError("the transaction fails")
        assert seen == [CaseState.ASSIGNED], "a rolled-back change wakes nobody"
        study = Study.get_by_id(study.id)
        assert cases.move(study, CaseState.DELIVERING, reason="test")  # outside a transaction: committed already
        assert seen == [CaseState.ASSIGNED, CaseState.DELIVERING]


def test_a_move_under_a_claim_wakes_the_next_stage_once_the_claim_is_released(case_db):
    """Else the woken stage finds the case still claimed by the stage that moved it, and skips it."""
    database, _, study, hub = case_db
    could_claim: list[bool] = []

    def next_stage() -> None:
        could_claim.append(cases.claim(Study.get_by_id(study.id), "delivery", owner=OWNER))

    hub.subscribe({CaseState.ASSIGNED}, next_stage)
    with database.connection_context():
        with cases.claimed(study, CaseState.NOTES_ATTACHED, stage="assignment", owner=OWNER) as mine:
            assert mine
            with db.atomic():
                assert cases.move(study, CaseState.ASSIGNED, reason="test")
            assert could_claim == [], "woken while the case is still claimed"
        assert could_claim == [True]


def test_a_stage_that_finds_a_case_claimed_elsewhere_looks_again_when_the_lease_ends(case_db):
    """The holder's release normally wakes the stage; should that wake-up be lost (another node died holding the
    case, a NOTIFY went missing), the stage still looks again at the end of the lease, not at its next poll."""
    database, _, study, hub = case_db
    woken_at: list[dt.datetime] = []
    hub.subscribe(wakeup.topics_of("assignment"), lambda: woken_at.append(utcnow()))
    with database.connection_context():
        lease_end = utcnow() + dt.timedelta(seconds=0.5)
        Study.update(claimed_by="node-b/notes", claimed_until=lease_end).where(Study.id == study.id).execute()
        with cases.claimed(study, CaseState.NOTES_ATTACHED, stage="assignment", owner=OWNER) as mine:
            assert not mine
        wait_until(lambda: woken_at, 30, "the stage woken at the end of the other node's lease")
        assert woken_at[0] >= lease_end
        with cases.claimed(study, CaseState.NOTES_ATTACHED, stage="assignment", owner=OWNER) as mine:
            assert mine, "the lease has ended: the case is the stage's now"


def test_an_event_topic_and_a_timer_wake_their_stage(case_db):
    database, _, _, hub = case_db
    woken: list[str] = []
    hub.subscribe({wakeup.REFERRAL}, lambda: woken.append(wakeup.REFERRAL))
    hub.subscribe({wakeup.STABLE}, lambda: woken.append(wakeup.STABLE))
    with database.connection_context(), db.atomic():
        wakeup.notify(wakeup.REFERRAL)
        assert woken == []
    assert woken == [wakeup.REFERRAL]
    wakeup.wake_at(wakeup.STABLE, utcnow())  # due now: delivered by the timer thread
    wait_until(lambda: wakeup.STABLE in woken, 30, "the timer to fire")


def test_a_timer_just_past_fires_at_once_and_one_long_past_a_second_later():
    """A study turns stable the instant the completion stage looks: the timer it sets is already a few
    milliseconds past and must not wait the second meant for a stuck case (it cost every study a second)."""
    now = utcnow()
    assert wakeup.timer_delay_s(now + dt.timedelta(seconds=2), now) == 2.0
    assert wakeup.timer_delay_s(now - dt.timedelta(milliseconds=5), now) == wakeup.JUST_PASSED_DELAY_S < 0.1
    assert wakeup.timer_delay_s(now - dt.timedelta(seconds=5), now) == wakeup.PAST_DUE_DELAY_S


@pytest.fixture
def shared_scheduler():
    """A scheduler standing for the node's: the hub's timers go on it, not on a thread of their own."""
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.start()
    yield scheduler
    scheduler.shutdown(wait=True)


def _timer_hub(scheduler=None) -> tuple[wakeup.Wakeups, list[tuple[str, dt.datetime]]]:
    hub = wakeup.Wakeups("node-a", peewee.SqliteDatabase(":memory:"), scheduler=scheduler).start()
    delivered: list[tuple[str, dt.datetime]] = []
    hub.subscribe({wakeup.STABLE, CaseState.DELIVERING},
                  lambda: delivered.append((wakeup.STABLE, utcnow())))
    return hub, delivered


def test_timers_are_date_jobs_on_the_node_scheduler_one_per_topic(shared_scheduler):
    hub, delivered = _timer_hub(shared_scheduler)
    try:
        soon = utcnow() + dt.timedelta(seconds=0.3)
        hub.wake_at(wakeup.STABLE, soon + dt.timedelta(seconds=60))
        hub.wake_at(wakeup.STABLE, soon + dt.timedelta(seconds=30))
        hub.wake_at(wakeup.STABLE, soon + dt.timedelta(seconds=30))  # the same time twice is kept once
        jobs = [job for job in shared_scheduler.get_jobs() if job.id.startswith("wakeup-timer:")]
        assert [job.id for job in jobs] == ["wakeup-timer:stable"], "one job per topic"
        assert len(hub.pending_timers()) == 2
        assert not any(t.name == "wakeup-timers" for t in threading.enumerate()), "no timer thread of its own"
        hub.wake_at(wakeup.STABLE, soon)  # earlier: the topic's job moves to it
        moved = shared_scheduler.get_job("wakeup-timer:stable").next_run_time
        assert abs((moved - soon.replace(tzinfo=dt.UTC)).total_seconds()) < 0.05
        wait_until(lambda: delivered, 30, "the earliest timer to fire")
        assert delivered[0][1] >= soon and len(delivered) == 1
        assert [when for when, _ in hub.pending_timers()] == sorted(when for when, _ in hub.pending_timers())
        assert len(hub.pending_timers()) == 2, "the later times are still to come, not replaced"
        job = shared_scheduler.get_job("wakeup-timer:stable")
        assert abs((job.next_run_time - (soon + dt.timedelta(seconds=30)).replace(tzinfo=dt.UTC))
                   .total_seconds()) < 0.05, "re-armed for the next time"
    finally:
        hub.stop()


def test_a_later_timer_still_fires_after_an_earlier_one(shared_scheduler):
    hub, delivered = _timer_hub(shared_scheduler)
    try:
        first, second = utcnow() + dt.timedelta(seconds=0.6), utcnow() + dt.timedelta(seconds=0.2)
        hub.wake_at(CaseState.DELIVERING, first)
        hub.wake_at(CaseState.DELIVERING, second)  # armed after, due before
        wait_until(lambda: len(delivered) == 2, 30, "both timers to fire")
        assert second <= delivered[0][1] < first <= delivered[1][1]
        assert hub.pending_timers() == [] and shared_scheduler.get_job("wakeup-timer:delivering") is None
    finally:
        hub.stop()


def test_stopping_the_hub_cancels_its_timers_and_leaves_the_node_scheduler_running(shared_scheduler):
    hub, delivered = _timer_hub(shared_scheduler)
    hub.wake_at(wakeup.STABLE, utcnow() + dt.timedelta(seconds=0.3))
    hub.stop()
    assert hub.pending_timers() == [] and shared_scheduler.get_jobs() == []
    later = threading.Event()  # a job of the same scheduler, due after the cancelled timer
    shared_scheduler.add_job(later.set, "date", run_date=utcnow().replace(tzinfo=dt.UTC) + dt.timedelta(seconds=0.6))
    assert later.wait(30) and shared_scheduler.running
    assert delivered == [], "a cancelled timer fired"
    hub.wake_at(wakeup.STABLE, utcnow())  # a stopped hub arms nothing
    assert hub.pending_timers() == [] and shared_scheduler.get_jobs() == []


def _scheduler_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "APScheduler")


def test_a_hub_without_a_scheduler_runs_its_own_until_stopped():
    before = _scheduler_threads()
    hub, delivered = _timer_hub()
    assert _scheduler_threads() == before + 1
    hub.wake_at(wakeup.STABLE, utcnow())
    wait_until(lambda: delivered, 30, "the timer to fire on the hub's own scheduler")
    hub.wake_at(wakeup.STABLE, utcnow() + dt.timedelta(seconds=60))
    hub.stop()
    assert hub.pending_timers() == []
    assert _scheduler_threads() == before, "its scheduler is shut down"


def _listen(url_db: str):
    conn = psycopg2.connect(**url_db)
    conn.autocommit = True
    conn.cursor().execute(f"LISTEN {wakeup.CHANNEL}")
    return conn


def _payloads(conn, timeout: float) -> list[str]:
    if select.select([conn], [], [], timeout)[0]:
        conn.poll()
    payloads = [n.payload for n in conn.notifies]
    conn.notifies.clear()
    return payloads


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_notify_is_sent_in_the_transaction_and_heard_by_other_nodes(case_db):
    database, _, study, hub = case_db
    params = {"dbname": database.database, **{k: v for k, v in database.connect_params.items()
                                               if k in ("user", "password", "host", "port") and v is not None}}
    other_node = _listen(params)
    woken: list[str] = []
    hub.subscribe({CaseState.REPORTED}, lambda: woken.append(CaseState.REPORTED))
    wait_until(hub.listener.connected.is_set, 30, "the listener to LISTEN")
    with database.connection_context():
        with db.atomic():
            assert cases.move(study, CaseState.ASSIGNED, reason="test")
            assert _payloads(other_node, 0.3) == [], "NOTIFY must not be delivered before the commit"
        assert _payloads(other_node, 30) == [f"{CaseState.ASSIGNED} node-a"]

        # Another node's NOTIFY wakes this node's subscribers through the listener.
        sender = psycopg2.connect(**params)
        sender.autocommit = True
        sender.cursor().execute("SELECT pg_notify(%s, %s)", (wakeup.CHANNEL, f"{CaseState.REPORTED} node-b"))
        wait_until(lambda: woken == [CaseState.REPORTED], 30, "NOTIFY from node-b to wake the subscriber")

        # The listener's connection breaks: it reconnects, wakes everyone (it may have missed some), and hears again.
        hub.listener.break_connection()
        wait_until(lambda: len(woken) >= 2, 60, "the listener to reconnect and wake every stage")
        wait_until(hub.listener.connected.is_set, 30, "the listener to LISTEN again")
        woken.clear()
        sender.cursor().execute("SELECT pg_notify(%s, %s)", (wakeup.CHANNEL, f"{CaseState.REPORTED} node-b"))
        wait_until(lambda: woken == [CaseState.REPORTED], 30, "NOTIFY heard after the reconnection")
        sender.close()
    other_node.close()


def test_a_hub_that_keeps_no_timer_never_loads_the_scheduler():
    """A receiving process or a CLI command builds a hub whose timers go elsewhere: APScheduler stays unloaded."""
    code = ("import sys, peewee\n"
            "from gateway.storage import wakeup\n"
            "hub = wakeup.CommandWakeups(peewee.SqliteDatabase(':memory:'), '/nonexistent')\n"
            "hub.wake_at(wakeup.STABLE, None)\n"
            "hub.stop()\n"
            "print('apscheduler' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
