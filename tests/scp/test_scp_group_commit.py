"""Group commit on the receive path (``gateway.scp.commit``): rows of several associations in one transaction,
nothing acknowledged before its commit, a failed commit answered 0xA700 for each row of its group."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlparse

import psycopg2
import pytest

from gateway.demo import write_demo_study
from gateway.dicom import status
from gateway.scp.commit import GroupCommit, Waiting
from support.dicomfiles import dataset_bytes, sop_instance_uid, spool_files, spool_index
from support.peers import GatewayProcess, storescu, wait_until
from support.scu import send
from test_scp_receive import instances_in_db

SENDERS = 5


@pytest.fixture(scope="module")
def five_studies(tmp_path_factory) -> list[list]:
    """Five distinct small studies (own patient, own UIDs), one per sender."""
    return [write_demo_study(tmp_path_factory.mktemp(f"sender-{n}"), 20, seed=40 + n, rows=128, cols=128)
            for n in range(SENDERS)]


def commit_rows(node: GatewayProcess) -> tuple[int, int]:
    """(commits, rows) of the receive path so far, from ``spine_gateway_store_commit_rows`` on /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    count = re.search(r"^spine_gateway_store_commit_rows_count (\S+)$", text, re.M)
    total = re.search(r"^spine_gateway_store_commit_rows_sum (\S+)$", text, re.M)
    assert count and total, "the group-commit histogram is missing from /metrics"
    return int(float(count.group(1))), int(float(total.group(1)))


@contextlib.contextmanager
def instance_table_locked(database_url: str) -> Iterator[None]:
    """Another connection holds off every write to the ``instance`` table until the block ends: SQLite's write
    lock (BEGIN IMMEDIATE), or on PostgreSQL an EXCLUSIVE table lock (reads still pass)."""
    if database_url.startswith("sqlite:///"):
        blocker = sqlite3.connect(database_url[len("sqlite:///"):], isolation_level=None, timeout=60)
        blocker.execute("BEGIN IMMEDIATE")
    else:
        url = urlparse(database_url)
        blocker = psycopg2.connect(dbname=url.path.lstrip("/"), user=url.username, password=url.password,
                                   host=url.hostname, port=url.port)
        blocker.cursor().execute('LOCK TABLE "instance" IN EXCLUSIVE MODE')  # psycopg2 opened a transaction
    try:
        yield
    finally:
        if isinstance(blocker, sqlite3.Connection):
            blocker.execute("ROLLBACK")
        else:
            blocker.rollback()
        blocker.close()


