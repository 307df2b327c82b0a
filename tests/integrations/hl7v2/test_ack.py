"""Acknowledgements: the choice (original / enhanced mode) and the message, parsed back with hl7apy
and with python-hl7 (HL7 v2.5.1 §2.9, MSA, ERR; tables 0008, 0155, 0357)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import hl7
import pytest
from hl7apy.parser import parse_message

from integrations.hl7v2.ack import (
    accept_response,
    ack_fields,
    application_response,
    build_ack,
    build_ack_hl7apy,
    read_ack,
    render_ack,
)
from integrations.hl7v2.codec import decode, parse_header
from integrations.hl7v2.errors import (
    HL7Error,
    MappingError,
    MessageParseError,
    RequiredFieldMissingError,
    UnsupportedEventError,
    UnsupportedMessageTypeError,
)
from integrations.hl7v2.tables import AckCode, ErrorCode
from tests.integrations.hl7v2.listener_helpers import adt_a01, msh

NOW = dt.datetime(2026, 11, 22, 1, 2, 3, tzinfo=dt.UTC)

ERRORS: list[HL7Error | None] = [
    None,
    RequiredFieldMissingError("PID-3"),
    UnsupportedMessageTypeError("unsupported message type 'ZZZ' (MSH-9.1)", location="MSH-9"),
    MessageParseError("text with | ^ & ~ \\ and # in it"),
    MappingError("patient merged & unknown", code=ErrorCode.UNKNOWN_KEY_IDENTIFIER, location="MRG-1"),
]


def _header(version: str = "2.5.1", charset: str = "", **kwargs: str):  # type: ignore[no-untyped-def]
    return parse_header(msh("CTRL-42", version=version, charset=charset, **kwargs))


#: One version of each structure family: ERR-1 (< 2.5), ERR-2..8 (2.5-2.7), 2.8+ (built as 2.7),
#: no MSH-18 (2.1, 2.2).
FAMILIES = ("2.2", "2.3.1", "2.4", "2.5.1", "2.7", "2.8.2")


@pytest.mark.parametrize("version", FAMILIES)
def test_the_template_gives_what_hl7apy_builds(version: str) -> None:
    charset = "" if version in ("2.1", "2.2") else "UNICODE UTF-8"
    header = _header(version, charset)
    for code, error in itertools.product(AckCode, ERRORS):
        values = ack_fields(header, code, error, now=NOW, control_id="ACK1")
        assert render_ack(values) == build_ack_hl7apy(values), (code, error)
        # Another message with the same shape reuses the template: still the same text.
        other = dataclasses.replace(values, acked_control_id="X^Y", sending_application="S&1")
        assert render_ack(other) == build_ack_hl7apy(other)


@pytest.mark.parametrize("version", FAMILIES)
def test_the_accept_fast_path_gives_the_template_text(version: str) -> None:
    charset = "" if version in ("2.1", "2.2") else "KS X 1001"
    for header in (
        _header(version, charset),
        parse_header(f"MSH#*~\\&#EMR*1.2.3*ISO#HOSP#CLINIC#FAC#2026##ADT*A08#C*9#P#{version}"),
    ):
        for code in (AckCode.AA, AckCode.CA):
            fast = build_ack(header, code).decode()
            msh = fast.split("\r")[0].split("|")
            sent_at = dt.datetime.strptime(msh[6], "%Y%m%d%H%M%S+0000").replace(tzinfo=dt.UTC)
            values = ack_fields(header, code, now=sent_at, control_id=msh[9])
            assert fast == render_ack(values) == build_ack_hl7apy(values)


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8.2"])
@pytest.mark.parametrize("error", ERRORS[:3], ids=["accept", "required", "type"])
def test_every_ack_parses_back_with_hl7apy_and_python_hl7(version: str, error: HL7Error | None) -> None:
    header = _header(version, app="EMR", facility="HOSP")
    code = AckCode.AA if error is None else AckCode.AE
    ack = build_ack(header, code, error, codec="ascii", now=NOW).decode()

    strict = parse_message(ack, find_groups=False)
    assert strict.msh.msh_3.to_er7() == "CLINIC" and strict.msh.msh_4.to_er7() == "SMARTCLINIC"
    assert strict.msh.msh_5.to_er7() == "EMR" and strict.msh.msh_6.to_er7() == "HOSP"
    assert strict.msh.msh_9.to_er7().startswith("ACK^A01")
    assert strict.msh.msh_12.to_er7() == version
    assert strict.msa.msa_1.to_er7() == code.value
    assert strict.msa.msa_2.to_er7() == "CTRL-42"

    loose = hl7.parse(ack)
    assert str(loose.segment("MSA")[1]) == code.value and str(loose.segment("MSA")[2]) == "CTRL-42"
    assert str(loose["MSH.F3"]) == "CLINIC" and str(loose["MSH.F5"]) == "EMR"
    if error is None:
        assert "ERR" not in [str(s[0]) for s in loose]
        return
    summary = read_ack(ack.encode())
    assert summary.error_code == error.code.value
    if version >= "2.5":
        assert strict.err.err_3.to_er7().split("^")[:3] == [error.code.value, error.code.text, "HL70357"]
        assert strict.err.err_4.to_er7() == "E"
        assert loose.unescape(str(loose.segment("ERR")[8])) == error.reason
        assert summary.text == error.reason.replace("'", "'")
    else:  # ERR-1 (ELD): segment^sequence^field^code&text&table
        eld = str(loose.segment("ERR")[1])
        assert eld.split("^")[3].split("&")[0] == error.code.value
        assert loose.unescape(str(loose.segment("MSA")[3])) == error.reason


def test_free_text_is_escaped_and_survives_the_round_trip() -> None:
    error = ERRORS[3]
    assert error is not None
    ack = build_ack(_header("2.7"), AckCode.AR, error, now=NOW).decode()
    loose = hl7.parse(ack)
    err8 = str(loose.segment("ERR")[8])
    assert "|" not in err8 and "^" not in err8
    assert loose.unescape(err8) == error.reason
    parse_message(ack)  # hl7apy reads it


def test_message_with_foreign_delimiters_is_answered_in_the_standard_ones() -> None:
    header = parse_header("MSH#*~\\&#EMR*1.2.3*ISO#HOSP#CLINIC#FAC#2026##ADT*A01*ADT_A01#C*9#P#2.5.1")
    ack = build_ack(header, AckCode.AA, now=NOW).decode()
    message = parse_message(ack)
    assert message.msh.msh_5.to_er7() == "EMR^1.2.3^ISO"
    assert message.msa.msa_2.to_er7() == "C^9"  # "*" was that sender's component separator


def test_unreadable_message_gets_an_ar_with_empty_identifiers() -> None:
    error = MessageParseError("not an HL7 v2 message: it does not start with MSH", location="MSH")
    ack = build_ack(None, AckCode.AR, error, now=NOW)
    message = parse_message(ack.decode())
    assert message.msa.msa_1.to_er7() == "AR" and message.msa.msa_2.to_er7() == ""
    assert message.msh.msh_12.to_er7() == "2.5.1"


def test_charset_is_echoed_and_the_ack_encoded_in_it() -> None:
    header = decode(adt_a01("K1", charset="KS X 1001")).header
    error = MappingError("환자 번호 없음")
    ack = build_ack(header, AckCode.AE, error, codec="euc_kr", now=NOW)
    text = ack.decode("euc_kr")
    assert parse_message(text).msh.msh_18.to_er7() == "KS X 1001"
    assert "환자 번호 없음" in text


@pytest.mark.parametrize(
    ("accept", "error", "expected"),
    [
        ("", None, AckCode.AA),  # original mode
        ("", RequiredFieldMissingError("PID-3"), AckCode.AE),
        ("", UnsupportedEventError("x"), AckCode.AR),
        ("AL", None, AckCode.CA),  # enhanced mode
        ("AL", RequiredFieldMissingError("PID-3"), AckCode.CE),
        ("AL", UnsupportedMessageTypeError("x"), AckCode.CR),
        ("NE", None, None),
        ("NE", UnsupportedMessageTypeError("x"), None),
        ("ER", None, None),
        ("ER", UnsupportedMessageTypeError("x"), AckCode.CR),
        ("SU", None, AckCode.CA),
        ("SU", RequiredFieldMissingError("PID-3"), None),
    ],
)
def test_accept_acknowledgement_follows_msh15(
    accept: str, error: HL7Error | None, expected: AckCode | None
) -> None:
    assert accept_response(_header(accept_ack=accept), error) == expected


def test_enhanced_mode_by_msh16_alone_accepts_always() -> None:
    assert accept_response(_header(app_ack="AL"), None) is AckCode.CA


def test_an_ack_is_never_acknowledged() -> None:
    ack = parse_header(msh("A1", "ACK^A01^ACK"))
    assert accept_response(ack, None) is None
    assert accept_response(ack, UnsupportedMessageTypeError("x")) is None
    assert application_response(parse_header(msh("A1", "ACK^A01^ACK", app_ack="AL")), None) is None


@pytest.mark.parametrize(
    ("app_ack", "error", "expected"),
    [
        ("", None, None),
        ("NE", None, None),
        ("AL", None, AckCode.AA),
        ("AL", MappingError("x"), AckCode.AE),
        ("ER", None, None),
        ("ER", MappingError("x"), AckCode.AE),
        ("SU", None, AckCode.AA),
        ("SU", MappingError("x"), None),
    ],
)
def test_application_acknowledgement_follows_msh16(
    app_ack: str, error: HL7Error | None, expected: AckCode | None
) -> None:
    assert application_response(_header(accept_ack="AL", app_ack=app_ack), error) == expected
    # Original mode never has a second acknowledgement.
    assert application_response(_header(), error) is None


def test_each_ack_has_its_own_control_id() -> None:
    header = _header()
    ids = {parse_message(build_ack(header, AckCode.AA).decode()).msh.msh_10.to_er7() for _ in range(50)}
    assert len(ids) == 50
