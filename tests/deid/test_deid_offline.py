"""Folder de-identification and the secret file."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files

from gateway.deid import BurnedInPolicy, DeidOptions, load_or_create_secret
from gateway.deid.offline import deidentify_folder
from gateway.deid.secret import SecretError

SECRET = b"offline-secret-0123456789abcdef01"
REJECT = DeidOptions(burned_in=BurnedInPolicy.REJECT)  # the screen capture is refused, not read by OCR


def bundled(name: str) -> Path:
    """A file bundled with pydicom (never a download: named lookups may try the network)."""
    return next(Path(path) for path in get_testdata_files() if Path(path).name == name)


def _fill(in_dir: Path) -> None:
    (in_dir / "patient smith" / "series 1").mkdir(parents=True)
    for name in ("MR_small.dcm", "CT_small.dcm"):
        shutil.copy(bundled(name), in_dir / "patient smith" / "series 1" / name)
    shutil.copy(bundled("SC_rgb_rle_32bit.dcm"), in_dir / "screen.dcm")
    (in_dir / "notes.txt").write_text("not dicom")


def test_folder_is_deidentified_and_risky_files_quarantined(tmp_path: Path) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    _fill(in_dir)
    summary = deidentify_folder(in_dir, out_dir, REJECT, SECRET, progress=False)
    assert summary.done == 1
    reasons = {item.path.name: item.reason for item in summary.quarantined}
    assert reasons["screen.dcm"] == "SOP class: secondary capture"
    assert reasons["notes.txt"].startswith("unreadable")
    # MR_small's Institution Name is also the start of its Manufacturer: the outbound guard stops it,
    # naming the attribute, not the value.
    assert reasons["MR_small.dcm"] == "identifier leak at Manufacturer"
    assert summary.reasons()["SOP class: secondary capture"] == 1
    outputs = sorted(out_dir.iterdir())
    assert len(outputs) == 1
    for path in outputs:
        ds = dcmread(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm" and path.name.startswith("2.25.")
        assert ds.PatientIdentityRemoved == "YES"
    original = dcmread(bundled("CT_small.dcm"))
    written = {str(dcmread(path).Modality): dcmread(path) for path in outputs}
    assert written["CT"].PixelData == original.PixelData


def test_folder_run_with_progress_bar(tmp_path: Path) -> None:
    in_dir = tmp_path / "in"
    _fill(in_dir)
    summary = deidentify_folder(in_dir, tmp_path / "out", REJECT, SECRET, progress=True)
    assert summary.done == 1 and summary.quarantined_count == 3


def test_missing_input_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        deidentify_folder(tmp_path / "absent", tmp_path / "out", None, SECRET, progress=False)


def test_secret_is_created_once_with_mode_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPINEGW_TEST_SECRET", raising=False)
    path = tmp_path / "keys" / "deid.key"
    secret, created = load_or_create_secret("SPINEGW_TEST_SECRET", path)
    assert created and len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create_secret("SPINEGW_TEST_SECRET", path)
    assert again == secret and not created_again
    assert [p.name for p in path.parent.iterdir()] == ["deid.key"]


def test_secret_from_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINEGW_TEST_SECRET", "ab" * 32)
    secret, created = load_or_create_secret("SPINEGW_TEST_SECRET", tmp_path / "never.key")
    assert secret == bytes.fromhex("ab" * 32) and not created
    assert not (tmp_path / "never.key").exists()


def test_bad_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINEGW_TEST_SECRET", "not hex")
    with pytest.raises(SecretError) as raised:
        load_or_create_secret("SPINEGW_TEST_SECRET", tmp_path / "x.key")
    assert "not hex" not in str(raised.value)
