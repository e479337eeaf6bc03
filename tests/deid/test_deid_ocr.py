"""Burned-in text found by OCR, blanked, and checked again (burned_in: ocr, the default).

Images are made here: an X-ray-like picture with the patient's name, ID, birth date, accession number and
hospital drawn in DejaVu Sans at 12 to 40 px, in corners and in the middle, white on black and black on white,
8 and 16 bit, uncompressed and JPEG-LS lossless. After de-identification tesseract reads none of the identifiers
back, every pixel outside the text is unchanged, and pydicom and DCMTK read the object.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from pydicom import uid as dicom_uid
from structlog.testing import capture_logs

from gateway.deid import BurnedInRiskError, Deidentifier, DeidOptions, PatientContext
from gateway.deid import ocr as ocr_module
from gateway.deid.errors import BurnedInTextError, OcrUnavailableError
from gateway.deid.guard import identifiers_from_dataset
from gateway.deid.ocr import _Viewer
from gateway.deid.ocr_engine import engine_for
from gateway.deid.ocr_match import birth_date_forms, fold, identifiers_found, is_identifier_piece, search_terms
from gateway.deid.options import BurnedInPolicy, OcrOptions
from ocr_images import (
    ACCESSION_TEXT,
    BIRTH_TEXT,
    CR_CLASS,
    HOSPITAL_TEXT,
    ID_TEXT,
    NAME_TEXT,
    PATIENT,
    SC_CLASS,
    Text,
    anatomy,
    burn,
    dx_dataset,
    reread,
)
from support.dicomfiles import pydicom_file_param

SECRET = b"ocr-tests-secret-0123456789abcdef"
ROWS, COLUMNS = 420, 360
SLACK = 12  # pixels around a drawn text within which blanking may reach (margin plus grown glyph boxes)


def _texts(size: int, where: str) -> list[Text]:
    """The five identifiers, one line each, at ``size`` px, in a corner or the middle."""
    lines = [NAME_TEXT.split()[0], ID_TEXT, BIRTH_TEXT, ACCESSION_TEXT, HOSPITAL_TEXT.split()[0]]
    from PIL import ImageFont

    from ocr_images import FONT
    step = int(size * 1.4)
    widest = int(max(ImageFont.truetype(FONT, size).getlength(line) for line in lines))
    x = {"top-left": 6, "bottom-right": COLUMNS - widest - 6, "middle": COLUMNS // 2 - widest // 2}[where]
    y0 = {"top-left": 6, "bottom-right": ROWS - step * len(lines) - 4, "middle": ROWS // 2 - step * 2}[where]
    return [Text(line, max(2, x), y0 + i * step, size) for i, line in enumerate(lines)]


def _text_region(texts: list[Text], shape: tuple[int, int]) -> np.ndarray:
    """Where blanking may happen: every drawn line's box plus :data:`SLACK` (or a glyph of it, if wider)."""
    from PIL import ImageFont

    from ocr_images import FONT
    region = np.zeros(shape, dtype=bool)
    for text in texts:
        x0, y0, x1, y1 = ImageFont.truetype(FONT, text.size).getbbox(text.text)
        slack = max(SLACK, text.size)
        region[max(0, text.y + y0 - slack):text.y + y1 + slack, max(0, text.x + x0 - slack):text.x + x1 + slack] = True
    return region


def _readable_identifiers(dataset, identifiers) -> set[str]:
    """What tesseract reads back on the object as a viewer shows it (at double size too)."""
    pixels = dataset.pixel_array
    picture = _Viewer(dataset).window(pixels)
    found: set[str] = set()
    for zoom in (1, 2):
        reading = engine_for("eng").read(picture, zoom=zoom)
        found |= identifiers_found([w.text for w in reading.words], reading.lines, search_terms(identifiers))
    return found


def _dcmtk_reads(tmp_path, dataset) -> None:
    path = tmp_path / "out.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert subprocess.run(["/usr/bin/dcmdump", "-q", str(path)], capture_output=True).returncode == 0
    converted = tmp_path / "converted.dcm"
    assert subprocess.run(["/usr/bin/dcmconv", str(path), str(converted)], capture_output=True).returncode == 0


