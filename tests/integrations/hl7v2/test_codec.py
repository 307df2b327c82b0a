"""Decoding what arrives: character sets (MSH-18), BOM, LF/CRLF terminators, broken headers."""

from __future__ import annotations

import pytest

from integrations.hl7v2.codec import codec_for, decode, message_text, parse_header
from integrations.hl7v2.errors import MessageParseError
from integrations.hl7v2.mllp import split_file
from integrations.hl7v2.tables import ErrorCode
from tests.integrations.hl7v2.listener_helpers import adt_a01, msh

NAME_LATIN = "MÜLLER^ZOË"
NAME_HANGUL = "이^민지"


def _adt(charset: str, name: str, encoding: str, *, terminator: str = "\r") -> bytes:
    segments = [msh("C1", charset=charset), f"PID|1||P1^^^HOSP^MR||{name}"]
    return terminator.join(segments).encode(encoding)


@pytest.mark.parametrize(
    ("charset", "encoding", "name"),
    [
        ("8859/1", "iso8859-1", NAME_LATIN),
        ("UNICODE UTF-8", "utf-8", NAME_HANGUL),
        ("KS X 1001", "euc_kr", NAME_HANGUL),
    ],
)
def test_msh18_chooses_the_decoding(charset: str, encoding: str, name: str) -> None:
    raw = _adt(charset, name, encoding)
    message = decode(raw)
    assert message.codec == codec_for(charset)
    assert message.header.charset == charset
    assert name in message.text
    assert message_text(raw, message.codec) == message.text  # how processing reads it again


def test_empty_msh18_is_ascii_unless_configured() -> None:
    raw = _adt("", NAME_LATIN, "iso8859-1")
    with pytest.raises(MessageParseError) as refused:
        decode(raw)
    assert refused.value.location == "MSH-18"
    assert NAME_LATIN in decode(raw, default_charset="8859/1").text


def test_utf8_bom_is_stripped_and_means_utf8() -> None:
    raw = b"\xef\xbb\xbf" + _adt("", NAME_HANGUL, "utf-8")
    message = decode(raw)
    assert message.text.startswith("MSH|") and message.codec == "utf-8"
    assert NAME_HANGUL in message.text


@pytest.mark.parametrize("terminator", ["\n", "\r\n", "\r"])
def test_lf_and_crlf_become_cr(terminator: str) -> None:
    raw = _adt("", "DOE^JOHN", "ascii", terminator=terminator) + terminator.encode() * 2
    message = decode(raw)
    assert [s[:3] for s in message.segments] == ["MSH", "PID"]
    assert "\n" not in message.text and not message.text.endswith("\r")


def test_hl7_libraries_see_one_segment_in_an_lf_message_which_is_why_we_normalise() -> None:
    import hl7

    lf = _adt("", "DOE^JOHN", "ascii", terminator="\n").decode()
    assert len(hl7.parse(lf)) == 1  # the whole message read as one MSH segment
    assert len(hl7.parse(decode(lf.encode()).text)) == 2


@pytest.mark.parametrize(
    ("raw", "location"),
    [
        (b"hello, this is not HL7", "MSH"),
        (b"PID|1||P1\rPV1|1|I", "MSH"),
        (b"MSH|^^\\&|EMR|HOSP|CLINIC", "MSH-2"),  # repeated delimiter
        (b"MSH|^~|EMR", "MSH-2"),  # too few encoding characters
        (b"MSHA^~\\&AEMR", "MSH-2"),  # alphanumeric field separator
    ],
)
def test_not_hl7_or_broken_delimiters_are_refused(raw: bytes, location: str) -> None:
    with pytest.raises(MessageParseError) as refused:
        decode(raw)
    assert refused.value.location == location


def test_unsupported_charset_is_a_table_value_error() -> None:
    with pytest.raises(MessageParseError) as refused:
        decode(_adt("UNICODE UTF-16", "DOE", "ascii"))
    assert refused.value.code is ErrorCode.TABLE_VALUE_NOT_FOUND and refused.value.location == "MSH-18"


def test_header_fields_and_foreign_delimiters() -> None:
    header = parse_header("MSH#*~\\&#EMR*1.2.3*ISO#HOSP#CLINIC#FAC#2026##ADT*A01*ADT_A01#C9#P#2.5.1")
    assert header.sending_application == "EMR"
    assert (header.message_code, header.trigger_event) == ("ADT", "A01")
    assert header.message_type == "ADT^A01^ADT_A01"  # rewritten in the standard delimiters
    assert header.delimiters.to_standard(header.get(3)) == "EMR^1.2.3^ISO"
    assert (header.control_id, header.processing_id, header.version) == ("C9", "P", "2.5.1")


def test_split_file_layouts() -> None:
    one, two = adt_a01("A1"), adt_a01("A2")
    framed = b"\x0b" + one + b"\x1c\r\n\x0b" + two + b"\x1c\r"
    assert split_file(framed) == [one, two]
    blank = one.replace(b"\r", b"\n") + b"\n\n" + two.replace(b"\r", b"\r\n") + b"\r\n"
    assert split_file(blank) == [one, two]
    back_to_back = one.replace(b"\r", b"\n") + b"\n" + two.replace(b"\r", b"\n")
    assert split_file(back_to_back) == [one, two]
    with pytest.raises(ValueError):
        split_file(b"PID|1||X\n")
