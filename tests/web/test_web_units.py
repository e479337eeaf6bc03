"""Accounts, the login limiter, the forms and migration 5, without a browser."""

from __future__ import annotations

import random

import pytest

from gateway.accounts import users as accounts
from gateway.accounts.users import AccountError, add_user, check_password, disable_user, list_users
from gateway.config import GatewayConfig
from gateway.storage.models import MIGRATIONS, SchemaVersion, WebUser, db, make_database, migrate
from gateway.web.auth import OTHER_ADDRESSES, LoginLimiter, RefusedSignIns, session_of, start_session
from gateway.web.forms import parse_referral_form, parse_report_form

CONFIG = GatewayConfig.model_validate({
    "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
    "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}]})


def test_password_checks_hash_at_the_lowest_cpu_priority_one_per_address(database):
    """A sign-in flood's argon2id hashes run in threads at nice 19 (argon2's own lane threads inherit it), so
    DICOM and pages keep their latency on a two-core host; one check per address at a time."""
    import os
    import threading

    user = add_user(CONFIG, "desk", "referrer", "long enough password", source="st-marys")
    checks = accounts.PasswordChecks(concurrency=1, wait_s=5)
    nice = checks.hashing.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    assert nice == accounts.HASHING_NICE == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19, "only the hashing threads give way"
    assert checks.check(user, "long enough password", "10.0.0.1")
    assert not checks.check(user, "wrong password!", "10.0.0.1")
    started, release = threading.Event(), threading.Event()
    checks.hashing.submit(lambda: (started.set(), release.wait(10)))  # the slot's thread kept busy
    waiting = threading.Thread(target=checks.check, args=(user, "long enough password", "10.0.0.2"))
    waiting.start()
    started.wait(5)
    for _ in range(100):  # the waiting check has registered its address
        if "10.0.0.2" in checks._addresses:
            break
        threading.Event().wait(0.05)
    try:
        with pytest.raises(accounts.PasswordCheckBusy, match="under way"):
            checks.check(user, "long enough password", "10.0.0.2")
    finally:
        release.set()
        waiting.join(10)


@pytest.mark.slow  # argon2 hashes at full cost: 3 s
def test_a_clean_address_takes_the_next_password_slot_before_a_suspect_one(database):
    """During a sign-in flood, a check from an address that gave no wrong password lately (``first``) is served
    before the flood's waiting checks, whichever came first."""
    import threading
    import time

    user = add_user(CONFIG, "desk", "referrer", "long enough password", source="st-marys")
    checks = accounts.PasswordChecks(concurrency=1, wait_s=30)
    release = threading.Event()
    checks.hashing.submit(release.wait, 30)  # the one hashing thread busy: the slot's holder waits behind it
    done: dict[str, float] = {}

    def sign_in(address: str, first: bool) -> None:
        checks.check(user, "wrong password!", address, first=first)
        done[address] = time.monotonic()

    holder = threading.Thread(target=sign_in, args=("10.0.0.1", False))
    holder.start()
    _wait_for(lambda: checks._free == 0)
    flood = threading.Thread(target=sign_in, args=("10.0.0.2", False))
    flood.start()
    time.sleep(0.2)  # the flood's check is waiting first
    clean = threading.Thread(target=sign_in, args=("10.0.0.3", True))
    clean.start()
    _wait_for(lambda: checks._first_waiting == 1)
    release.set()
    for thread in (holder, flood, clean):
        thread.join(60)
    assert done["10.0.0.3"] < done["10.0.0.2"], "the clean address waited behind the flood"


def _wait_for(condition, seconds: float = 10) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_accounts_are_checked_hashed_and_disabled(database):
    with pytest.raises(AccountError, match="--source"):
        add_user(CONFIG, "x", "referrer", "long enough password")
    with pytest.raises(AccountError, match="--reviewer"):
        add_user(CONFIG, "x", "reviewer", "long enough password", reviewer="dr-z")
    with pytest.raises(AccountError, match="at least 10"):
        add_user(CONFIG, "x", "ops", "short")
    user = add_user(CONFIG, "desk", "referrer", "long enough password", source="st-marys")
    assert "long enough" not in user.password_hash and user.password_hash.startswith("$argon2id$")
    with pytest.raises(AccountError, match="exists"):
        add_user(CONFIG, "desk", "ops", "long enough password")
    assert check_password(user, "long enough password") and not check_password(user, "wrong password!")
    assert not check_password(None, "long enough password")
    assert not accounts._HASHER.check_needs_rehash(accounts._DUMMY_HASH)  # an unknown name costs the same
    token = start_session(user, hours=1)
    assert session_of(token).user.name == "desk" and session_of(token + "x") is None
    disable_user("desk")
    assert session_of(token) is None
    assert not check_password(WebUser.get(WebUser.name == "desk"), "long enough password")
    assert [a.enabled for a in list_users()] == [False]


def test_a_hash_with_the_old_parameters_still_verifies_and_is_replaced_at_sign_in(database):
    """Hashes stored before the parameters changed (argon2-cffi's default, 64 MiB) keep working, and the next
    successful sign-in stores one with today's (19 MiB): each check then holds a third of the memory."""
    from argon2 import PasswordHasher, extract_parameters

    user = add_user(CONFIG, "desk", "referrer", "long enough password", source="st-marys")
    assert extract_parameters(user.password_hash).memory_cost == accounts.HASH_MEMORY_KIB == 19 * 1024
    old = PasswordHasher().hash("long enough password")
    WebUser.update(password_hash=old).where(WebUser.id == user.id).execute()
    user = WebUser.get(WebUser.name == "desk")
    assert check_password(user, "long enough password")
    assert accounts.rehash_if_outdated(user, "long enough password")
    stored = WebUser.get(WebUser.name == "desk").password_hash
    assert stored != old and extract_parameters(stored).memory_cost == 19 * 1024
    assert check_password(WebUser.get(WebUser.name == "desk"), "long enough password")
    assert not accounts.rehash_if_outdated(WebUser.get(WebUser.name == "desk"), "long enough password")


def test_the_limiter_refuses_the_eleventh_wrong_password_for_a_minute():
    now = [1000.0]
    limiter = LoginLimiter(10, clock=lambda: now[0])
    for _ in range(10):
        assert limiter.allowed("desk", "10.0.0.1")
        limiter.failed("desk", "10.0.0.1")
    assert not limiter.allowed("desk", "10.0.0.1")
    assert not limiter.allowed("DESK", "10.0.0.1")
    assert limiter.allowed("desk", "10.0.0.2") and limiter.allowed("other", "10.0.0.1")
    now[0] += 61
    assert limiter.allowed("desk", "10.0.0.1")


def test_the_limiter_counts_attempts_per_address_and_globally_before_any_check():
    now = [1000.0]
    limiter = LoginLimiter(10, per_address=3, global_per_minute=6, clock=lambda: now[0])
    assert [limiter.admit(f"name{i}", "10.0.0.1") for i in range(3)] == [None] * 3  # counted on admission
    assert limiter.admit("another", "10.0.0.1") == 60.0  # the address's limit, whatever the name
    for address in ("10.0.0.2", "10.0.0.3"):
        assert limiter.admit("x", address) is None
        limiter.wrong_password(address)
    assert limiter.admit("x", "10.0.0.2") is None  # the sixth in all
    assert limiter.admit("y", "10.0.0.3") is not None, "the global limit holds an address that failed"
    assert limiter.admit("desk", "10.0.0.9") is None, "an address without a wrong password is spared"
    now[0] += 61
    assert limiter.admit("another", "10.0.0.1") is None


def test_the_limiter_stays_bounded_under_random_names_and_addresses():
    """A flood of random user names from random addresses (IPv6 gives an attacker millions) keeps each table at
    its bound, refused attempts add no key, and the newest keys are the ones kept."""
    now = [1000.0]
    limiter = LoginLimiter(10, per_address=3, global_per_minute=6, clock=lambda: now[0], max_keys=500)
    rng = random.Random(28)
    for i in range(20_000):
        address = f"2001:db8::{rng.randrange(1 << 32):x}"
        if limiter.admit(f"user{rng.randrange(10**9)}", address) is None and i % 3 == 0:
            limiter.wrong_password(address)
        limiter.refusals.note(address, "too many attempts")
        now[0] += 0.001  # 20,000 attempts within 20 s: every key is still inside the window
    assert limiter.tracked_keys() <= 4 * 500
    assert [limiter.admit("desk", "10.0.0.1") for _ in range(3)] == [None] * 3
    assert limiter.admit("desk", "10.0.0.1") is not None, "the newest keys keep their counts"


def test_refused_sign_ins_make_one_audit_row_per_address_per_minute():
    """A flood of refusals from one address: its first is audited, the rest of its minute are counted into its
    next row, or into a row of their own once a further minute has passed without one."""
    now = [1000.0]
    refusals = RefusedSignIns(clock=lambda: now[0])
    assert refusals.note("10.0.0.1", "password checks busy") == "password checks busy"
    for reason in ["wrong name or password"] * 3 + ["too many attempts"] * 500:
        now[0] += 0.01
        assert refusals.note("10.0.0.1", reason) is None
    assert refusals.note("10.0.0.2", "too many attempts") == "too many attempts", "each address has its own minute"
    assert refusals.due() == []
    now[0] += 60
    detail = refusals.note("10.0.0.1", "wrong name or password")
    assert detail == ("wrong name or password; 503 further refused sign-in(s), not recorded one by one: "
                      "500 too many attempts, 3 wrong name or password")
    refusals.note("10.0.0.1", "too many attempts")
    assert refusals.due() == [], "10.0.0.2's minute held nothing back"
    now[0] += 120
    assert refusals.due() == [("10.0.0.1", "1 further refused sign-in(s), not recorded one by one: "
                                           "1 too many attempts")]
    assert refusals.due() == [] and refusals.tracked_keys() == 0


def test_refused_sign_ins_from_many_addresses_make_a_bounded_number_of_rows():
    now = [1000.0]
    refusals = RefusedSignIns(clock=lambda: now[0], rows_per_minute=5)
    details = [refusals.note(f"10.0.1.{i}", "too many attempts") for i in range(200)]
    assert sum(detail is not None for detail in details) == 5
    now[0] += 120
    assert refusals.due() == [(OTHER_ADDRESSES, "195 further refused sign-in(s), not recorded one by one: "
                                                "195 too many attempts")]


def test_a_refused_attempt_adds_no_key():
    now = [1000.0]
    limiter = LoginLimiter(10, per_address=3, global_per_minute=6, clock=lambda: now[0])
    for i in range(3):
        assert limiter.admit(f"name{i}", "10.0.0.1") is None
    before = limiter.tracked_keys()
    for i in range(1000):
        assert limiter.admit(f"random{i}", "10.0.0.1") is not None
    assert limiter.tracked_keys() == before


def test_the_referral_form_names_each_field():
    result = parse_referral_form({"patient.family": "Doe", "clinical.pain.intensity": "eleven",
                                  "clinical.pain.duration_weeks": "-1"}, ["sore_toe"], "st-marys")
    assert result.value is None
    assert result.errors["accession_number"] == ["must not be empty"]
    assert result.errors["patient.id"] == ["must not be empty"]
    assert result.errors["clinical.pain.intensity"] == ["must be a whole number (got 'eleven')"]
    assert result.errors["clinical.pain.duration_weeks"][0].startswith("must be >= 0")
    assert result.errors["clinical.red_flags"][0].startswith("must be one of")
    assert result.values["patient.family"] == "Doe"
    good = parse_referral_form({"patient.family": "Doe", "patient.given": "Jane", "patient.id": "P1",
                                "accession_number": "A1", "clinical.pain.intensity": "7"},
                               ["cauda_equina"], "st-marys")
    assert good.errors == {} and good.value.patient.name == "Doe^Jane"
    assert good.value.effective_urgency.value == "urgent"


def test_the_report_form_resolves_key_images_by_series_and_instance():
    positions = {(3, 12): "2.25.312", (3, 13): "2.25.313"}
    result = parse_report_form({"finding.L4-L5": "Extrusion.", "images.L4-L5": "3:12, 3 : 13",
                                "impression": "Extrusion at L4-L5.", "answer": "Yes."}, positions)
    assert result.errors == {}
    (finding,) = result.value.findings
    assert finding.text == "L4-L5: Extrusion." and finding.images == ["2.25.312", "2.25.313"]
    assert result.value.impressions == ["Extrusion at L4-L5.", "Answer to the clinical question: Yes."]
    bad = parse_report_form({"images.L1-L2": "4:1, x"}, positions)
    assert bad.errors["images.L1-L2"] == ["series 4 has no instance 1", "'x': write series:instance, e.g. 3:12"]
    assert bad.errors["finding.L1-L2"] == ["describe the finding these key images show"]
    assert bad.errors["impression"] == ["required"]


def test_a_database_made_before_the_portal_is_upgraded(tmp_path):
    database = make_database(f"sqlite:///{tmp_path}/old.db")
    db.initialize(database)
    with database.connection_context():
        database.create_tables([SchemaVersion])
        for version, step in MIGRATIONS:
            if version < 5:
                step(database)
                SchemaVersion.create(version=version)
        assert "web_user" not in database.get_tables()
    assert migrate(database) == MIGRATIONS[-1][0]
    with database.connection_context():
        assert {"web_user", "web_session"} <= set(database.get_tables())
    database.close_all()


def test_the_sla_clock_reads_in_words():
    import datetime as dt

    from gateway.web.views import sla_clock

    now = dt.datetime(2026, 1, 1)
    assert sla_clock(now + dt.timedelta(days=5), now) == ("5 d 0 h left", False)
    assert sla_clock(now + dt.timedelta(hours=3, minutes=5), now) == ("3 h 05 min left", False)
    assert sla_clock(now - dt.timedelta(minutes=15), now) == ("overdue by 15 min", True)
    assert sla_clock(None, now) == ("no deadline", False)


@pytest.mark.slow  # runs the CLI in fresh processes: 18 s
def test_user_commands_answer_mistakes_in_one_line(tmp_path):
    import subprocess
    import sys

    import yaml

    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"database": f"sqlite:///{tmp_path}/gw.db", "spool_dir": str(tmp_path / "spool")},
        "logging": {"file": str(tmp_path / "routing.jsonl")},
        "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}]}))

    def run(*args: str, password: str = "long enough password") -> tuple[int, str, str]:
        done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "user", *args],
                              input=password + "\n", capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout, done.stderr

    assert run("add", "desk", "--role", "referrer", "--source", "nowhere", "--password-stdin")[0:3:2] == (
        2, "spine-gateway: --source nowhere: no source of that name is configured (configured: st-marys)\n")
    assert run("add", "ann", "--role", "reviewer", "--password-stdin")[0:3:2] == (
        2, "spine-gateway: a reviewer needs --reviewer, the name of a configured reviewer (configured: dr-a)\n")
    assert run("add", "ann", "--role", "reviewer", "--reviewer", "nobody", "--password-stdin")[0:3:2] == (
        2, "spine-gateway: --reviewer nobody: no reviewer of that name is configured (configured: dr-a)\n")
    assert run("add", "desk", "--role", "referrer", "--source", "st-marys", "--password-stdin",
               password="short")[0] == 2
    assert run("add", "desk", "--role", "referrer", "--source", "st-marys", "--password-stdin") == (
        0, "user desk added (referrer)\n", ""), "the command's log events go to the log file, not the terminal"
    assert run("add", "desk", "--role", "ops", "--password-stdin")[0] == 2
    assert run("disable", "nobody")[0] == 2
    assert run("disable", "desk")[0] == 0
    code, out, _ = run("list")
    assert code == 0 and "desk" in out and "disabled" in out
    assert '"reason": "user_added"' in (tmp_path / "routing.jsonl").read_text()


