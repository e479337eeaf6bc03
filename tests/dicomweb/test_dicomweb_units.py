"""DICOMweb's pieces without a node: tokens, QIDO matching, STOW bodies and answers, frames and rendered images,
the audit of repeated frame requests, what a failing endpoint logs."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from starlette.applications import Starlette
from structlog.testing import capture_logs

from gateway.accounts import tokens
from gateway.config import GatewayConfig
from gateway.dicomweb import qido, stow, wado
from gateway.dicomweb.access import AccessTrail
from gateway.dicomweb.routes import DicomWeb
from gateway.dicomweb.worklist import Worklist
from gateway.stages.context import NodeContext
from gateway.storage.models import DicomwebToken, db
from gateway.storage.spool import Spool

CONFIG = GatewayConfig.model_validate({
    "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
    "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243},
                  {"name": "dr-b", "ae_title": "REVIEW_B", "host": "127.0.0.1", "port": 4244, "enabled": False}]})


def test_a_token_acts_as_its_reviewer_until_revoked_and_only_its_hash_is_kept(database):
    token = tokens.issue(CONFIG, "dr-a", "home workstation", issued_by="alice")
    token_id, _, secret = token.partition(".")
    assert tokens.reviewer_of(token, CONFIG) == "dr-a"
    row = DicomwebToken.get(DicomwebToken.token_id == token_id)
    assert secret not in (row.secret_sha256, row.label) and row.last_used_at is not None
    assert tokens.reviewer_of(f"{token_id}.{'x' * len(secret)}", CONFIG) is None      # wrong secret
    assert tokens.reviewer_of(f"{'0' * 8}.{secret}", CONFIG) is None                   # unknown id
    assert tokens.reviewer_of(secret, CONFIG) is None                                   # malformed
    disabled = tokens.issue(CONFIG, "dr-b")
    assert tokens.reviewer_of(disabled, CONFIG) == "dr-b", "a reviewer taking no new cases still reads its own"
    without_a = GatewayConfig.model_validate({**CONFIG.model_dump(mode="json"), "reviewers": [
        r.model_dump(mode="json") for r in CONFIG.reviewers if r.name != "dr-a"]})
    assert tokens.reviewer_of(token, without_a) is None, "a reviewer no longer configured"
    assert tokens.revoke(token_id).revoked_at is not None
    assert tokens.reviewer_of(token, CONFIG) is None
    assert tokens.revoke(token_id).revoked_at is not None  # again: no change, no error
    assert [t.token_id for t in tokens.listed("dr-a")] == [token_id]
    with pytest.raises(tokens.TokenError):
        tokens.issue(CONFIG, "dr-z")
    with pytest.raises(tokens.TokenError):
        tokens.revoke("ffffffff")
    with pytest.raises(tokens.TokenError):
        tokens.issue(CONFIG, "dr-a", "a\nnewline")


def _result(**values: object) -> dict:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds.to_json_dict()


def test_qido_matching_wildcards_uid_lists_ranges_and_paging():
    results = [_result(StudyInstanceUID="1.2.3", StudyDate="20261120", PatientName="Anon^A", Modality="MR"),
               _result(StudyInstanceUID="1.2.4", StudyDate="20260101", PatientName="Anon^B", Modality="CT")]
    assert qido.Query([("StudyInstanceUID", "1.2.4,9.9")]).keep(results) == results[1:]
    assert qido.Query([("0020000D", "1.2.3")]).keep(results) == results[:1]
    assert qido.Query([("StudyDate", "20261101-")]).keep(results) == results[:1]
    assert qido.Query([("StudyDate", "-20260630")]).keep(results) == results[1:]
    assert qido.Query([("PatientName", "anon*")]).keep(results) == results
    assert qido.Query([("Modality", "M?")]).keep(results) == results[:1]
    assert qido.Query([("AccessionNumber", "A1")]).keep(results) == [], "absent attributes match nothing"
    assert qido.Query([("limit", "1"), ("offset", "1")]).keep(results) == results[1:]
    for bad in ([("NoSuchKeyword", "x")], [("limit", "-1")], [("includefield", "Bogus")]):
        with pytest.raises(qido.BadQuery):
            qido.Query(bad)


def test_stow_bodies_and_answers():
    part = b"\r\n--b1\r\nContent-Type: application/dicom\r\n\r\n"
    body = part + b"ONE" + part + b"TWO\r\n--b1--"
    assert stow.parts_of('multipart/related; type="application/dicom"; boundary=b1', body) == [b"ONE", b"TWO"]
    for content_type, status in (("application/dicom", 415), ('multipart/related; type="application/dicom"', 400),
                                 ('multipart/related; type="application/dicom+json"; boundary=b1', 415)):
        with pytest.raises(stow.BadStow) as refused:
            stow.parts_of(content_type, body)
        assert refused.value.status_code == status
    stored, refused_one = stow.Outcome("1.2.840.10008.5.1.4.1.1.88.22", "1.2.9", 0), \
        stow.Outcome("1.2.840.10008.5.1.4.1.1.88.22", "1.2.8", 0x0124)
    assert stow.response([stored], "http://x")[0] == 200
    code, answer = stow.response([stored, refused_one], "http://x")
    assert code == 202 and answer["00081198"]["Value"][0]["00081197"]["Value"] == [0x0124]
    assert stow.response([refused_one, stow.Outcome("", "", None)], "http://x")[0] == 409
    unreadable = stow.store([b"not dicom"], "REVIEW_A", CONFIG, None)
    assert [o.status for o in unreadable] == [stow.CANNOT_UNDERSTAND]


def _image(photometric: str = "MONOCHROME2", frames: int = 2) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 5, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = photometric
    ds.NumberOfFrames = frames
    ds.WindowCenter, ds.WindowWidth = 100, 200
    pixels = np.arange(frames * 20, dtype=np.uint16).reshape(frames, 4, 5) * 10
    ds.PixelData = pixels.tobytes()
    return ds


def test_frames_are_the_uncompressed_pixels_and_rendered_images_use_the_window():
    ds = _image()
    first, second = wado.frames_of(ds, [1, 2])
    assert first == ds.PixelData[:40] and second == ds.PixelData[40:]
    for wrong, status in (("0", 400), ("a", 400)):
        with pytest.raises(wado.BadFrames) as refused:
            wado.frame_numbers(wrong)
        assert refused.value.status == status
    with pytest.raises(wado.BadFrames):
        wado.frames_of(ds, [3])
    picture = np.asarray(Image.open(io.BytesIO(wado.rendered(ds, 1, "image/png", None, None))))
    assert picture.shape == (4, 5) and picture[0, 0] == 0 and picture[-1, -1] > picture[0, 0]
    inverted = np.asarray(Image.open(io.BytesIO(wado.rendered(_image("MONOCHROME1"), 1, "image/png", None, None))))
    assert inverted[0, 0] == 255 and inverted[-1, -1] < 255
    narrow = np.asarray(Image.open(io.BytesIO(wado.rendered(ds, 2, "image/png", "200,1", None))))
    assert set(np.unique(narrow)) <= {0, 255}
    assert Image.open(io.BytesIO(wado.rendered(ds, 1, "image/jpeg", None, 80))).format == "JPEG"
    assert wado.rendered_type("image/png") == "image/png" and wado.rendered_type("") == "image/jpeg"
    with pytest.raises(wado.NotAcceptable):
        wado.rendered_type("image/gif")
    assert wado.accepted_syntaxes('multipart/related; type="application/dicom"; transfer-syntax=*') is None
    assert wado.accepted_syntaxes('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1') \
        == {"1.2.840.10008.1.2.1"}


def test_a_viewer_asking_frame_after_frame_is_audited_once_in_a_while():
    now = [0.0]
    trail = AccessTrail(repeat_s=300, clock=lambda: now[0])
    key = ("token:abcd1234", "case", "frames:1.2.3")
    assert trail._due(key) and not trail._due(key)
    assert trail._due(("token:abcd1234", "case", "frames:1.2.4")), "another series"
    now[0] = 301.0
    assert trail._due(key)


class _FailingMetadata(DicomWeb):
    def metadata(self, caller, request):
        raise RuntimeError(f"could not read {request.path_params['study']}")


class _FailingWorkitem(Worklist):
    def retrieve(self, caller, reviewer, request, body):
        raise RuntimeError(f"could not read {request.path_params['workitem']}")


def _failure_logged(routes: list, path: str, token: str) -> list[dict]:
    """The ``dicomweb_failed`` lines of one GET of ``path`` that answered 500."""

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=Starlette(routes=routes))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get(path, headers={"Authorization": f"Bearer {token}"})

    with capture_logs() as logs:
        answer = asyncio.run(get())
    assert answer.status_code == 500
    return [entry for entry in logs if entry["event"] == "dicomweb_failed"]


def test_a_failing_endpoint_logs_its_route_template_never_the_uids_of_its_path(database, tmp_path):
    token = tokens.issue(CONFIG, "dr-a")
    original = "1.2.826.0.1.3680043.2.1125.424242"
    web = _FailingMetadata(CONFIG, Spool(tmp_path / "spool"), db)
    failed = _failure_logged(web.routes(), f"/dicomweb/studies/{original}/series/{original}9/metadata", token)
    assert failed == [{"event": "dicomweb_failed", "log_level": "error", "error": "RuntimeError",
                       "reason": "/dicomweb/studies/{study}/series/{series}/metadata", "reviewer": "dr-a"}]
    assert original not in repr(failed)
    worklist = _FailingWorkitem(CONFIG, NodeContext.of_process(), "/dicomweb")
    failed = _failure_logged(worklist.routes(), f"/dicomweb/workitems/{original}", token)
    assert failed == [{"event": "dicomweb_failed", "log_level": "error", "error": "RuntimeError",
                       "reason": "/dicomweb/workitems/{workitem}", "reviewer": "dr-a"}]


def test_an_instance_is_served_single_part_only_when_asked_for_without_multipart():
    assert wado.single_part("application/dicom")
    assert wado.single_part("application/dicom; transfer-syntax=*")
    assert not wado.single_part('multipart/related; type="application/dicom"')
    assert not wado.single_part('multipart/related; type="application/dicom", application/dicom')
    assert not wado.single_part("application/dicom+json")
    assert not wado.single_part("*/*") and not wado.single_part("")
