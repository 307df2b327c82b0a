"""The mappings' ER7 reader against python-hl7 (an independent parser) on every sample message, and
the rules it implements: delimiters from MSH-1/MSH-2, escape sequences (§2.7), date-times (§2A.22)."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest

from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.mapping.parse import Message, coded, parse_datetime, patient_name, person
from integrations.hl7v2.tables import ErrorCode
from tests.integrations.hl7v2.mapping_helpers import MESSAGES, sample

SAMPLES = sorted(p.name for p in MESSAGES.glob("*.hl7"))


def test_there_are_samples_of_every_supported_kind() -> None:
    kinds = {Message(sample(n).decode()).header.message_type.rsplit("^", 1)[0] for n in SAMPLES}
    assert {"ADT^A01", "ADT^A04", "ADT^A08", "ADT^A03", "ADT^A11", "ADT^A13", "ADT^A40"} <= kinds
    assert {"ORM^O01", "OMI^O23", "ORU^R01"} <= kinds


def _children(value: object, kind: type) -> list[object]:
    """python-hl7 nests Field > Repetition > Component > str, but collapses levels without
    delimiters: a list of *kind* children, or the value itself as the only one."""
    items = list(value) if isinstance(value, list) else []
    return items if items and all(isinstance(x, kind) for x in items) else [value]


@pytest.mark.parametrize("name", SAMPLES)
def test_every_field_reads_as_python_hl7_reads_it(name: str) -> None:
    text = sample(name).decode("utf-8")
    ours = Message(text, "utf-8")
    theirs = hl7.parse(text)
    assert [s.name for s in ours] == [str(s[0]) for s in theirs]
    compared = 0
    for mine, other in zip(ours, theirs, strict=True):
        first = 3 if mine.name == "MSH" else 1  # MSH-1/MSH-2 are the delimiters themselves
        for number in range(first, len(other)):
            for r, rep in enumerate(_children(other[number], hl7.Repetition), start=1):
                for c, component in enumerate(_children(rep, hl7.Component), start=1):
                    subs = list(component) if isinstance(component, hl7.Component) else [component]
                    for s, sub in enumerate(subs, start=1):
                        expected = theirs.unescape(str(sub)).strip()
                        where = f"{name} {mine.name}-{number}.{r}.{c}.{s}"
                        assert mine.get(number, c, s, r) == expected, where
                        compared += bool(expected)
    assert compared >= 4 * len(ours.segments)  # the walk above really visited the values


def test_escapes_and_custom_delimiters() -> None:
    text = "\r".join(
        [
            "MSH#$~!&#EMR#H#C#C#20261122##ADT$A08#1#P#2.5",
            "PID#1##X1$$$AUTH!F!!S!$MR##O!S!BRIEN$ANN!T!MARIE!.br!2ND$$$$$L##19800101#F",
            "NTE#1##caf!XC3A9! au lait",
        ]
    )
    message = Message(text, "utf-8")
    pid = message.first("PID")
    assert pid is not None
    assert message.code == "ADT" and message.trigger == "A08"
    assert pid.get(3, 4) == "AUTH#$"  # \F\ and \S\ of this message's delimiters
    assert patient_name(pid) == "O$BRIEN^ANN&MARIE\n2ND"
    assert message.first("NTE").get(3) == "café au lait"  # type: ignore[union-attr]


def test_names_and_codes() -> None:
    message = Message(sample("adt_a01_admit.hl7").decode("utf-8"), "utf-8")
    pid, pv1, dg1 = message.first("PID"), message.first("PV1"), message.first("DG1")
    assert pid is not None and pv1 is not None and dg1 is not None
    assert patient_name(pid) == "LEE^MINJI"  # the first legal name (the Hangul one is the second L)
    assert person(pv1, 7).id == "D0143" and person(pv1, 7).name == "PARK^SEOYEON^^DR"
    assert coded(dg1, 3).system == "I10" and coded(dg1, 3).code == "J18.9"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20261122083012+0900", dt.datetime(2026, 11, 21, 23, 30, 12, tzinfo=dt.UTC)),
        ("202611220830-0500", dt.datetime(2026, 11, 22, 13, 30, tzinfo=dt.UTC)),
        ("20261122083012.1234+0000", dt.datetime(2026, 11, 22, 8, 30, 12, 123400, tzinfo=dt.UTC)),
        ("2026", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    ],
)
def test_datetimes(value: str, expected: dt.datetime) -> None:
    assert parse_datetime(value) == expected


def test_a_datetime_without_offset_is_local_time() -> None:
    moment = parse_datetime("20261122083012")
    assert moment is not None and moment.utcoffset() is not None
    assert moment.replace(tzinfo=None) == dt.datetime(2026, 11, 22, 8, 30, 12)


@pytest.mark.parametrize("value", ["2026112", "20261322", "2026-11-22", "20261122+09", "abc"])
def test_a_malformed_datetime_names_its_field(value: str) -> None:
    with pytest.raises(MappingError) as caught:
        parse_datetime(value, "OBX-14")
    assert caught.value.location == "OBX-14"
    assert caught.value.code is ErrorCode.DATA_TYPE_ERROR


def test_not_an_hl7_message() -> None:
    with pytest.raises(MappingError) as caught:
        Message("PID|1||X")
    assert caught.value.location == "MSH"