CASES = [
    # size, where, bits, text polarity (white text on the dark side of a viewer, or black on white), compressed
    (12, "top-left", 16, "white", False),
    (16, "bottom-right", 8, "white", False),
    (20, "middle", 16, "dark", False),  # black text on the bright body
    (24, "top-left", 8, "black", True),
    (28, "bottom-right", 16, "black", False),
    (32, "bottom-right", 16, "white", True),
    (40, "top-left", 16, "grey", False),
]


@pytest.mark.parametrize(("size", "where", "bits", "polarity", "compressed"), CASES,
                         ids=[f"{c[0]}px-{c[1]}-{c[2]}bit-{c[3]}{'-jpegls' if c[4] else ''}" for c in CASES])
def test_burned_in_identifiers_are_blanked_and_nothing_else_changes(tmp_path, size, where, bits, polarity,
                                                                   compressed):
    stored_bits = 12 if bits == 16 else 8
    top = 2 ** stored_bits - 1
    background = anatomy(ROWS, COLUMNS, bits=stored_bits)
    photometric = "MONOCHROME2"
    if polarity == "black":
        background = (top - background).astype(background.dtype)  # a bright field; the text is drawn dark
    value = {"white": top, "black": 0, "dark": 0, "grey": int(top * 0.8)}[polarity]
    texts = _texts(size, where)
    burned = burn(background, texts, value)
    original = dx_dataset(burned, bits=stored_bits, photometric=photometric)
    if compressed:
        original.compress(dicom_uid.JPEGLSLossless, generate_instance_uid=False)
    identifiers = identifiers_from_dataset(original)
    assert _readable_identifiers(original, identifiers), "the test image must carry readable identifiers"

    result = Deidentifier(None, SECRET).deidentify(original, PatientContext("HOSP"))

    out = reread(result.dataset)
    assert out.file_meta.TransferSyntaxUID == dicom_uid.ExplicitVRLittleEndian
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert "LossyImageCompression" not in out or out.LossyImageCompression == "00"
    assert result.pixels.verdict == "cleaned" and result.pixels.boxes_blanked > 0
    assert _readable_identifiers(out, identifiers) == set()
    changed = out.pixel_array != burned
    assert changed.any()
    assert not (changed & ~_text_region(texts, burned.shape)).any(), "anatomy outside the text changed"
    _dcmtk_reads(tmp_path, out)


def test_monochrome1_text_is_blanked_to_the_stored_value_that_shows_darkest():
    background = anatomy(ROWS, COLUMNS, bits=12)
    texts = _texts(24, "top-left")
    burned = burn(background, texts, 0)  # stored 0 shows white under MONOCHROME1
    result = Deidentifier(None, SECRET).deidentify(dx_dataset(burned, bits=12, photometric="MONOCHROME1"),
                                                   PatientContext("HOSP"))
    out = result.dataset.pixel_array
    changed = out != burned
    assert changed.any() and (out[changed] == burned.max()).all()


def test_a_window_from_the_header_is_how_the_text_is_seen():
    background = anatomy(ROWS, COLUMNS, bits=12)
    texts = _texts(20, "bottom-right")
    burned = burn(background, texts, 3000)
    dataset = dx_dataset(burned, bits=12, window=(1200, 1600))  # the text saturates white in this window
    result = Deidentifier(None, SECRET).deidentify(dataset, PatientContext("HOSP"))
    assert result.pixels.verdict == "cleaned"
    assert _readable_identifiers(result.dataset, identifiers_from_dataset(dx_dataset(burned))) == set()