def test_the_notes_macro_renders_chips_clickable_unknown_words_and_guard_hits():
    from gateway.referral.redaction import NotesField, Segment
    from gateway.web.app import templates

    macros = templates().get_template("_macros.html").module
    field = NotesField("History", (Segment("Seen by "), Segment("[NAME]", "removed"), Segment(" re "),
                                   Segment("Zolgensma", "unknown"), Segment(" in "),
                                   Segment("Thrapston", "hit", "address"), Segment(" <b>.")))
    html = str(macros.notes([field], clickable=True))
    assert '<span class="chip" title="removed by the scrubber">[NAME]</span>' in html
    assert '<button type="submit" class="unknown" name="redact_word" value="Zolgensma"' in html
    assert 'class="hit" name="redact_word" value="Thrapston"' in html and "<small>address</small>" in html
    assert "&lt;b&gt;." in html  # the notes' text is escaped
    shown = str(macros.notes([field]))
    assert '<mark class="unknown">Zolgensma</mark>' in shown and "<button" not in shown


def test_standard_uids_are_named_on_the_operators_pages():
    from gateway.web.app import uid_names

    named = uid_names("1.2.840.10008.5.1.4.1.1.104.1 from reviewer dr-a")
    assert named == "Encapsulated PDF Storage from reviewer dr-a"
    assert uid_names("2.25.123 and 1.2.840.10008.9.9.9.9") == "2.25.123 and 1.2.840.10008.9.9.9.9", "unknown: kept"


