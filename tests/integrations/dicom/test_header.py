"""The header scanner against pydicom, on real files of every transfer syntax we accept."""

from __future__ import annotations

import random
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files

from integrations.dicom import header as header_module
from integrations.dicom.errors import DatasetEncodingError
from integrations.dicom.header import read_header, scan

from .helpers import dataset_bytes, file_meta, pydicom_file

FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "RG1_J2KR.dcm",
    "RG1_UNCR.dcm",
    "RG3_J2KI.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-LL.dcm",
    "JPEG-lossy.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "examples_ybr_color.dcm",
    "SC_rgb_rle.dcm",
    "rtplan.dcm",
]


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


@pytest.mark.parametrize("name", FILES)
def test_header_matches_pydicom(name: str) -> None:
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    h = read_header(dataset_bytes(path), file_meta(path).TransferSyntaxUID)
    assert h.sop_class_uid == ds.SOPClassUID
    assert h.sop_instance_uid == ds.SOPInstanceUID
    assert h.study_uid == ds.StudyInstanceUID
    assert h.series_uid == ds.SeriesInstanceUID
    assert h.patient_id == _text(ds, "PatientID")
    assert h.patient_name == _text(ds, "PatientName")
    assert h.modality == _text(ds, "Modality")
    assert h.accession_number == _text(ds, "AccessionNumber")
    assert h.study_description == _text(ds, "StudyDescription")
    assert h.series_number == ds.get("SeriesNumber")
    assert h.instance_number == ds.get("InstanceNumber")
    assert (h.rows, h.columns) == (ds.get("Rows"), ds.get("Columns"))
    assert h.has_pixel_data == ("PixelData" in ds)
    if ds.get("StudyDate"):
        assert h.study_date is not None and h.study_date.strftime("%Y%m%d") == ds.StudyDate


@pytest.mark.parametrize("name", ["chrH31.dcm", "chrX1.dcm", "chrKoreanMulti.dcm", "chrRuss.dcm"])
def test_names_in_other_character_sets(name: str) -> None:
    path = Path(get_charset_files(name)[0])
    ds = pydicom.dcmread(path)
    h = read_header(dataset_bytes(path), file_meta(path).TransferSyntaxUID)
    assert h.patient_name == str(ds.PatientName)


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm"]
)
def test_every_truncation_is_caught_or_loses_the_pixel_data(name: str) -> None:
    """Cut anywhere: the scan raises, or (cut at an element boundary) what is left has no pixel
    data, which the SCP refuses; it never reads past the end or raises anything else."""
    path = pydicom_file(name)
    raw = dataset_bytes(path)
    ts = file_meta(path).TransferSyntaxUID
    whole = read_header(raw, ts)
    for cut in range(0, len(raw), 7):
        try:
            h = read_header(raw[:cut], ts)
        except DatasetEncodingError:
            continue
        assert not h.has_pixel_data or not whole.has_pixel_data


def test_noise_and_mutations_raise_only_encoding_errors() -> None:
    rng = random.Random(1)
    path = pydicom_file("CT_small.dcm")
    raw = bytearray(dataset_bytes(path))
    ts = file_meta(path).TransferSyntaxUID
    refused = 0
    for _ in range(300):
        noise = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 400)))
        for transfer_syntax in (ts, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
            try:
                read_header(noise, transfer_syntax)
            except DatasetEncodingError:
                refused += 1
    # Random bytes are almost never a well-formed data set: nearly all must be refused (and any
    # other exception than DatasetEncodingError fails the test by itself).
    assert refused >= 0.95 * 300 * 4, refused
    for _ in range(300):
        mutated = bytearray(raw)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
        try:
            read_header(bytes(mutated), ts)
        except DatasetEncodingError:
            pass


def test_out_of_order_elements_are_refused() -> None:
    path = pydicom_file("MR_small.dcm")
    raw = dataset_bytes(path)
    # Swap the first two elements (both short, explicit VR LE): still well-formed, out of order.
    first = 8 + int.from_bytes(raw[6:8], "little")
    second = first + 8 + int.from_bytes(raw[first + 6 : first + 8], "little")
    swapped = raw[first:second] + raw[:first] + raw[second:]
    with pytest.raises(DatasetEncodingError, match="out of order"):
        scan(swapped, file_meta(path).TransferSyntaxUID)


def test_deflate_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    path = pydicom_file("image_dfl.dcm")
    monkeypatch.setattr(header_module, "MAX_INFLATED_BYTES", 1000)
    with pytest.raises(DatasetEncodingError, match="size limit"):
        read_header(dataset_bytes(path), file_meta(path).TransferSyntaxUID)