def test_an_image_without_text_keeps_its_pixel_data_bytes_and_its_compression():
    dataset = dx_dataset(anatomy(ROWS, COLUMNS, bits=12), bits=12)
    dataset.compress(dicom_uid.JPEGLSLossless, generate_instance_uid=False)
    pixel_bytes = dataset.PixelData
    result = Deidentifier(None, SECRET).deidentify(dataset, PatientContext("HOSP"))
    assert result.pixels.verdict == "clean" and result.pixels.boxes_blanked == 0
    assert result.dataset.PixelData == pixel_bytes
    assert result.dataset.file_meta.TransferSyntaxUID == dicom_uid.JPEGLSLossless
    assert result.dataset.BurnedInAnnotation == "NO"


def test_every_frame_of_a_multi_frame_object_is_cleaned():
    frames = [burn(anatomy(200, 240, bits=8, seed=k), [Text(NAME_TEXT.split()[0], 10, 10 + 60 * k, 20)], 255)
              for k in range(3)]
    dataset = dx_dataset(frames[0], modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7.2")
    dataset.NumberOfFrames = 3
    dataset.PixelData = np.stack(frames).tobytes()
    result = Deidentifier(None, SECRET).deidentify(dataset, PatientContext("HOSP"))
    assert result.pixels.frames == 3 and result.pixels.verdict == "cleaned"
    cleaned = result.dataset.pixel_array
    for k in range(3):
        assert (cleaned[k] != frames[k]).any(), f"frame {k} was not cleaned"
        reading = engine_for("eng").read(cleaned[k], zoom=2)
        assert not identifiers_found([w.text for w in reading.words], reading.lines,
                                     search_terms(identifiers_from_dataset(dataset)))


def test_colour_ultrasound_text_is_blanked_in_every_sample():
    grey = anatomy(240, 320, bits=8)
    texts = [Text(NAME_TEXT, 8, 8, 18), Text(ID_TEXT, 8, 36, 18)]
    burned = burn(grey, texts, 255)
    rgb = np.stack([burned, burned, (burned * 0.8).astype(np.uint8)], axis=-1)
    dataset = dx_dataset(burned, modality="US", sop_class=dicom_uid.UltrasoundImageStorage)
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.PixelData = rgb.tobytes()
    result = Deidentifier(None, SECRET).deidentify(dataset, PatientContext("HOSP"))
    out = reread(result.dataset).pixel_array
    changed = (out != rgb).any(axis=-1)
    assert changed.any() and (out[changed] == 0).all()
    assert not (changed & ~_text_region(texts, grey.shape)).any()


def test_mr_and_ct_are_not_read_by_default_but_can_be():
    dataset = dx_dataset(burn(anatomy(200, 200, bits=12), [Text(NAME_TEXT, 5, 5, 16)], 4095), bits=12,
                         modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4")
    result = Deidentifier(None, SECRET).deidentify(dataset, PatientContext("HOSP"))
    assert result.pixels is None and result.dataset.PixelData == dataset.PixelData
    options = DeidOptions(ocr=OcrOptions(modalities=("MR",)))
    assert Deidentifier(options, SECRET).deidentify(dataset, PatientContext("HOSP")).pixels.verdict == "cleaned"


def test_burned_in_annotation_no_is_trusted_unless_told_otherwise():
    dataset = dx_dataset(burn(anatomy(200, 200, bits=12), [Text(NAME_TEXT, 5, 5, 16)], 4095), bits=12,
                         sop_class=CR_CLASS, modality="CR", BurnedInAnnotation="NO")
    assert Deidentifier(None, SECRET).deidentify(dataset, PatientContext("HOSP")).pixels is None
    options = DeidOptions(ocr=OcrOptions(trust_burned_in_no=False))
    assert Deidentifier(options, SECRET).deidentify(dataset, PatientContext("HOSP")).pixels.verdict == "cleaned"


def test_an_identifier_still_readable_after_cleaning_quarantines_the_object(monkeypatch):
    monkeypatch.setattr(ocr_module, "CLEANING_ROUNDS", 0)  # as if OCR had missed the text while cleaning
    dataset = dx_dataset(burn(anatomy(ROWS, COLUMNS, bits=12), _texts(24, "top-left"), 4095), bits=12)
    with pytest.raises(BurnedInTextError) as refused:
        Deidentifier(None, SECRET).deidentify(dataset, PatientContext("HOSP"))
    assert "patient name" in refused.value.reason
    assert refused.value.report.verdict == "quarantined"
    for value in PATIENT.values():
        assert value not in refused.value.reason


def test_strict_mode_refuses_any_text_left_and_the_default_lets_non_identifiers_through(monkeypatch):
    monkeypatch.setattr(ocr_module, "CLEANING_ROUNDS", 0)  # as if OCR had missed the text while cleaning
    dataset = dx_dataset(burn(anatomy(ROWS, COLUMNS, bits=12), [Text("LATERAL STANDING", 10, 10, 24)], 4095), bits=12)
    result = Deidentifier(None, SECRET).deidentify(dataset, PatientContext("HOSP"))
    assert result.pixels.verdict == "clean"
    with pytest.raises(BurnedInTextError, match="strict"):
        Deidentifier(DeidOptions(ocr=OcrOptions(strict=True)), SECRET).deidentify(dataset, PatientContext("HOSP"))


def test_strict_mode_passes_an_image_whose_text_was_all_blanked():
    dataset = dx_dataset(burn(anatomy(ROWS, COLUMNS, bits=12), _texts(24, "top-left"), 4095), bits=12)
    result = Deidentifier(DeidOptions(ocr=OcrOptions(strict=True)), SECRET).deidentify(dataset, PatientContext("H"))
    assert result.pixels.verdict == "cleaned"


def test_reject_and_blank_policies_keep_their_meaning():
    dataset = dx_dataset(anatomy(100, 100, bits=8), modality="SC", sop_class=SC_CLASS)
    with pytest.raises(BurnedInRiskError, match="secondary capture"):
        Deidentifier(DeidOptions(burned_in=BurnedInPolicy.REJECT), SECRET).deidentify(dataset, PatientContext("H"))
    with pytest.raises(BurnedInRiskError, match="no blank_regions"):
        Deidentifier(DeidOptions(burned_in=BurnedInPolicy.BLANK), SECRET).deidentify(dataset, PatientContext("H"))
    dx = dx_dataset(anatomy(100, 100, bits=8))
    assert Deidentifier(DeidOptions(burned_in=BurnedInPolicy.REJECT), SECRET).deidentify(
        dx, PatientContext("H")).pixels is None


def test_objects_that_cannot_be_read_are_quarantined_with_a_reason():
    pdf_like = dx_dataset(anatomy(50, 50, bits=8), modality="SC", sop_class=SC_CLASS)
    pdf_like.BitsAllocated, pdf_like.BitsStored, pdf_like.HighBit = 1, 1, 0
    with pytest.raises(BurnedInRiskError, match="1-bit") as refused:
        Deidentifier(None, SECRET).deidentify(pdf_like, PatientContext("H"))
    assert refused.value.report.verdict == "quarantined"


def test_without_the_language_data_images_are_quarantined_not_passed():
    dataset = dx_dataset(anatomy(100, 100, bits=8))
    with pytest.raises(OcrUnavailableError, match="no tesseract language data"):
        Deidentifier(DeidOptions(ocr=OcrOptions(language="xxx")), SECRET).deidentify(dataset, PatientContext("H"))


def test_pixels_that_break_the_check_quarantine_the_object():
    dataset = dx_dataset(anatomy(100, 100, bits=8))
    dataset.PixelData = dataset.PixelData[:-100]  # truncated
    with pytest.raises(BurnedInRiskError, match="burned-in text check") as refused:
        Deidentifier(None, SECRET).deidentify(dataset, PatientContext("H"))
    assert refused.value.report.verdict == "quarantined"


def _bundled_sc_and_us() -> list[str]:
    """pydicom's bundled secondary capture and ultrasound files (never a download)."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_files

    from gateway.deid.burned_in import RISKY_SOP_CLASSES
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(get_testdata_files()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:  # noqa: BLE001 - some bundled files are broken on purpose
                continue
            kind = RISKY_SOP_CLASSES.get(str(ds.get("SOPClassUID", "")), "")
            if (("secondary capture" in kind or "ultrasound" in kind)
                    and "PixelData" in pydicom.dcmread(path, force=True)):
                found.append(path)
    return found


SC_AND_US = _bundled_sc_and_us()


def test_pydicom_bundles_secondary_capture_and_ultrasound_files():
    assert len(SC_AND_US) >= 10


@pytest.mark.parametrize("path", [pydicom_file_param(path) for path in SC_AND_US])
def test_pydicom_secondary_capture_and_ultrasound_files_are_cleaned_or_quarantined(tmp_path, path):
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = pydicom.dcmread(path, force=True)
    try:
        result = Deidentifier(None, SECRET).deidentify(original, PatientContext("PYDICOM"))
    except BurnedInRiskError as refused:
        assert refused.reason and refused.report is not None
        return
    out = reread(result.dataset)
    assert out.BurnedInAnnotation == "NO" and result.pixels is not None
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    out.pixel_array  # noqa: B018 - decodes
    if not result.pixels.changed:
        assert out.PixelData == original.PixelData
    _dcmtk_reads(tmp_path, out)


def test_each_decision_is_one_log_event_without_the_text(tmp_path):
    from gateway.deid.work import deid_pool, deidentify_file

    dataset = dx_dataset(burn(anatomy(ROWS, COLUMNS, bits=12), _texts(24, "top-left"), 4095), bits=12)
    path = tmp_path / "dx.dcm"
    dataset.save_as(path, enforce_file_format=True)
    pool = deid_pool(DeidOptions(), SECRET, workers=0)
    with capture_logs() as events:
        work, = list(pool.map(deidentify_file, [str(path)], ["HOSP"], ["C0001"]))
    assert work.data and work.quarantine_reason is None
    decisions = [e for e in events if e["event"] == "burned_in_text"]
    assert len(decisions) == 1
    decision = decisions[0]
    assert decision["verdict"] == "cleaned" and decision["boxes_blanked"] > 0 and decision["case"] == "C0001"
    assert decision["boxes_found"] >= decision["boxes_blanked"] and decision["frames"] == 1
    rendered = repr(events)
    for value in (*PATIENT.values(), "MORGENSTERN", "HELENA", "PID7734521", "1962"):
        assert value not in rendered


# -- matching OCR text against identifiers ---------------------------------------------------------------------

def test_folding_merges_what_ocr_confuses():
    assert fold("PID-0O1l") == fold("P1D 0011") and fold("Dr. Smith") == fold("DR SMITH")


def test_birth_dates_are_looked_for_in_common_forms():
    import datetime as dt
    forms = set(birth_date_forms(dt.date(1962, 3, 14)))
    assert {"19620314", "14031962", "03141962", "14MAR1962", "140362"} <= forms


def test_identifiers_are_found_in_ocr_text_despite_small_errors():
    identifiers = identifiers_from_dataset(dx_dataset(anatomy(10, 10, bits=8)))
    terms = search_terms(identifiers)
    assert identifiers_found(["MORGENSTEPN"], [], terms) == {"patient name"}  # one letter wrong
    assert identifiers_found([], ["DOB: 14.03.1962"], terms) == {"birth date"}
    assert identifiers_found([], ["Riverside  General Hospital"], terms) == {"institution name"}
    assert identifiers_found(["P1D7734521"], [], terms) == {"patient id"}
    assert identifiers_found(["LATERAL", "L5", "STANDING"], ["LATERAL STANDING"], terms) == set()


def test_pieces_of_an_identifier_are_blanked_whatever_their_confidence():
    terms = search_terms(identifiers_from_dataset(dx_dataset(anatomy(10, 10, bits=8))))
    assert is_identifier_piece("PID7", terms) and is_identifier_piece("734521", terms)
    assert is_identifier_piece("14/03/", terms) and is_identifier_piece("Riverside", terms)
    assert not is_identifier_piece("AP", terms) and not is_identifier_piece("STANDING", terms)