# What a user might type into a URL: an original Study Instance UID and a patient's name.
MARKER_UID = "1.2.826.0.1.3680043.2.1125.424242"
MARKER_NAME = "Smithers-Jane"


def test_the_portal_logs_a_refused_or_failed_page_by_its_route_never_its_path(database, tmp_path):
    """``web_refused`` and ``web_handler_failed`` name the page's route template: the request's path (and query)
    is what a user typed, possibly an original UID or a name."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Route
    from structlog.testing import capture_logs

    from gateway.accounts.users import PasswordChecks
    from gateway.ops.metrics import GatewayMetrics
    from gateway.stages.context import NodeContext
    from gateway.storage.cases import LeaseOwner
    from gateway.storage.spool import Spool
    from gateway.web import auth
    from gateway.web.app import guard, templates
    from gateway.web.page import Portal, Refused

    def refusing(_page):
        raise Refused(403, "not yours")

    def failing(page):
        raise RuntimeError(f"no case {page.request.path_params['study']} of {page.request.path_params['patient']}")

    portal = Portal(CONFIG, Spool(tmp_path / "spool"), templates(), LoginLimiter(10, 10, 100),
                    PasswordChecks(1, 5), NodeContext(db, LeaseOwner("test"), None, GatewayMetrics()))
    route = "/referrer/{patient}/studies/{study}"
    app = Starlette(routes=[Route(route, guard(portal, refusing, "referrer", route)),
                            Route(f"{route}/notes", guard(portal, failing, "referrer", f"{route}/notes"))])
    session = start_session(add_user(CONFIG, "desk", "referrer", "long enough password", source="st-marys"), 1)

    async def get(path: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     cookies={auth.COOKIE: session}) as client:
            return (await client.get(path, params={"name": MARKER_NAME})).status_code

    path = f"/referrer/{MARKER_NAME}/studies/{MARKER_UID}"
    with capture_logs() as logs:
        assert asyncio.run(get(path)) == 403
        assert asyncio.run(get(f"{path}/notes")) == 500
    lines = [entry for entry in logs if entry["event"] in ("web_refused", "web_handler_failed")]
    assert lines == [{"event": "web_refused", "log_level": "warning", "status": 403, "reason": route},
                     {"event": "web_handler_failed", "log_level": "error", "error": "RuntimeError",
                      "reason": f"{route}/notes"}]
    assert MARKER_UID not in repr(logs) and MARKER_NAME not in repr(logs)
