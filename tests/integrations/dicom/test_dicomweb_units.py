"""The pure parts of DICOMweb: multipart framing, media types, query parsing, the JSON model."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files

from integrations.dicom.dicomweb.json_model import PLACEHOLDER_BASE, dataset_json, person_name, with_base
from integrations.dicom.dicomweb.multipart import (
    MediaType,
    MediaTypeError,
    MultipartError,
    encode_multipart,
    parse_accept,
    parse_media_type,
    split_multipart,
)
from integrations.dicom.dicomweb.qido import Level, QueryError, parse_query
from integrations.dicom.dicomweb.wado import (
    NotAcceptableError,
    RetrieveError,
    choose_frames,
    choose_transfer_syntax,
    dicom_transfer_syntaxes,
    frame_numbers,
    output_size,
)
from tests.integrations.dicom.helpers import pydicom_file

JPEG2000 = "1.2.840.10008.1.2.4.91"
EXPLICIT = "1.2.840.10008.1.2.1"


def test_split_multipart_with_preamble_epilogue_and_headerless_part() -> None:
    body = (
        b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\nX-A: 1\r\n\r\nfirst"
        b"\r\n--b1\r\n\r\nsecond\r\n--b1--\r\nepilogue"
    )
    first, second = split_multipart(body, "b1")
    assert bytes(first.body) == b"first" and first.headers == {
        "content-type": "application/dicom",
        "x-a": "1",
    }
    assert bytes(second.body) == b"second" and second.headers == {}
    assert second.content_type(MediaType("application/dicom")).type == "application/dicom"


def test_encoded_multipart_splits_back() -> None:
    parts = [("application/octet-stream", b"\r\n--not-the-boundary\r\n"), ("image/jp2", bytes(range(256)))]
    body = encode_multipart(parts, "0123abc")
    assert [bytes(p.body) for p in split_multipart(body, "0123abc")] == [c for _, c in parts]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"--b1\r\n\r\nfirst\r\n--b1\r\n\r\nsecond-without-end", "truncated"),
        (b"--b1\r\n\r\nfirst\r\n--b1", "truncated"),
        (b"no boundary here at all", "does not contain its boundary"),
        (b"--b1--\r\n", "no parts"),
        (b"--b1\r\nbroken header\r\n\r\nx\r\n--b1--", "malformed header"),
        (b"--b1xx\r\n\r\nx\r\n--b1--", "malformed boundary line"),
    ],
)
def test_broken_multipart_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        split_multipart(body, "b1")


def test_boundary_must_be_rfc_2046() -> None:
    with pytest.raises(MultipartError, match="no boundary"):
        split_multipart(b"x", "")
    with pytest.raises(MultipartError, match="not a valid"):
        split_multipart(b"x", "a" * 71)


def test_media_types_and_accept() -> None:
    media = parse_media_type('Multipart/Related; type="application/dicom"; transfer-syntax=*; boundary="a;b"')
    assert media.type == "multipart/related"
    assert media.params == {"type": "application/dicom", "transfer-syntax": "*", "boundary": "a;b"}
    accept = parse_accept('image/png;q=0.5, multipart/related; type="image/jp2", image/gif;q=0')
    assert [m.type for m in accept] == ["multipart/related", "image/png"]
    assert parse_accept(None) == [MediaType("*/*")]
    with pytest.raises(MediaTypeError):
        parse_media_type("text")


def test_transfer_syntax_negotiation() -> None:
    accept = parse_accept('multipart/related; type="application/dicom"')
    syntaxes, bare = dicom_transfer_syntaxes(accept, single=True)
    assert syntaxes == [EXPLICIT] and not bare  # PS3.18 §8.7.3.5.2: the default is Explicit VR LE
    assert choose_transfer_syntax(JPEG2000, syntaxes) == EXPLICIT  # transcoded
    assert choose_transfer_syntax(JPEG2000, ["*"]) == JPEG2000
    with pytest.raises(NotAcceptableError):
        choose_transfer_syntax(JPEG2000, ["1.2.840.10008.1.2.4.50"])
    with pytest.raises(NotAcceptableError):
        dicom_transfer_syntaxes(parse_accept("image/png"), single=True)
    assert dicom_transfer_syntaxes(parse_accept("application/dicom"), single=True)[1]


def test_frame_negotiation() -> None:
    assert not choose_frames(parse_accept(None), JPEG2000).compressed
    star = parse_accept('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert choose_frames(star, JPEG2000).compressed and not choose_frames(star, EXPLICIT).compressed
    assert choose_frames(parse_accept('multipart/related; type="image/jp2"'), JPEG2000).compressed
    with pytest.raises(NotAcceptableError):
        choose_frames(parse_accept('multipart/related; type="image/jls"'), JPEG2000)
    assert frame_numbers("1,3,20") == [1, 3, 20]
    for text in ("0", "1,,2", "a", "-1"):
        with pytest.raises(RetrieveError):
            frame_numbers(text)


def test_parse_query() -> None:
    query = parse_query(
        Level.SERIES,
        [
            ("00100020", "KR-1"),
            ("Modality", "CT"),
            ("limit", "5"),
            ("offset", "10"),
            ("includefield", "StudyTime,00080080"),
        ],
    )
    assert [(k.keyword, v) for k, v in query.matches] == [("PatientID", "KR-1"), ("Modality", "CT")]
    assert (query.limit, query.offset) == (5, 10)
    assert query.include == {0x00080030, 0x00080080}
    lower = parse_query(Level.STUDY, [("SOPInstanceUID", "1.2"), ("_", "123"), ("00081032.00080100", "X")])
    assert not lower.matches and len(lower.warnings) == 3
    for params in (
        [("limit", "0")],
        [("offset", "-1")],
        [("includefield", "Nope")],
        [("fuzzymatching", "yes")],
    ):
        with pytest.raises(QueryError):
            parse_query(Level.STUDY, params)


def test_json_model_helpers() -> None:
    assert person_name("Yamada^Tarou=山田^太郎=やまだ^たろう") == {
        "Alphabetic": "Yamada^Tarou",
        "Ideographic": "山田^太郎",
        "Phonetic": "やまだ^たろう",
    }
    assert person_name("") is None
    cached = f'{{"7FE00010":{{"vr":"OW","BulkDataURI":"{PLACEHOLDER_BASE}/studies/1"}}}}'.encode()
    assert (
        with_base(cached, 'http://h:1/dicomweb"')
        == b'{"7FE00010":{"vr":"OW","BulkDataURI":"http://h:1/dicomweb\\"/studies/1"}}'
    )


def test_viewport_sizes() -> None:
    assert output_size(1024, 256, None) == (256, 1024)
    assert output_size(1024, 256, (512, 512)) == (128, 512)
    assert output_size(100, 200, (1000, 1000)) == (1000, 500)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "JPEG2000.dcm",
        "emri_small.dcm",
        "test-SR.dcm",
        "chrRuss.dcm",
        "chrH31.dcm",
        "chrX1.dcm",
        "rtplan.dcm",
    ],
)
def test_fast_json_matches_pydicom(name: str) -> None:
    """The raw-element conversion gives pydicom's ``to_json_dict`` answer (empty values aside:
    PS3.18 F.2.5 leaves them out, pydicom keeps ``""`` and ``[]``)."""

    def normal(value: object) -> object:
        if isinstance(value, dict):
            return {k: normal(v) for k, v in value.items() if normal(v) not in ("", None, [])}
        if isinstance(value, list):
            return [None if v == "" else normal(v) for v in value]
        return value

    path = get_charset_files(name)[0] if name.startswith("chr") else pydicom_file(name)
    expected = dcmread(path, stop_before_pixels=True).to_json_dict(1024, lambda e: f"bulk/{int(e.tag):08X}")
    got = dataset_json(dcmread(path, stop_before_pixels=True), lambda tag: f"bulk/{tag:08X}")
    expected = {k: v for k, v in expected.items() if not k.endswith("0000")}  # group lengths (F.2.1)
    assert normal(got) == normal(expected)
