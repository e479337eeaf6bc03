"""kill -9 of the node in the middle of a transfer: nothing the sender saw acknowledged is lost."""

from __future__ import annotations

import hashlib
import threading

from gateway.dicom import status
from support.dicomfiles import dataset_bytes, sop_instance_uid, spool_files, spool_index
from support.peers import GatewayProcess, wait_until
from support.scu import send
from test_scp_receive import instances_in_db


def test_kill_9_mid_transfer_keeps_every_acknowledged_instance(tmp_path, database_url, big_study):
    node = GatewayProcess(tmp_path / "gw", database_url).start()
    objects = node.spool_dir / "objects"

    def kill_when_a_third_is_stored() -> None:
        wait_until(lambda: objects.exists() and sum(1 for _ in objects.rglob("*.dcm")) >= 100, 120,
                   "100 instances in the spool", interval=0.01)
        node.kill()

    killer = threading.Thread(target=kill_when_a_third_is_stored)
    killer.start()
    try:
        statuses = send(node.port, big_study, calling="STMARYS_PACS")
    except ConnectionError:
        statuses = []
    killer.join()
    acknowledged = [path for path, code in zip(big_study, statuses) if code == status.SUCCESS]
    assert 90 <= len(acknowledged) < len(big_study), "the kill should land mid-transfer"

    node.start()  # same config, same database, same spool
    try:
        assert [p for d in (node.spool_dir / "tmp").iterdir() for p in d.iterdir()] == [], \
            "half-written files survived the restart"
        spool = spool_index(node.spool_dir)  # also checks every file's content against its name
        rows = instances_in_db(database_url)
        for path in acknowledged:
            uid = sop_instance_uid(path)
            assert uid in rows, f"{path.name} was acknowledged but has no row"
            assert spool[uid] == dataset_bytes(path), f"{path.name} was acknowledged but is not intact"
        for uid, (sha, relative, _version) in rows.items():
            stored = (node.spool_dir / relative).read_bytes()
            assert hashlib.sha256(dataset_bytes(node.spool_dir / relative)).hexdigest() == sha
            assert stored, uid
        # the sender retries everything: each instance ends up stored exactly once
        assert send(node.port, big_study, calling="STMARYS_PACS") == [status.SUCCESS] * len(big_study)
        assert len(instances_in_db(database_url)) == len(big_study)
        assert len(spool_files(node.spool_dir)) == len(big_study)
    finally:
        node.stop()