def run_together(jobs: list) -> list:
    """Run each callable in its own thread, all started together; their results in order."""
    results: list = [None] * len(jobs)

    def run(index: int) -> None:
        results[index] = jobs[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return results


def test_five_storescu_senders_at_once_store_everything_in_grouped_commits(tmp_path, database_url, five_studies):
    """Five DCMTK storescu senders at once, their first instances held up behind a locked table: every
    instance acknowledged is in the database and byte-identical in the spool, and rows of several associations
    went through one commit (fewer commits than rows)."""
    node = GatewayProcess(tmp_path / "gw", database_url, node={"store_commit_timeout_s": 60.0}).start()
    try:
        with instance_table_locked(database_url):
            senders = [lambda files=files: storescu("127.0.0.1", node.port, files, calling="STMARYS_PACS")
                       for files in five_studies]
            results: list = []
            running = threading.Thread(target=lambda: results.extend(run_together(senders)))
            running.start()
            # Each association's first instance is spooled and its row handed over, then waits for the lock.
            wait_until(lambda: len(spool_files(node.spool_dir)) >= SENDERS, 120, "a first instance of each sender")
            assert instances_in_db(database_url) == {}, "a row was committed through the lock"
        running.join(300)
        for result in results:
            assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr[-500:]
        every = [path for files in five_studies for path in files]
        rows, spool = instances_in_db(database_url), spool_index(node.spool_dir)
        assert len(rows) == len(every)
        for path in every:
            uid = sop_instance_uid(path)
            assert uid in rows, f"{path.name} was acknowledged but has no row"
            assert spool[uid] == dataset_bytes(path), f"{path.name} was acknowledged but is not intact"
        # a receiving process's metrics reach the node's /metrics a moment later
        wait_until(lambda: commit_rows(node)[1] == len(every), 30, "every committed row counted in /metrics")
        commits, committed = commit_rows(node)
        assert commits < committed, "every row had a commit of its own: no group commit"
    finally:
        node.stop()


def test_a_failed_group_commit_answers_a700_to_each_waiting_store_and_the_node_keeps_serving(
        tmp_path, database_url, five_studies):
    """The table stays locked past ``store_commit_timeout_s``: each of five C-STOREs waiting on the group
    commit is answered 0xA700 (never success), nothing is recorded; once the lock is gone the same instances
    are stored."""
    node = GatewayProcess(tmp_path / "gw", database_url, node={"store_commit_timeout_s": 2.0}).start()
    firsts = [files[0] for files in five_studies]
    try:
        with instance_table_locked(database_url):
            statuses = run_together([lambda path=path: send(node.port, [path], calling="STMARYS_PACS")
                                     for path in firsts])
            assert statuses == [[status.OUT_OF_RESOURCES]] * SENDERS
            assert instances_in_db(database_url) == {}
        commits, rows = commit_rows(node)
        assert rows == SENDERS and 1 <= commits <= SENDERS  # every row went through a commit that failed
        failed = [e for e in node.log_events() if e["event"] == "instance_not_stored"]
        assert len(failed) == SENDERS and {e["status"] for e in failed} == {status.OUT_OF_RESOURCES}

        again = run_together([lambda path=path: send(node.port, [path], calling="STMARYS_PACS") for path in firsts])
        assert again == [[status.SUCCESS]] * SENDERS
        stored, spool = instances_in_db(database_url), spool_index(node.spool_dir)
        for path in firsts:
            assert spool[sop_instance_uid(path)] == dataset_bytes(path)
            assert sop_instance_uid(path) in stored
    finally:
        node.stop()


class TestGroupCommit:
    """The leader/follower mechanism itself, with threads under the test's control (no network, no timing)."""

    @staticmethod
    def _held_commit(groups: list[list[int]], first_may_finish: threading.Event, fail_group: int | None = None):
        def commit(group: list[Waiting]) -> None:
            groups.append([waiting.item for waiting in group])
            if len(groups) == 1:
                assert first_may_finish.wait(30)
            if fail_group is not None and len(groups) - 1 == fail_group:
                raise OSError("the commit failed")
            for waiting in group:
                waiting.result = waiting.item * 10
        return commit

    def _queued(self, committer: GroupCommit, count: int) -> None:
        wait_until(lambda: len(committer._queue) == count, 30, f"{count} submissions queued", interval=0.005)

    def test_rows_arriving_during_a_commit_are_committed_together_by_one_of_them(self):
        groups: list[list[int]] = []
        first_may_finish = threading.Event()
        sizes: list[int] = []
        committer = GroupCommit(self._held_commit(groups, first_may_finish), on_group=sizes.append)
        results: dict[int, int] = {}

        def submit(item: int) -> None:
            results[item] = committer.submit(item)

        leader = threading.Thread(target=submit, args=(0,))
        leader.start()
        wait_until(lambda: groups == [[0]], 30, "the first group to be committing", interval=0.005)
        followers = [threading.Thread(target=submit, args=(n,)) for n in range(1, 5)]
        for thread in followers:
            thread.start()
        self._queued(committer, 4)
        assert results == {}, "answered before its commit"
        first_may_finish.set()
        for thread in [leader, *followers]:
            thread.join(30)
        assert groups[0] == [0] and sorted(groups[1]) == [1, 2, 3, 4] and len(groups) == 2
        assert results == {n: n * 10 for n in range(5)} and sizes == [1, 4]
        assert committer.submit(7) == 70  # no leader left behind: the next one commits on its own

    def test_a_failed_commit_raises_in_every_submitter_of_its_group_only(self):
        groups: list[list[int]] = []
        first_may_finish = threading.Event()
        committer = GroupCommit(self._held_commit(groups, first_may_finish, fail_group=1))
        outcomes: dict[int, object] = {}

        def submit(item: int) -> None:
            try:
                outcomes[item] = committer.submit(item)
            except OSError as exc:
                outcomes[item] = exc

        threads = [threading.Thread(target=submit, args=(0,))]
        threads[0].start()
        wait_until(lambda: groups == [[0]], 30, "the first group to be committing", interval=0.005)
        threads += [threading.Thread(target=submit, args=(n,)) for n in range(1, 4)]
        for thread in threads[1:]:
            thread.start()
        self._queued(committer, 3)
        first_may_finish.set()
        for thread in threads:
            thread.join(30)
        assert outcomes[0] == 0
        assert all(isinstance(outcomes[n], OSError) for n in (1, 2, 3)), outcomes
        assert committer.submit(5) == 50  # the committer serves on after a failed group

    def test_groups_are_bounded(self):
        groups: list[list[int]] = []
        first_may_finish = threading.Event()
        committer = GroupCommit(self._held_commit(groups, first_may_finish), max_group=2)
        threads = [threading.Thread(target=committer.submit, args=(0,))]
        threads[0].start()
        wait_until(lambda: groups == [[0]], 30, "the first group to be committing", interval=0.005)
        threads += [threading.Thread(target=committer.submit, args=(n,)) for n in range(1, 6)]
        for thread in threads[1:]:
            thread.start()
        self._queued(committer, 5)
        first_may_finish.set()
        for thread in threads:
            thread.join(30)
        assert [len(group) for group in groups] == [1, 2, 2, 1]
        assert sorted(item for group in groups for item in group) == list(range(6))


def test_kill_9_during_grouped_commits_keeps_every_acknowledged_instance(tmp_path, database_url, five_studies):
    """kill -9 while five associations commit in groups: after a restart every instance any sender saw
    acknowledged has its row and its intact file; sent again, each instance is stored exactly once."""
    node = GatewayProcess(tmp_path / "gw", database_url).start()
    objects = node.spool_dir / "objects"
    every = [path for files in five_studies for path in files]

    def kill_when_some_are_stored() -> None:
        wait_until(lambda: objects.exists() and sum(1 for _ in objects.rglob("*.dcm")) >= 40, 120,
                   "40 instances in the spool", interval=0.005)
        node.kill()

    def sender(files):
        def run():
            try:
                return send(node.port, files, calling="STMARYS_PACS")
            except ConnectionError:
                return []
        return run

    killer = threading.Thread(target=kill_when_some_are_stored)
    killer.start()
    statuses = run_together([sender(files) for files in five_studies])
    killer.join()
    acknowledged = [path for files, codes in zip(five_studies, statuses) for path, code in zip(files, codes)
                    if code == status.SUCCESS]
    assert 30 <= len(acknowledged) < len(every), "the kill should land mid-transfer"

    node.start()  # same config, same database, same spool
    try:
        spool, rows = spool_index(node.spool_dir), instances_in_db(database_url)
        for path in acknowledged:
            uid = sop_instance_uid(path)
            assert uid in rows, f"{path.name} was acknowledged but has no row"
            assert spool[uid] == dataset_bytes(path), f"{path.name} was acknowledged but is not intact"
        for uid, (_sha, relative, _version) in rows.items():
            assert (node.spool_dir / relative).exists(), f"a row without its file survived the restart ({uid})"
        again = run_together([lambda files=files: send(node.port, files, calling="STMARYS_PACS")
                              for files in five_studies])
        assert again == [[status.SUCCESS] * len(files) for files in five_studies]
        assert len(instances_in_db(database_url)) == len(every)
        assert len(spool_files(node.spool_dir)) == len(every)
    finally:
        node.stop()
