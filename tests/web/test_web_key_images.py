"""The report's key images on the referrer's page and the series the reviewer reads, from the node's
de-identified copy of the case (gateway.web.views, gateway.dicom.render), without a browser."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from gateway.dicom import render
from gateway.storage.models import Instance, OutboundObject, Series, Source, Study, db, open_database
from gateway.storage.spool import Spool
from gateway.web import views


def _image(path, uid: str, pixels: np.ndarray, description: str, series: int = 3, number: int = 12) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MRImageStorage, uid
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, uid, "MR"
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series, number, description
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def case(tmp_path):
    """A case with one original image and its de-identified copy (another UID, the description kept), and a
    notes SR; the original's pixels are flat, the copy's a gradient, so a picture shows which was drawn."""
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=2)
    spool = Spool(tmp_path / "spool")
    with db.connection_context():
        source = Source.create(name="st-marys", ae_title="HOSP_PACS")
        study = Study.create(study_uid="1.2.3", source=source, calling_ae="HOSP_PACS")
        series = Series.create(study=study, series_uid="1.2.3.3")
        _image(spool.absolute("objects/original.dcm"), "1.2.3.3.12", np.full((256, 512), 100), "SAG T2 Jane Doe")
        original = Instance.create(study=study, series=series, sop_instance_uid="1.2.3.3.12",
                                   sop_class_uid=MRImageStorage, transfer_syntax=ExplicitVRLittleEndian, size=1,
                                   sha256="0" * 64,
                                   spool_path="objects/original.dcm", calling_ae="HOSP_PACS")
        gradient = np.tile(np.arange(512) * 8, (256, 1))
        _image(spool.absolute("outbound/copy.dcm"), "2.25.12", gradient, "SAG T2")
        copy = OutboundObject.create(study=study, instance=original, sop_instance_uid="2.25.12",
                                     sop_class_uid=MRImageStorage, transfer_syntax=ExplicitVRLittleEndian,
                                     spool_path="outbound/copy.dcm", sha256="1" * 64, size=1)
        OutboundObject.create(study=study, kind="notes_sr", sop_instance_uid="2.25.990", sop_class_uid="1.2",
                              transfer_syntax=ExplicitVRLittleEndian, spool_path="outbound/notes.dcm",
                              sha256="2" * 64, size=1)
        yield study, spool, copy
    database.close_all()


def test_a_key_image_is_placed_by_the_hospital_numbers_and_drawn_from_the_de_identified_copy(case):
    study, spool, copy = case
    positions = views._ImagePositions(study, spool)
    assert positions["1.2.3.3.12"] == views.KeyImage("series 3, image 12", copy.id)
    assert positions["1.2.3.9.9"] == views.KeyImage("an image of the study", None), "not the case's: no picture"
    assert views.key_image_copy(study, copy.id) == copy
    notes = OutboundObject.get(OutboundObject.kind == "notes_sr")
    assert views.key_image_copy(study, notes.id) is None, "only the case's images"
    other = Study.create(study_uid="9.9", calling_ae="X")
    assert views.key_image_copy(other, copy.id) is None, "only this case's"

    import pydicom

    picture = Image.open(io.BytesIO(render.thumbnail_jpeg(pydicom.dcmread(spool.absolute(copy.spool_path)))))
    assert picture.format == "JPEG" and picture.size == (render.THUMBNAIL_PX, render.THUMBNAIL_PX // 2)
    row = np.asarray(picture.convert("L"))[48]
    assert row[5] < 40 and row[-5] > 215, "the copy's gradient, in its own range, not the flat original"


def test_a_thumbnail_is_never_scaled_up_and_an_object_without_pixels_is_refused(case):
    _, spool, _ = case
    import pydicom

    small = pydicom.dcmread(spool.absolute("outbound/copy.dcm"))
    small.Rows, small.Columns = 16, 32
    small.PixelData = np.zeros((16, 32), dtype=np.uint16).tobytes()
    assert Image.open(io.BytesIO(render.thumbnail_jpeg(small, render.LARGE_PX))).size == (32, 16)
    del small.PixelData
    with pytest.raises(render.NotAnImage):
        render.thumbnail_jpeg(small)


def test_the_reviewer_reads_the_series_descriptions_of_the_de_identified_copy(case):
    study, spool, _ = case
    (series,) = views.images_index(study, spool).series
    assert (series.number, series.description, series.instances) == ("3", "SAG T2", 1)
