"""Many associations at once from several sources (DCMTK storescu processes and pynetdicom SCUs) into one
gateway, while it de-identifies and delivers to a DCMTK storescp reviewer; then the account of what was
acknowledged, stored and delivered. Used by the load test (small) and ``bench/load.py`` (3,000 instances)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from gateway.demo import write_demo_study
from hardening_flow import Ledger, send_files, uid_of, wait_all_delivered
from hardening_support import DeliveryAccount, fast_extra, peak_rss_kib, reviewer_config
from support.peers import DcmtkStoreSCP, GatewayProcess, storescu

SOURCES = [("st-marys", "STMARYS_PACS"), ("city", "CITY_PACS"), ("north", "NORTH_PACS")]
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


class StoreSCPReviewer:
    """A DCMTK storescp writing every received object to its own file (+uf), so a resend shows as a second
    file with the same SOP Instance UID; exposes what ``account`` needs."""

    def __init__(self, workdir: Path, ae_title: str = "REVIEW_A") -> None:
        self.scp = DcmtkStoreSCP(workdir, ae_title=ae_title, extra_args=["+uf"])
        self.ae_title = ae_title
        self._seen: dict[Path, str] = {}

    def start(self) -> StoreSCPReviewer:
        self.scp.start()
        self.port = self.scp.port
        return self

    def _received(self) -> list[str]:
        for path in self.scp.out_dir.iterdir():
            if path.is_file() and path not in self._seen:
                try:
                    self._seen[path] = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                except Exception:  # noqa: BLE001 - storescp is still writing it; read it next time
                    continue
        return list(self._seen.values())

    def distinct(self) -> set[str]:
        return set(self._received())

    def resent(self) -> int:
        received = self._received()
        return len(received) - len(set(received))

    def stop(self) -> None:
        self.scp.stop()


@dataclass
class LoadResult:
    account: DeliveryAccount
    instances: int
    associations: int
    receive_s: float
    total_s: float
    peak_rss_kib: int
    rss_samples_kib: list[int]

    def report(self) -> str:
        per_s = len(self.account.acknowledged) / self.receive_s if self.receive_s else 0.0
        rss = self.rss_samples_kib or [0]
        return (f"instances sent={self.instances} over {self.associations} concurrent associations\n"
                f"{self.account.summary()}\n"
                f"receive: {self.receive_s:.1f} s = {per_s:.0f} instances/s; "
                f"until all delivered: {self.total_s:.1f} s = {self.instances / self.total_s:.0f} instances/s\n"
                f"gateway peak RSS (VmHWM) {self.peak_rss_kib / 1024:.0f} MiB; "
                f"RSS samples min {min(rss) / 1024:.0f} / max {max(rss) / 1024:.0f} MiB")


def make_studies(root: Path, associations: int, instances: int, rows: int) -> list[list[Path]]:
    per = [instances // associations + (i < instances % associations) for i in range(associations)]
    return [write_demo_study(root / f"study-{i:02d}", n, seed=100 + i, rows=rows, cols=rows)
            for i, n in enumerate(per)]


def _storescu_sender(port: int, files: list[Path], calling: str, ledger: Ledger, uids: dict[Path, str]) -> None:
    result = storescu("127.0.0.1", port, files, calling=calling, extra_args=["-v"], timeout=1800)
    statuses = _RESPONSE.findall(result.stdout + result.stderr)
    for path, text in zip(files, statuses):
        ledger.record(uids[path], 0x0000 if text == "Success" else -1)


def run_load(work: Path, studies: list[list[Path]], database_url: str, timeout: float = 1800,
             reviewer_timeouts: dict | None = None) -> LoadResult:
    """Send every study at once (even-numbered over storescu, odd over pynetdicom, sources in turn)."""
    reviewer = StoreSCPReviewer(work / "reviewer").start()
    node = GatewayProcess(work / "gw", database_url,
                          sources=[{"name": n, "ae_title": ae} for n, ae in SOURCES],
                          reviewers=[reviewer_config(reviewer.port)],
                          node={"max_associations": len(studies) + 10, **(reviewer_timeouts or {})},
                          extra=fast_extra(routing={"stable_after_s": 2.0, "poll_s": 0.5}))
    ledger = Ledger()
    uids = {p: uid_of(p) for study in studies for p in study}
    samples: list[int] = []
    try:
        node.start()
        senders = []
        for index, files in enumerate(studies):
            calling = SOURCES[index % len(SOURCES)][1]
            target = _storescu_sender if index % 2 == 0 else _pynetdicom_sender
            senders.append(threading.Thread(target=target, args=(node.port, files, calling, ledger, uids)))
        started = time.perf_counter()
        for sender in senders:
            sender.start()
        stop_sampling = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(node.proc.pid, samples, stop_sampling), daemon=True)
        sampler.start()
        for sender in senders:
            sender.join(timeout)
        receive_s = time.perf_counter() - started
        result = wait_all_delivered(node, database_url, ledger, reviewer, timeout)
        total_s = time.perf_counter() - started
        stop_sampling.set()
        peak = peak_rss_kib(node.proc.pid)
        return LoadResult(result, len(uids), len(studies), receive_s, total_s, peak, samples)
    finally:
        node.stop()
        reviewer.stop()


def _pynetdicom_sender(port: int, files: list[Path], calling: str, ledger: Ledger, uids: dict[Path, str]) -> None:
    send_files(port, files, ledger, uids, calling=calling)


def _sample_rss(pid: int, samples: list[int], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    samples.append(int(line.split()[1]))
        except OSError:
            return

